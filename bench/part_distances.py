"""How far apart the ground-truth parts of a data set are, against the separation loss's threshold (a diagnostic).

Example:
  python bench/part_distances.py --dataset_config=planes_small_x10 --separation_delta=0.05,0.1,0.25
Over every test pair whose every part exists, the median distance (object units) between each two ground-truth
parts, and for each threshold the part pairs whose median squared distance is below it: the separation loss
(losses.separation_loss, a hinge on the squared distance) would charge keypoints sitting exactly on those two
parts. A threshold that charges true parts cannot be what spreads keypoints over them.
"""

import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np

from keypointnet_datasets.shapenet_pairs import procedural
from keypointnet_tf import config as config_lib
from keypointnet_tf import runs

_DATASET_CONFIG = flags.DEFINE_string("dataset_config", "planes_small_x10", "shapenet_pairs config (built already).")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data directory (default ~/tensorflow_datasets).")
_DELTAS = flags.DEFINE_list("separation_delta", ["0.05", "0.1"], "Thresholds on the squared distance to compare.")


def main(argv):
  del argv
  category = config_lib.category_of(_DATASET_CONFIG.value)
  config = config_lib.resolve(dataclasses.replace(config_lib.cpu_preset(category), data_dir=_DATA_DIR.value,
                                                  dataset_config=_DATASET_CONFIG.value))
  parts, valid = [], []
  for batch in runs.ordered_split(config):
    parts.append(batch["keypoints"].numpy())
    valid.append(batch["keypoint_valid"].numpy())
  parts, valid = np.concatenate(parts), np.concatenate(valid)  # [N, P, 3], [N, P]
  if not parts.shape[1]:
    raise SystemExit(f"{_DATASET_CONFIG.value}: the data has no ground-truth keypoints.")
  keep = valid.all(axis=1)
  if not keep.any():
    raise SystemExit(f"{_DATASET_CONFIG.value}: no test pair has every ground-truth part.")
  distance = np.median(np.linalg.norm(parts[keep, :, None] - parts[keep, None], axis=-1), axis=0)  # [P, P]
  names = list(procedural.KEYPOINT_NAMES.get(category, ()))
  if len(names) != len(distance):
    names = [f"part {p}" for p in range(len(distance))]
  print(f"{_DATASET_CONFIG.value}: {keep.sum()} test pairs with every part; median distance between parts "
        "(object units)")
  for i, name in enumerate(names):
    print(f"  {i} {name:<32s} " + " ".join(f"{d:5.2f}" for d in distance[i]))
  pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
  for delta in map(float, _DELTAS.value):
    charged = [f"{names[i]} - {names[j]} ({distance[i, j]:.2f})" for i, j in pairs if distance[i, j] ** 2 < delta]
    print(f"  separation_delta {delta:g} (pairs closer than {np.sqrt(delta):.2f} cost): "
          + (", ".join(charged) if charged else "no part pair"))


if __name__ == "__main__":
  app.run(main)
