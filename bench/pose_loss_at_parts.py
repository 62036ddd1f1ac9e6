"""What the pose loss would pay if a run's keypoints sat on the parts they track (a diagnostic).

Example:
  python bench/pose_loss_at_parts.py --model_dir=/tmp/trials/silwarm4k_12k_seed0
On every test pair, the relative-pose loss (geodesic angle of the SVD rotation against the true one, with the
run's own noise on every coordinate, averaged over --draws noise draws) of three keypoint sets, each made exactly
consistent (one set of object-space points seen by both cameras), so that only where the points are matters:
  - the network's keypoints: its view-0 keypoints, carried into view 1 by the true poses;
  - the same keypoints moved onto the ground-truth part each one tracks (evaluation.keypoint_parts);
  - all the ground-truth parts.
Also prints the network's own loss (its view-0 and view-1 keypoints as predicted) and the separation loss of each
set. If keypoints on their parts pay clearly less than where they are, the pose loss rewards moving them there;
the silhouette charge for the same move is bench/silhouette_at_parts.py's.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np
import tensorflow as tf

from keypointnet_tf import evaluation
from keypointnet_tf import geometry
from keypointnet_tf import losses
from keypointnet_tf import runs

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Training run directory.", required=True)
_DRAWS = flags.DEFINE_integer("draws", 16, "Noise draws per pair.")
_NOISE = flags.DEFINE_float("noise", None, "Pose-loss noise (default: the run's pose_noise_stddev).")


def pose_degrees(xyz0, xyz1, mv0, mv1, noise, draws, seed=0):
  """Mean pose loss in degrees of camera-space keypoints xyz0, xyz1 [B, K, 3] of cameras mv0, mv1 [B, 4, 4]."""
  rotation = geometry.relative_rotation(mv0, mv1)
  generator = tf.random.Generator.from_seed(seed)
  values = [losses.pose_loss(xyz0, xyz1, rotation, noise, generator)["angular"] for _ in range(draws)]
  return float(np.degrees(np.mean(values)))


def main(argv):
  del argv
  net, config = runs.load_trained_model(_MODEL_DIR.value)
  noise = config.loss.pose_noise_stddev if _NOISE.value is None else _NOISE.value
  found = {name: [] for name in ("object0", "camera0", "camera1", "parts", "valid", "mv0", "mv1")}
  for batch in runs.ordered_split(config):
    for view in ("0", "1"):
      out = net(batch["image" + view], training=False)
      camera = geometry.unproject(tf.concat([out["uv"], out["z"][..., None]], -1), batch["focal"])
      found["camera" + view].append(camera.numpy())
      if view == "0":
        found["object0"].append(geometry.transform_points(batch["mvi0"], camera).numpy())
    for name in ("mv0", "mv1"):
      found[name].append(batch[name].numpy())
    found["parts"].append(batch["keypoints"].numpy())
    found["valid"].append(batch["keypoint_valid"].numpy())
  a = {name: np.concatenate(values) for name, values in found.items()}
  if not a["parts"].shape[1]:
    raise SystemExit(f"{_MODEL_DIR.value}: the data has no ground-truth keypoints.")
  placement = evaluation.keypoint_parts(a["object0"], a["parts"], a["valid"])
  tracked = np.array([keypoint["part"] for keypoint in placement["keypoints"]])  # [K]
  keep = a["valid"].all(axis=1)  # pairs whose every part exists
  if not keep.any():
    raise SystemExit(f"{_MODEL_DIR.value}: no test pair has every ground-truth part; this diagnostic needs them all.")
  sets = {"where the network puts them": a["object0"], "moved onto their tracked parts": a["parts"][:, tracked],
          "all ground-truth parts": a["parts"]}
  mv0, mv1 = a["mv0"][keep], a["mv1"][keep]
  own = pose_degrees(a["camera0"][keep], a["camera1"][keep], mv0, mv1, noise, _DRAWS.value)
  print(f"{_MODEL_DIR.value} ({config.category}, {keep.sum()} pairs, noise {noise}, {_DRAWS.value} draws): "
        f"pose loss in degrees; separation loss (delta {config.loss.separation_delta}) of view 0")
  print(f"  the network's own keypoints, as predicted in both views: {own:.2f}")
  for name, obj in sets.items():
    obj = obj[keep].astype(np.float32)
    xyz0, xyz1 = geometry.transform_points(mv0, obj), geometry.transform_points(mv1, obj)
    separation = float(losses.separation_loss(xyz0, config.loss.separation_delta))
    print(f"  {name} (consistent): pose {pose_degrees(xyz0, xyz1, mv0, mv1, noise, _DRAWS.value):.2f}, "
          f"separation {separation:.4f}")
  print(f"  tracked parts: {tracked.tolist()}")


if __name__ == "__main__":
  app.run(main)
