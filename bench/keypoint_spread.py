"""Where a run's keypoints spread: along the image plane or along the viewing ray (a diagnostic of collapse).

Example:
  python bench/keypoint_spread.py --model_dir=/tmp/trials/long_paper_losses --pairs=64
For view 0 of the first --pairs test pairs, prints the standard deviation of the keypoints within an image along
camera x, y and z (object units; z is the depth axis) and the median over images of the smallest distance between
two keypoints. Keypoints collapsed in the image but spread in depth satisfy the separation loss without following
any part.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np

from keypointnet_tf import geometry
from keypointnet_tf import input_pipeline
from keypointnet_tf import runs

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Training run directory.", required=True)
_PAIRS = flags.DEFINE_integer("pairs", 64, "Test pairs (view 0 of each).")


def main(argv):
  del argv
  net, config = runs.load_trained_model(_MODEL_DIR.value)
  source = runs.dataset_source(config)
  batch = next(iter(input_pipeline.make_dataset(source, "test", _PAIRS.value, image_size=config.image_size,
                                                shuffle=False, repeat=False, drop_remainder=False)))
  uvz = net(batch["image0"], training=False)["uvz"]
  xyz = geometry.unproject(uvz, batch["focal"]).numpy()  # [B, K, 3] camera space
  spread = xyz.std(axis=1).mean(axis=0)
  distance = np.linalg.norm(xyz[:, :, None] - xyz[:, None], axis=-1)  # [B, K, K]
  distance = np.where(np.eye(xyz.shape[1], dtype=bool), np.inf, distance)
  print(f"{_MODEL_DIR.value}: keypoint std within an image (object units) x {spread[0]:.3f}, y {spread[1]:.3f}, "
        f"z (depth) {spread[2]:.3f}; median smallest pairwise distance {np.median(distance.min(axis=(1, 2))):.3f} "
        f"({len(xyz)} images)")


if __name__ == "__main__":
  app.run(main)
