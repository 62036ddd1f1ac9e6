"""Exports a trained run as a SavedModel for TF Serving (see docs/serving.md).

Example:
  python tools/export.py --model_dir=runs/planes            # writes runs/planes/serving/1
  python tools/export.py --model=planes                     # a shipped model; writes serving/planes/1
  saved_model_cli show --dir runs/planes/serving/1 --all
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from keypointnet_tf import config as config_lib
from keypointnet_tf import export
from keypointnet_tf import runs

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Training run directory (or --model).")
_MODEL = flags.DEFINE_string("model", None, "A model shipped with the package, by name (planes, cars, chairs), "
                             "instead of --model_dir.")
_OUTPUT = flags.DEFINE_string("output", None, "SavedModel directory (default <model_dir>/serving/1, or "
                              "serving/<model>/1 for --model).")


def main(argv):
  del argv
  try:
    model_dir = runs.chosen_run(_MODEL_DIR.value, _MODEL.value)
  except runs.RunError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  output = _OUTPUT.value or (os.path.join("serving", _MODEL.value, "1") if _MODEL.value
                             else os.path.join(model_dir, "serving", "1"))
  if os.path.exists(output) and os.listdir(output):
    print(f"error: {output} exists and is not empty; choose another --output or remove it.", file=sys.stderr)
    return 2
  try:
    net, config = runs.load_trained_model(model_dir)
  except (FileNotFoundError, runs.RunError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  # The focal length of the run's data (recorded when it started); the paper's 5 degree camera for older runs.
  export.export_saved_model(net, output, config.image_size, config_lib.focal_of(config))
  print(f"SavedModel of {config_lib.method_name(config)} written to {output} (signatures: serving_default "
        f"[encoded images], predict_images [float RGBA]); input size {config.image_size} px.")
  return 0


if __name__ == "__main__":
  app.run(main)
