"""What the silhouette loss would charge a run's keypoints for sitting on the parts they track (a diagnostic).

Example:
  python bench/silhouette_at_parts.py --model_dir=/tmp/trials/silwarm4k_12k_seed0
  python bench/silhouette_at_parts.py --model_dir=/tmp/trials/silwarm4k_12k_seed0 --dilation=1
Over both views of every test pair, for each keypoint k and the ground-truth part p nearest to it in most views
(evaluation.keypoint_parts; data with ground-truth keypoints only), prints the silhouette loss of k's own heatmap
(-log of its mass on the object's mask) where the network put it, and the same heatmap moved (by whole pixels) so
that its expectation falls on p's projection: a counterfactual on the loss, not on training. A keypoint that tracks
a tip but sits short of it, and whose heatmap would lose mass off the object at the tip, shows a large second
number. --dilation grows the mask by that many pixels first (the `silhouette_dilated` research term uses 1).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np
import tensorflow as tf

from keypointnet_research import losses as research_losses
from keypointnet_tf import evaluation
from keypointnet_tf import geometry
from keypointnet_tf import runs

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Training run directory.", required=True)
_DILATION = flags.DEFINE_integer("dilation", 0, "Pixels by which the object's mask grows (0: the paper's loss).")


def _moved_mass(prob, mask, shifts):
  """Mass on `mask` [H, W] of each heatmap prob [K, H, W] moved by shifts [K, 2] (rows, columns), in whole pixels
  (np.roll: mass moved past an edge re-enters at the opposite one, which is background for a centred object)."""
  return np.array([np.sum(np.roll(p, tuple(s), axis=(0, 1)) * mask) for p, s in zip(prob, shifts)])


def main(argv):
  del argv
  net, config = runs.load_trained_model(_MODEL_DIR.value)
  dataset = runs.ordered_split(config)
  size = config.image_size
  found = {name: [] for name in ("object", "parts", "valid", "part_uv", "uv", "prob", "mask")}
  for batch in dataset:
    for view in ("0", "1"):
      mask = research_losses.grown_mask(batch["image" + view][..., 3] > 0, _DILATION.value)
      out = net(batch["image" + view], training=False)
      camera = geometry.unproject(tf.concat([out["uv"], out["z"][..., None]], -1), batch["focal"])
      found["object"].append(geometry.transform_points(batch["mvi" + view], camera).numpy())
      parts = geometry.transform_points(batch["mv" + view], batch["keypoints"])
      found["part_uv"].append(geometry.project(parts, batch["focal"]).numpy()[..., :2])
      found["parts"].append(batch["keypoints"].numpy())
      found["valid"].append(batch["keypoint_valid"].numpy())
      found["uv"].append(out["uv"].numpy())
      found["prob"].append(out["prob"].numpy())
      found["mask"].append(mask.numpy())
  a = {name: np.concatenate(values) for name, values in found.items()}
  if not a["parts"].shape[1]:
    raise SystemExit(f"{_MODEL_DIR.value}: the data has no ground-truth keypoints.")
  placement = evaluation.keypoint_parts(a["object"], a["parts"], a["valid"])
  parts = np.array([keypoint["part"] for keypoint in placement["keypoints"]])  # [K]
  # NDC (u right, v up, spanning 2) to pixels (rows down, columns right).
  offset = (a["part_uv"][:, parts] - a["uv"]) * size / 2  # [V, K, 2]
  shifts = np.round(np.stack([-offset[..., 1], offset[..., 0]], -1)).astype(int)
  here = -np.log(np.sum(a["prob"] * a["mask"][:, None], axis=(2, 3)) + 1e-12)  # [V, K]
  there = -np.log(np.stack([_moved_mass(p, m, s) for p, m, s in zip(a["prob"], a["mask"], shifts)]) + 1e-12)
  print(f"{_MODEL_DIR.value} ({config.category}, {size} px, {len(here)} views, mask grown by {_DILATION.value} px): "
        "silhouette loss per keypoint and view")
  for k, keypoint in enumerate(placement["keypoints"]):
    seen = a["valid"][:, parts[k]]
    print(f"  keypoint {k}: part {parts[k]} in {keypoint['share']:.0%} of views; where it is {here[seen, k].mean():.3f}; "
          f"moved onto the part {there[seen, k].mean():.3f} (median {np.median(there[seen, k]):.3f})")


if __name__ == "__main__":
  app.run(main)
