"""Evaluates trained runs on a test split and prints the paper's Table 1 layout (Markdown) plus a JSON file.

Examples:
  python tools/evaluate.py --model_dirs=runs/planes
  python tools/evaluate.py --model_dirs=runs/planes,runs/planes_supervised --output=results/planes
Rows are named by method (config.method_name: "KeypointNet" only for the paper's losses, "KeypointNet + axis-anchor
warm-up" for --preset=cpu_anchor, "supervised baseline") and run directory, unless --names is given.
Each run is evaluated on its own category and data (or --released_dir / --data_dir) with the predicted
orientation flag and no noise (--noise=0.1 reproduces the released code's metric). An exported SavedModel
directory works too (with --category, and --dataset_config for non-default data):
  python tools/evaluate.py --model_dirs=runs/planes/serving/1 --category=planes --dataset_config=planes_small
A run evaluated on other data of its category (the run's image size is kept):
  python tools/evaluate.py --model_dirs=runs/planes --dataset_config=planes_small_x10_random
Which part each keypoint tracks, and which keypoint each part (data with ground-truth keypoints only):
  python tools/evaluate.py --model_dirs=runs/planes --per_keypoint
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from keypointnet_datasets.shapenet_pairs import procedural
from keypointnet_tf import config as config_lib
from keypointnet_tf import evaluation
from keypointnet_tf import runs

_DIRS = flags.DEFINE_list("model_dirs", None, "Run directories to evaluate.", required=True)
_NAMES = flags.DEFINE_list("names", None, "Row names (default: method name and run directory).")
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Split.")
_NOISE = flags.DEFINE_float("noise", 0.0, "Noise stddev inside the metric (0: clean protocol).")
_MAX_PAIRS = flags.DEFINE_integer("max_pairs", None, "Evaluate at most this many pairs.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory (default: the run's).")
_RELEASED = flags.DEFINE_string("released_dir", None, "Evaluate on the paper's released TFRecords instead.")
_PER_KEYPOINT = flags.DEFINE_bool("per_keypoint", False, "Also print, per run, the ground-truth part each keypoint is "
                                  "nearest to in most views and the keypoint nearest to each part (the two halves of "
                                  "DAS), where the data has ground-truth keypoints.")
_OUTPUT = flags.DEFINE_string("output", None, "Write <output>.md and <output>.json.")
_CATEGORY = flags.DEFINE_string("category", None, "Category of SavedModel entries (runs know their own); default: "
                                "the --dataset_config's.")
_DATASET_CONFIG = flags.DEFINE_string("dataset_config", None, "shapenet_pairs config to evaluate on: needed for "
                                      "SavedModel entries on other data than the category's full set; for runs, "
                                      "instead of their own (e.g. planes_small_x10_random).")


def _default_name(model_dir):
  """"<method name> (<dir>)" for a training run; the directory alone for a SavedModel or an unreadable run."""
  try:
    return f"{config_lib.method_name(runs.load_config(model_dir))} ({model_dir})"
  except (FileNotFoundError, ValueError, TypeError, KeyError):
    return model_dir


def main(argv):
  del argv
  names = _NAMES.value or [_default_name(d) for d in _DIRS.value]
  if len(names) != len(_DIRS.value):
    print("error: --names needs one name per --model_dirs entry", file=sys.stderr)
    return 2
  results, raw = [], {}
  for name, model_dir in zip(names, _DIRS.value):
    try:
      if evaluation.is_saved_model(model_dir):
        category = _CATEGORY.value or (config_lib.category_of(_DATASET_CONFIG.value) if _DATASET_CONFIG.value
                                       else None)
        if not category:
          raise ValueError("a SavedModel does not record its category: pass --category (and --dataset_config "
                           "or --released_dir for other data than the category's full set)")
        config = config_lib.resolve(config_lib.TrainConfig(
            category=category, data_dir=_DATA_DIR.value or "", released_dir=_RELEASED.value or "",
            dataset_config=_DATASET_CONFIG.value or ""))
        category = config.category
        row = evaluation.evaluate_saved_model(model_dir, runs.dataset_source(config),
                                              _SPLIT.value, noise_stddev=_NOISE.value, max_pairs=_MAX_PAIRS.value)
      else:
        row, category = evaluation.evaluate_run(model_dir, _SPLIT.value, noise_stddev=_NOISE.value,
                                                max_pairs=_MAX_PAIRS.value, data_dir=_DATA_DIR.value,
                                                released_dir=_RELEASED.value,
                                                dataset_config=_DATASET_CONFIG.value)
    except (FileNotFoundError, ValueError, runs.RunError) as e:
      print(f"error: {model_dir}: {e}", file=sys.stderr)
      return 2
    errors = row.pop("errors")
    if "3d_se_note" in row:
      print(f"note: {model_dir}: {row['3d_se_note']}", file=sys.stderr)
    results.append((name, {category: row}))
    raw[name] = {"model_dir": model_dir, "category": category, **row, "errors_deg": errors.tolist()}
  table = evaluation.markdown_table(results)
  if _PER_KEYPOINT.value:
    for name, (category, row) in ((n, next(iter(r.items()))) for n, r in results):
      found = row.get("keypoint_parts")
      if found is None:
        table += f"\n{name}: the data has no ground-truth keypoints; no per-keypoint table.\n"
        continue
      part_names = procedural.KEYPOINT_NAMES.get(category)
      if part_names is not None and len(part_names) != len(found["parts"]):
        part_names = None
      table += f"\n{name} ({category}), per keypoint and per part:\n\n"
      table += evaluation.keypoint_parts_table(found, part_names)
  print(table)
  if _OUTPUT.value:
    os.makedirs(os.path.dirname(_OUTPUT.value) or ".", exist_ok=True)
    with open(_OUTPUT.value + ".md", "w") as f:
      f.write(table)
    with open(_OUTPUT.value + ".json", "w") as f:
      json.dump({"split": _SPLIT.value, "noise": _NOISE.value, "runs": raw}, f, indent=1)
  return 0


if __name__ == "__main__":
  app.run(main)
