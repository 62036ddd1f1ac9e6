"""What the dilated convolutions cost on this machine: the keypoint backbone, its dilated layers computed the Keras
way (SpaceToBatch around Conv2D) and through the Conv2D op's own dilations, against the same backbone with every
dilation rate set to 1 (identical FLOPs); forward + backward on 16 images (one CPU-preset step's worth), Keras
batch norm in all three.

Example:
  python bench/dilation_cost.py [--json=PATH]
Prints one table: milliseconds per forward + backward pass for each, and their ratios, measured in one run.
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import tensorflow as tf

import bench_report

from keypointnet_tf import model as model_lib


_JSON = flags.DEFINE_string("json", "", "Also write the rows as JSON to this path.")


def _time_backbone(rates, size, filters, dilated_conv, batch=16, repeats=20):
  saved = model_lib.DILATION_RATES
  model_lib.DILATION_RATES = rates  # read when the backbone creates its layers
  try:
    backbone = model_lib.DilatedBackbone(filters, dilated_conv=dilated_conv, fused_batch_norm=False)
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
  rows = []
  for size, filters, repeats in ((32, 16, 20), (128, 64, 3)):
    row = {"image_size": size, "filters": filters}
    for name, rates, impl in (("keras_ms", model_lib.DILATION_RATES, "keras"),
                              ("native_ms", model_lib.DILATION_RATES, "native"),
                              ("rates_1_ms", (1,) * len(model_lib.DILATION_RATES), "keras")):
      row[name] = 1000 * _time_backbone(rates, size, filters, impl, repeats=repeats)
    rows.append(row)
  print("| image | filters | dilated, Keras (ms) | dilated, native (ms) | all rates 1 (ms) | Keras / rates 1 | "
        "native / rates 1 |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['image_size']} | {r['filters']} | {r['keras_ms']:.1f} | {r['native_ms']:.1f} | "
          f"{r['rates_1_ms']:.1f} | {r['keras_ms'] / r['rates_1_ms']:.2f} | {r['native_ms'] / r['rates_1_ms']:.2f} |")
  if _JSON.value:
    bench_report.write_json(_JSON.value, "dilation_cost", rows)


if __name__ == "__main__":
  app.run(main)
