"""Input pipeline vs training: does training ever wait for input?

Example (the CPU preset's network on the built planes_small data set; ~2 minutes on 2 CPU cores):
  python bench/input_pipeline.py
  python bench/input_pipeline.py --dataset_config=planes --image_size=128 --num_filters=64 --steps=5

Measured in one run, with the CPU preset's settings:
  1. the pipeline alone (`input_pipeline.make_dataset` for the train split: read, shuffle, decode, resize,
     batch, prefetch), pairs per second;
  2. the train step alone on one constant batch (what training consumes), pairs per second;
  3. the train step fed by the pipeline, pairs per second.
Prints one table; "input / training" above 1 means the pipeline can feed the step, and "fed / constant" near 1
means training does not wait for input (both share the same CPU cores here).
"""

import dataclasses
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import keras
import tensorflow as tf

from keypointnet_tf import config as config_lib
from keypointnet_tf import input_pipeline
from keypointnet_tf import model as model_lib
from keypointnet_tf import runs
from keypointnet_tf import training

_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data directory (default: $TFDS_DATA_DIR or "
                                "~/tensorflow_datasets). The data set is built first when missing.")
_DATASET = flags.DEFINE_string("dataset_config", "planes_small", "shapenet_pairs config.")
_IMAGE = flags.DEFINE_integer("image_size", None, "Network image side (default: the CPU preset's).")
_FILTERS = flags.DEFINE_integer("num_filters", None, "Network width (default: the CPU preset's).")
_STEPS = flags.DEFINE_integer("steps", 60, "Batches / steps per measurement.")
_BATCH = flags.DEFINE_integer("batch_size", None, "View pairs per step (default: the CPU preset's).")


def _rate(fn, steps, pairs_per_step):
  fn()  # warm-up (tracing, first reads)
  start = time.perf_counter()
  for _ in range(steps):
    fn()
  return steps * pairs_per_step / (time.perf_counter() - start)


def main(argv):
  del argv
  config = config_lib.cpu_preset("planes")
  config = dataclasses.replace(
      config, dataset_config=_DATASET.value, data_dir=_DATA_DIR.value, batch_size=_BATCH.value or config.batch_size,
      image_size=_IMAGE.value or config.image_size,
      model=dataclasses.replace(config.model, num_filters=_FILTERS.value or config.model.num_filters))
  source = runs.dataset_source(config)
  dataset = input_pipeline.make_dataset(source, "train", config.batch_size, image_size=config.image_size)
  dataset = dataset.map(lambda batch: {k: v for k, v in batch.items() if k != "model_id"})
  iterator = iter(dataset)
  input_rate = _rate(lambda: tf.nest.map_structure(lambda t: t.numpy(), next(iterator)), _STEPS.value,
                     config.batch_size)

  keras.utils.set_random_seed(0)
  net = model_lib.build_model(config.model, image_size=config.image_size)
  optimizer = keras.optimizers.Adam(config.learning_rate)
  optimizer.build(net.trainable_variables)
  step_fn = training.build_train_step(net, optimizer, tf.distribute.get_strategy(), config,
                                      tf.random.Generator.from_seed(0), tf.Variable(0, dtype=tf.int64),
                                      tf.Variable(0, dtype=tf.int64))
  constant = next(iterator)
  constant_rate = _rate(lambda: step_fn(constant)["total"].numpy(), _STEPS.value, config.batch_size)
  fed_rate = _rate(lambda: step_fn(next(iterator))["total"].numpy(), _STEPS.value, config.batch_size)
  print(f"shapenet_pairs/{config.dataset_config} -> {config.image_size} px, {config.model.num_filters} filters, "
        f"{config.batch_size} pairs per step, {_STEPS.value} steps each, {os.cpu_count()} CPUs")
  print("| input alone (pairs/s) | train step, constant batch (pairs/s) | train step fed by the pipeline "
        "(pairs/s) | input / training | fed / constant |")
  print("|---|---|---|---|---|")
  print(f"| {input_rate:.1f} | {constant_rate:.1f} | {fed_rate:.1f} | {input_rate / constant_rate:.1f}x | "
        f"{fed_rate / constant_rate:.2f} |")


if __name__ == "__main__":
  app.run(main)
