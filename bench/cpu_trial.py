"""One CPU trial: the CPU preset with overrides, trained, then evaluated on the test split (how the preset was chosen).

Examples (the trials in the README's "CPU preset" table):
  python bench/cpu_trial.py --name=paper_losses --overrides='{"steps": 1500, "loss": {"weights": {"anchor": 0.0}}}'
  python bench/cpu_trial.py --name=anchor_4k --overrides='{"steps": 4000, "anchor_steps": 2000, "anneal_start": 1500, "anneal_end": 3000}'
--overrides is JSON merged field by field into config.cpu_preset(--category) (nested for "model" and "loss").
Prints the last logged training metrics and one result row: mean / median angular error (degrees), 3D-SE.
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

_NAME = flags.DEFINE_string("name", "trial", "Trial name; the run goes to --runs_dir/<name>.")
_RUNS = flags.DEFINE_string("runs_dir", "/tmp/cpu_trials", "Where trial runs go.")
_CATEGORY = flags.DEFINE_enum("category", "planes", ["cars", "planes", "chairs"], "Category.")
_OVERRIDES = flags.DEFINE_string("overrides", "{}", "JSON merged into the CPU preset.")
_DATA = flags.DEFINE_string("data_dir", "", "TFDS data dir.")
_EVAL_PAIRS = flags.DEFINE_integer("eval_pairs", 160, "Test pairs to evaluate.")


def merge(obj, overrides):
  """dataclasses.replace, recursively for nested dataclasses; unknown fields raise a clear error."""
  fields = {f.name for f in dataclasses.fields(obj)}
  unknown = set(overrides) - fields
  if unknown:
    raise app.UsageError(f"Unknown {type(obj).__name__} field(s) {sorted(unknown)}; known: {sorted(fields)}")
  values = {}
  for key, value in overrides.items():
    current = getattr(obj, key)
    values[key] = merge(current, value) if dataclasses.is_dataclass(current) else value
  return dataclasses.replace(obj, **values)


def main(argv):
  del argv
  config = merge(config_lib.cpu_preset(_CATEGORY.value), json.loads(_OVERRIDES.value))
  config = dataclasses.replace(config, model_dir=os.path.join(_RUNS.value, _NAME.value), data_dir=_DATA.value)
  result = training.train(config)
  row, _ = evaluation.evaluate_run(config.model_dir, "test", max_pairs=_EVAL_PAIRS.value)
  row.pop("errors")
  print("TRAIN", json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))
  print("EVAL", _NAME.value, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))


if __name__ == "__main__":
  app.run(main)
