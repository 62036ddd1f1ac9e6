"""How far the axis-anchor warm-up's targets lie from labelled parts of the procedural objects.

The anchor pulls keypoints 0 and 1 to the projections of the object points (+1, 0, 0) and (-1, 0, 0). For each
category this prints, over `--models` procedural instances, the median distance (object units; the longest side is
2, 1.6 for chairs) from each target to its nearest ground-truth keypoint, and which keypoint that is most often.

Example:
  python bench/anchor_targets.py --models=200
"""

import collections

from absl import app
from absl import flags
import numpy as np

from keypointnet_datasets.shapenet_pairs import procedural

_MODELS = flags.DEFINE_integer("models", 200, "Procedural instances per category.")


def main(argv):
  del argv
  print("| category | target | median distance to the nearest part | nearest part (most often, share) |")
  print("|---|---|---|---|")
  for category in ("planes", "cars", "chairs"):
    distances = collections.defaultdict(list)
    nearest = collections.defaultdict(collections.Counter)
    for index in range(_MODELS.value):
      obj = procedural.generate(category, index)
      for name, target in (("+x end", np.array([1.0, 0.0, 0.0])), ("-x end", np.array([-1.0, 0.0, 0.0]))):
        d = np.linalg.norm(obj.keypoints - target, axis=1)
        distances[name].append(d.min())
        nearest[name][obj.keypoint_names[int(d.argmin())]] += 1
    for name in ("+x end", "-x end"):
      part, count = nearest[name].most_common(1)[0]
      print(f"| {category} | {name} | {np.median(distances[name]):.3f} | {part} ({count / _MODELS.value:.0%}) |")


if __name__ == "__main__":
  app.run(main)
