"""Copies a trained run into the package as a shipped model (`tools/predict.py --model=NAME`).

Examples:
  python tools/ship_model.py --model_dir=runs/reproduce/planes/keypointnet --name=planes
  python tools/ship_model.py --model_dir=/tmp/trials/long --checkpoint=/tmp/trials/long/milestones/ckpt-30000 \
      --name=planes      # an earlier step of the run (bench/cpu_trial.py --eval_at keeps them in milestones/)
Evaluates the run (its latest checkpoint, or --checkpoint) on its test split first (the evaluation protocol:
predicted flag, no noise) and stores the numbers, the run's method name and the checkpoint's step, and this command
in keypointnet_tf/pretrained/<name>/pretrained.json beside the config and the weights (the optimizer's state is
left out).
"""

import os
import shlex
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from keypointnet_tf import config as config_lib
from keypointnet_tf import evaluation
from keypointnet_tf import runs

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Training run directory.", required=True)
_NAME = flags.DEFINE_string("name", None, "Name of the shipped model (e.g. planes).", required=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Checkpoint prefix of the run to ship, e.g. "
                                  "RUN/milestones/ckpt-30000 (default: the run's latest checkpoint).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory of the run's data (default: the run's).")

_KEYS = ("pairs", "mean", "median", "3d_se", "under_30", "over_90", "das", "near_part")


def main(argv):
  del argv
  try:
    config_lib.check_category(_NAME.value)
    config = runs.load_config(_MODEL_DIR.value)
    checkpoint = runs.checked_checkpoint(_MODEL_DIR.value, _CHECKPOINT.value)
    row, category = evaluation.evaluate_run(_MODEL_DIR.value, "test", data_dir=_DATA_DIR.value,
                                            checkpoint=checkpoint)
  except (FileNotFoundError, ValueError, runs.RunError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  info = {"method": config_lib.method_name(config), "category": category, "source_run": _MODEL_DIR.value,
          "dataset_config": config.dataset_config, "date": time.strftime("%Y-%m-%d"),
          "test": {k: row[k] if isinstance(row[k], int) else round(float(row[k]), 4) for k in _KEYS if k in row},
          "command": "python tools/ship_model.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])}
  target = os.path.join(runs.PRETRAINED_DIR, _NAME.value)
  size = runs.write_pretrained(_MODEL_DIR.value, target, info, checkpoint)
  print(f"Shipped {info['method']} ({category}, step {runs.checkpoint_step(checkpoint):,}) as {_NAME.value!r}: "
        f"{target}, {size / 1024:.0f} KiB; "
        f"test mean {row['mean']:.1f} / median {row['median']:.1f} degrees on {row['pairs']} pairs.")
  return 0


if __name__ == "__main__":
  app.run(main)
