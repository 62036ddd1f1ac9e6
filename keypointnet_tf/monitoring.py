"""What a run shows while it trains: validation with the evaluation protocol, the progress line, keypoint pictures.
"""

import json
import math
import os
import sys
import time

from absl import logging
import tensorflow as tf

from keypointnet_tf import evaluation
from keypointnet_tf import input_pipeline
from keypointnet_tf import visualization


BEST_DIR = "best"
BEST_FILE = "best.json"


def validate(predict, dataset, max_pairs):
  """The evaluation protocol on validation batches: dict with mean, median, ..., das (when the data has parts).

  Args:
    predict: images [B, H, W, 4] -> dict with "uvz" (the model in inference mode, predicted flag).
    dataset: finite dataset of validation batches.
    max_pairs: int, pairs evaluated at most.
  """
  row = evaluation.evaluate(predict, dataset, max_pairs=max_pairs)
  row.pop("errors")
  return row


def validate_and_keep_best(predict, dataset, max_pairs, step, writer, best_manager, write_dir, chief):
  """Validation metrics to TensorBoard and the log; a checkpoint in best/ when the median is the lowest so far."""
  row = validate(predict, dataset, max_pairs)
  with writer.as_default(step=step):
    for name in ("mean", "median", "under_30", "over_90", "das", "near_part"):
      if name in row and math.isfinite(row[name]):
        tf.summary.scalar(f"validation/{name}", row[name])
  best_file = os.path.join(write_dir, BEST_DIR, BEST_FILE)
  best = None
  if tf.io.gfile.exists(best_file):
    with tf.io.gfile.GFile(best_file) as f:
      best = json.load(f)
  if best is None or row["median"] < best["median"]:
    best_manager.save(checkpoint_number=step)
    tmp = best_file + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
      json.dump({"step": step, **{k: v for k, v in row.items() if isinstance(v, (int, float))}}, f, indent=2)
    tf.io.gfile.rename(tmp, best_file, overwrite=True)
  if chief:
    print(f"validation at step {step}: median {row['median']:.1f} deg, mean {row['mean']:.1f}"
          + (f", DAS {row['das']:.3f}" if math.isfinite(row.get("das", float("nan"))) else "")
          + f" (best median so far {min(row['median'], best['median']) if best else row['median']:.1f})",
          file=sys.stderr, flush=True)


def validation_dataset(config, source):
  """Finite validation batches of the configured data, or None (with a log line) when it has no such split."""
  try:
    return input_pipeline.make_dataset(source, "validation", 32, image_size=config.image_size, shuffle=False,
                                       repeat=False, deterministic=True, drop_remainder=False)
  except (ValueError, FileNotFoundError) as e:
    logging.warning("No validation during training: %s", e)
    return None


class Progress:
  """A one-line progress bar on a terminal; plain log lines otherwise (CI logs stay readable)."""

  def __init__(self, total, start, stream=sys.stderr):
    self.total, self.start_step, self.stream = total, start, stream
    self.start_time = time.time()
    self.tty = stream.isatty()

  def update(self, step, metrics, final=False):
    elapsed = time.time() - self.start_time
    done = step - self.start_step
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (self.total - step) / rate if rate > 0 else float("inf")
    eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
    text = (f"step {step}/{self.total}  loss {metrics['total']:.4f}  angle {metrics['angular_error_deg']:.1f} deg"
            f"  {rate:.2f} steps/s  ETA {eta_text}")
    if self.tty:
      width = 24
      filled = int(width * step / self.total)
      self.stream.write(f"\r[{'=' * filled}{'.' * (width - filled)}] {text}\033[K")
      if final:
        self.stream.write("\n")
      self.stream.flush()
    else:
      print(text, file=self.stream, flush=True)


def image_summaries(net, batch, max_images=4):
  """Both views with keypoints drawn (fixed colour per index) and the summed heatmaps."""
  for view in ("0", "1"):
    images = batch["image" + view][:max_images]
    out = net(images, training=False)
    drawn = visualization.draw_keypoints_batch(images.numpy(), out["uv"].numpy())
    tf.summary.image(f"keypoints/view{view}", drawn, max_outputs=max_images)
    heat = tf.reduce_sum(out["prob"], axis=1)  # [B, H, W]
    heat = heat / tf.maximum(tf.reduce_max(heat, axis=[1, 2], keepdims=True), 1e-12)
    tf.summary.image(f"heatmaps/view{view}", heat[..., tf.newaxis], max_outputs=max_images)
