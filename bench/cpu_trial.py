"""One CPU-preset trial: train with overrides, then evaluate on the test split (used to choose the preset).

Example:
  python bench/cpu_trial.py --model_dir=/tmp/trial_a --steps=1000 --separation_delta=0.2
Prints the final training metrics and a row: mean / median angular error (degrees), 3D-SE, flips.
"""

import dataclasses
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from keypointnet_tf import config as config_lib
from keypointnet_tf import evaluation
from keypointnet_tf import training

_DIR = flags.DEFINE_string("model_dir", "/tmp/trial", "Run directory.")
_CATEGORY = flags.DEFINE_string("category", "planes", "Category.")
_STEPS = flags.DEFINE_integer("steps", 1000, "Steps.")
_DELTA = flags.DEFINE_float("separation_delta", None, "Separation delta.")
_NOISE = flags.DEFINE_float("noise", None, "Pose noise.")
_POSE = flags.DEFINE_float("pose_weight", None, "Pose weight.")
_IMAGE = flags.DEFINE_integer("image_size", None, "Image size.")
_FILTERS = flags.DEFINE_integer("num_filters", None, "Filters.")
_LR = flags.DEFINE_float("learning_rate", None, "Learning rate.")
_SUPERVISED = flags.DEFINE_bool("supervised", False, "Supervised baseline.")
_DATA = flags.DEFINE_string("data_dir", "", "TFDS data dir.")
_EVAL_PAIRS = flags.DEFINE_integer("eval_pairs", 320, "Test pairs to evaluate.")


def main(argv):
  del argv
  config = config_lib.cpu_preset(_CATEGORY.value)
  loss = config.loss
  if _DELTA.value is not None:
    loss = dataclasses.replace(loss, separation_delta=_DELTA.value)
  if _NOISE.value is not None:
    loss = dataclasses.replace(loss, pose_noise_stddev=_NOISE.value)
  if _POSE.value is not None:
    loss = dataclasses.replace(loss, weights=dataclasses.replace(loss.weights, pose=_POSE.value))
  model = config.model
  if _FILTERS.value:
    model = dataclasses.replace(model, num_filters=_FILTERS.value)
  if _SUPERVISED.value:
    model = dataclasses.replace(model, num_keypoints={"planes": 9}.get(_CATEGORY.value, 10))
  config = dataclasses.replace(config, model_dir=_DIR.value, steps=_STEPS.value, loss=loss, model=model,
                               supervised=_SUPERVISED.value, data_dir=_DATA.value,
                               image_size=_IMAGE.value or config.image_size,
                               learning_rate=_LR.value or config.learning_rate, log_every=100)
  result = training.train(config)
  row, _ = evaluation.evaluate_run(_DIR.value, "test", max_pairs=_EVAL_PAIRS.value)
  row.pop("errors")
  print("TRAIN", json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))
  print("EVAL", json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))


if __name__ == "__main__":
  app.run(main)
