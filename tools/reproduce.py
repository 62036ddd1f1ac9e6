"""One command from nothing to a reproduction report: build, train, baseline, ablations, evaluate, REPRODUCTION.md.

Examples:
  python tools/reproduce.py --category=planes                      # CPU preset without a GPU
  python tools/reproduce.py --category=planes,cars,chairs --preset=paper
  python tools/reproduce.py --category=planes --ablations=no_pose,keypoints_5 --steps=2000
  python tools/reproduce.py --category=mugs                        # a data set built from your own meshes
  python tools/reproduce.py --category=planes --extra_seeds=1      # rows a and d with a second seed

For each category: builds the procedural data set when missing, trains KeypointNet and the supervised baseline
with the same budget (runs in --runs_dir/<category>/), trains each ablation with that budget too, evaluates
everything on the test split, draws test-view pictures, and merges the numbers into --output_dir/results.json.
The report (--report) is then rewritten from every category stored there, beside the paper's Table 1.
Rerunning the same command resumes interrupted runs and only re-evaluates finished ones. Each row is stored in
results.json as soon as it is evaluated, so the rows of a machine that is gone are kept, not trained again.
Ablations: no_consistency, no_pose, no_silhouette, more_noise, keypoints_{3,5,8,10,15,20}.
"""

import dataclasses
import os
import shlex
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import tensorflow as tf

from keypointnet_tf import config as config_lib
from keypointnet_research import reproduction
from keypointnet_tf import runs
from keypointnet_datasets.shapenet_pairs import build

_CATEGORIES = flags.DEFINE_list("category", ["planes"], "Categories (cars, planes, chairs), or the name of one data "
                                "set built from your own meshes.")
_DATASET_CONFIG = flags.DEFINE_string("dataset_config", None, "shapenet_pairs config to train on (one category "
                                      "only; default: the preset's).")
_PRESET = flags.DEFINE_enum("preset", "auto", list(config_lib.PRESETS),
                            "auto: the CPU preset when no GPU is visible, else the paper's recipe. Every preset "
                            "trains the same three rows: KeypointNet, the anchored variant and the supervised "
                            "baseline.")
_STEPS = flags.DEFINE_integer("steps", None, "Training steps of every run (default: the preset's).")
_ABLATIONS = flags.DEFINE_list("ablations", [], "Ablations to train and evaluate with the same budget.")
_METHODS = flags.DEFINE_list("methods", list(reproduction.DEFAULT_METHODS),
                             f"Which methods to train now ({', '.join(reproduction.METHOD_FOLDERS)}; the last two "
                             "are the paper's rows b and c, with the keypointnet run's orientation network frozen); "
                             "stored results of the others are kept when they have the same budget.")
_EXTRA_SEEDS = flags.DEFINE_list("extra_seeds", [], "Other seeds of the KeypointNet and supervised rows (the "
                                  "paper's rows d and a) to train with the same budget, as rows '<method>, seed N' "
                                  "(runs in <folder>_seedN); the preset's own seed is 0.")
_MAX_PAIRS = flags.DEFINE_integer("max_pairs", None, "Evaluate at most this many test pairs (default: all).")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data directory (default ~/tensorflow_datasets).")
_RUNS_DIR = flags.DEFINE_string("runs_dir", "runs/reproduce", "Where the training runs go.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "reproduction", "results.json and pictures.")
_REPORT = flags.DEFINE_string("report", "REPRODUCTION.md", "The Markdown report to (re)write.")


def main(argv):
  del argv
  try:
    reproduction.check_ablations(_ABLATIONS.value)
    for category in _CATEGORIES.value:
      config_lib.check_category(category)
    if _DATASET_CONFIG.value and len(_CATEGORIES.value) != 1:
      raise ValueError("--dataset_config names the data of one category; pass one --category with it.")
    if not all(seed.isdigit() for seed in _EXTRA_SEEDS.value):
      raise ValueError(f"--extra_seeds takes seeds as integers, e.g. --extra_seeds=1,2. Received: "
                       f"{','.join(_EXTRA_SEEDS.value)}")
    extra_seeds = [int(seed) for seed in _EXTRA_SEEDS.value]
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  gpu_visible = bool(tf.config.list_physical_devices("GPU"))
  command = "python tools/reproduce.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
  for category in _CATEGORIES.value:
    config, _ = config_lib.preset(_PRESET.value, category, gpu_visible)
    try:
      if _DATASET_CONFIG.value:
        config = dataclasses.replace(config, dataset_config=_DATASET_CONFIG.value)
      config = config_lib.fit_schedules(dataclasses.replace(config, data_dir=_DATA_DIR.value),
                                        _STEPS.value or config.steps)
      reproduction.reproduce(config, _OUTPUT_DIR.value, _RUNS_DIR.value, _ABLATIONS.value, _MAX_PAIRS.value,
                             log=lambda message: print(message, flush=True), command=command.strip(),
                             build_data=build.build_config, methods=_METHODS.value,
                             extra_seeds=extra_seeds)
    except (runs.RunError, build.DataBuildError, FileNotFoundError, ValueError) as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
  path = reproduction.write_report(_OUTPUT_DIR.value, _REPORT.value, command.strip())
  print(f"Wrote {path}.")
  return 0


if __name__ == "__main__":
  app.run(main)
