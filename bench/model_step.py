"""Times one forward + backward pass of KeypointNet on both views of a batch (random data).

Example (the paper's full-size model, 8 pairs at 128 px):
  python bench/model_step.py --image_size=128 --num_filters=64 --batch_size=8 --steps=3
Prints one table row: seconds per step (median of the timed steps after one warm-up) and pairs per second.
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from keypointnet_tf import config
from keypointnet_tf import geometry
from keypointnet_tf import losses
from keypointnet_tf import model as model_lib

_IMAGE_SIZE = flags.DEFINE_integer("image_size", 128, "Image side in pixels.")
_FILTERS = flags.DEFINE_integer("num_filters", 64, "Keypoint-network width.")
_KEYPOINTS = flags.DEFINE_integer("num_keypoints", 10, "Keypoints.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Pairs per step.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps (after one warm-up step).")
_JIT = flags.DEFINE_bool("jit_compile", False, "Compile the step with XLA.")


def _random_batch(size, batch):
  rng = np.random.default_rng(0)
  mv = []
  for _ in range(2 * batch):
    d = rng.normal(size=3)
    d[1] = abs(d[1])
    mv.append(geometry.look_at_model_view(30 * d / np.linalg.norm(d)))
  mv = np.stack(mv).astype(np.float32).reshape(2, batch, 4, 4)
  images = rng.uniform(size=(2, batch, size, size, 4)).astype(np.float32)
  return {"image0": images[0], "image1": images[1], "mv0": mv[0], "mv1": mv[1],
          "mvi0": np.linalg.inv(mv[0]), "mvi1": np.linalg.inv(mv[1]),
          "focal": np.full([batch], geometry.focal_from_fov(5.0), np.float32)}


def main(argv):
  del argv
  net = model_lib.build_model(config.ModelConfig(num_keypoints=_KEYPOINTS.value, num_filters=_FILTERS.value),
                              image_size=_IMAGE_SIZE.value)
  batch = {k: tf.constant(v) for k, v in _random_batch(_IMAGE_SIZE.value, _BATCH.value).items()}
  generator = tf.random.Generator.from_seed(0)

  @tf.function(jit_compile=_JIT.value)
  def step(batch):
    with tf.GradientTape() as tape:
      out0 = net(batch["image0"], geometry.orientation_flag_from_mv(batch["mv0"]), training=True)
      out1 = net(batch["image1"], geometry.orientation_flag_from_mv(batch["mv1"]), training=True)
      terms = losses.total_loss(out0, out1, batch, config.LossConfig(), generator)
    return terms["total"], tape.gradient(terms["total"], net.trainable_variables)

  step(batch)[0].numpy()  # warm-up (tracing)
  times = []
  for _ in range(_STEPS.value):
    start = time.perf_counter()
    loss, grads = step(batch)
    loss.numpy()
    times.append(time.perf_counter() - start)
  seconds = statistics.median(times)
  print("| image | filters | pairs | XLA | s/step (median) | pairs/s |")
  print("|---|---|---|---|---|---|")
  print(f"| {_IMAGE_SIZE.value} | {_FILTERS.value} | {_BATCH.value} | {_JIT.value} | {seconds:.2f} | "
        f"{_BATCH.value / seconds:.2f} |")
  assert np.isfinite(loss.numpy()) and all(np.all(np.isfinite(g.numpy())) for g in grads)


if __name__ == "__main__":
  app.run(main)
