"""Rendering throughput of the shapenet_pairs workers: views per second with 1 and 2 worker processes.

Example:
  python bench/render_throughput.py --category=planes --image_size=128 --models=96 --views=16
Prints one table: workers, views, seconds, views/s, and the speed-up over one worker, each overall and after the
first result (worker start-up: a Python process importing pyrender and creating an EGL context, about a second,
is paid once per build and dominates small runs), measured in one run.
"""

import time

from absl import app
from absl import flags
import numpy as np

from keypointnet_datasets.shapenet_pairs import cameras
from keypointnet_datasets.shapenet_pairs import rendering

_CATEGORY = flags.DEFINE_string("category", "planes", "Procedural category.")
_SIZE = flags.DEFINE_integer("image_size", 128, "Render side in pixels.")
_MODELS = flags.DEFINE_integer("models", 96, "Meshes per measurement.")
_VIEWS = flags.DEFINE_integer("views", 16, "Views per mesh (pairs = views / 2).")
_WORKERS = flags.DEFINE_list("workers", ["1", "2"], "Worker counts to compare.")


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  jobs = [{"mesh": {"kind": "procedural", "category": _CATEGORY.value, "index": i},
           "model_views": cameras.sample_pairs(rng, _VIEWS.value // 2).reshape(-1, 4, 4)}
          for i in range(_MODELS.value)]
  rows = []
  for workers in (int(w) for w in _WORKERS.value):
    list(rendering.render_jobs(jobs[:2], _SIZE.value, num_workers=workers))  # warm the caches
    start = time.perf_counter()
    first, views = None, 0
    for result in rendering.render_jobs(jobs, _SIZE.value, num_workers=workers):
      views += len(result["images"])
      if first is None:
        first, first_views = time.perf_counter(), views
    end = time.perf_counter()
    seconds = end - start
    steady = (views - first_views) / (end - first)
    rows.append((workers, views, seconds, views / seconds, first - start, steady))
  print("| workers | views | seconds | views/s | speed-up | first result after (s) | views/s after it | speed-up after it |")
  print("|---|---|---|---|---|---|---|---|")
  for workers, views, seconds, rate, first, steady in rows:
    print(f"| {workers} | {views} | {seconds:.1f} | {rate:.1f} | {rate / rows[0][3]:.2f}x | {first:.2f} | "
          f"{steady:.1f} | {steady / rows[0][5]:.2f}x |")


if __name__ == "__main__":
  app.run(main)
