"""What the dilated convolutions cost on this machine: the keypoint backbone against the same backbone with every
dilation rate set to 1 (identical FLOPs), forward + backward on 16 images (one CPU-preset step's worth).

Example:
  python bench/dilation_cost.py
Prints one table: milliseconds per forward + backward pass for each, and their ratio, measured in one run.
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
import tensorflow as tf

from keypointnet_tf import model as model_lib


def _time_backbone(rates, size, filters, batch=16, repeats=20):
  saved = model_lib.DILATION_RATES
  model_lib.DILATION_RATES = rates  # read when the backbone creates its layers
  try:
    backbone = model_lib.DilatedBackbone(filters)
  finally:
    model_lib.DILATION_RATES = saved
  images = tf.random.normal([batch, size, size, 4])
  backbone(images, training=True)

  @tf.function
  def step(x):
    with tf.GradientTape() as tape:
      y = tf.reduce_sum(backbone(x, training=True))
    return tape.gradient(y, backbone.trainable_variables)

  step(images)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    [g.numpy() for g in step(images)]  # pylint: disable=expression-not-assigned
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv):
  del argv
  print("| image | filters | dilated (ms) | all rates 1 (ms) | ratio |")
  print("|---|---|---|---|---|")
  for size, filters, repeats in ((32, 16, 20), (128, 64, 3)):
    dilated = _time_backbone(model_lib.DILATION_RATES, size, filters, repeats=repeats)
    plain = _time_backbone((1,) * len(model_lib.DILATION_RATES), size, filters, repeats=repeats)
    print(f"| {size} | {filters} | {1000 * dilated:.1f} | {1000 * plain:.1f} | {dilated / plain:.2f} |")


if __name__ == "__main__":
  app.run(main)
