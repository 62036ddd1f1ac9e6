"""Draws procedural objects as the data set renders them: one row per category and lighting.

Examples:
  python tools/draw_renders.py --output=docs/procedural.png
  python tools/draw_renders.py --generator=1 --output=docs/procedural_generator1.png
  python tools/draw_renders.py --lighting=directional,hemisphere --instances=6 --output=docs/lighting.png
  python tools/draw_renders.py --deformation=none,bend,stretch,taper --generator=1 --output=docs/deformations.png
  python tools/draw_renders.py --random_appearance --output=docs/appearance.png
Each row shows --instances objects of one category (instance indices 0, 1, ...) from one fixed camera per column,
rendered by the same worker processes as the builder (rendering.render_jobs) at --size pixels, on black.
"""

import os
import sys

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from keypointnet_datasets.shapenet_pairs import cameras
from keypointnet_datasets.shapenet_pairs import procedural
from keypointnet_datasets.shapenet_pairs import rendering

_CATEGORIES = flags.DEFINE_list("category", ["planes", "cars", "chairs"], "Categories, one row each.")
_LIGHTING = flags.DEFINE_list("lighting", ["directional"], f"Lightings ({', '.join(rendering.LIGHTINGS)}), "
                              "one row per category each.")
_INSTANCES = flags.DEFINE_integer("instances", 6, "Objects per row.")
_SIZE = flags.DEFINE_integer("size", 128, "Pixels per image.")
_SEED = flags.DEFINE_integer("seed", 0, "Camera seed.")
_DEFORMATION = flags.DEFINE_list("deformation", ["none"], "Deformations (none, bend, stretch, taper), one row per "
                                 "category and lighting each.")
_AMOUNT = flags.DEFINE_float("amount", 0.3, "Deformation amount.")
_RANDOM = flags.DEFINE_bool("random_appearance", False, "Random object colours, light and background (the "
                            "builder's appearance=random), drawn from --seed and the object's index.")
_GENERATOR = flags.DEFINE_integer("generator", 2, f"Procedural generator ({procedural.GENERATORS}).")
_OUTPUT = flags.DEFINE_string("output", "docs/procedural.png", "PNG to write.")


def main(argv):
  del argv
  bad = [c for c in _CATEGORIES.value if c not in procedural.CATEGORY_SCALE]
  bad += [l for l in _LIGHTING.value if l not in rendering.LIGHTINGS]
  bad += [d for d in _DEFORMATION.value if d != "none" and d not in procedural.DEFORMATIONS]
  if bad or _INSTANCES.value < 1 or _GENERATOR.value not in procedural.GENERATORS:
    print(f"error: unknown categories or lightings {bad} (or --instances < 1, or --generator not in "
          f"{procedural.GENERATORS})", file=sys.stderr)
    return 2
  views = cameras.sample_pairs(np.random.default_rng(_SEED.value), _INSTANCES.value)[:, 0]  # one camera per column
  rows = [(c, l, d) for c in _CATEGORIES.value for l in _LIGHTING.value for d in _DEFORMATION.value]
  jobs = [{"mesh": {"kind": "procedural", "category": category, "index": i, "generator": _GENERATOR.value,
                    "deformation": deformation, "amount": _AMOUNT.value},
           "model_views": views[i:i + 1], "lighting": lighting}
          for category, lighting, deformation in rows for i in range(_INSTANCES.value)]
  if _RANDOM.value:
    for number, job in enumerate(jobs):
      job["appearance_seed"] = _SEED.value * 100_000 + number
  images = []
  for result in rendering.render_jobs(jobs, _SIZE.value):
    if result["error"]:
      print(f"error: {result['error']}", file=sys.stderr)
      return 1
    images.append(result["images"][0][..., :3])
  sheet = np.concatenate([np.concatenate(images[r * _INSTANCES.value:(r + 1) * _INSTANCES.value], axis=1)
                          for r in range(len(rows))], axis=0)
  os.makedirs(os.path.dirname(_OUTPUT.value) or ".", exist_ok=True)
  Image.fromarray(sheet).save(_OUTPUT.value)
  print(f"Wrote {_OUTPUT.value}: rows (category, lighting, deformation) {rows}, "
        f"{_INSTANCES.value} objects each, {_SIZE.value} px.")
  return 0


if __name__ == "__main__":
  app.run(main)
