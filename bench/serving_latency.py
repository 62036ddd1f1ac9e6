"""SavedModel inference latency (batch 1) and throughput (batch 32) through the serving_default signature.

Example:
  python bench/serving_latency.py --saved_model=runs/planes/serving/1 --image_size=48
Loads the SavedModel with TensorFlow only and feeds PNG bytes; prints one table (median of --repeats runs).
"""

import statistics
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

_PATH = flags.DEFINE_string("saved_model", None, "SavedModel directory.", required=True)
_SIZE = flags.DEFINE_integer("image_size", 128, "Side of the PNGs fed in.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls per batch size.")


def main(argv):
  del argv
  serve = tf.saved_model.load(_PATH.value).signatures["serving_default"]
  rng = np.random.default_rng(0)
  png = tf.io.encode_png(rng.integers(0, 256, (_SIZE.value, _SIZE.value, 4), dtype=np.uint8)).numpy()
  print("| batch | median ms / call | ms / image | images / s |")
  print("|---|---|---|---|")
  for batch in (1, 32):
    images = tf.constant([png] * batch)
    serve(images=images)  # warm-up
    times = []
    for _ in range(_REPEATS.value):
      start = time.perf_counter()
      serve(images=images)["uv"].numpy()
      times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"| {batch} | {1000 * median:.1f} | {1000 * median / batch:.2f} | {batch / median:.1f} |")


if __name__ == "__main__":
  app.run(main)
