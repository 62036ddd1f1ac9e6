"""Machine-readable output shared by the benchmarks: `--json PATH` writes the rows of the printed table."""

import datetime
import json
import os
import platform

import tensorflow as tf


def write_json(path, benchmark, rows, **reference):
  """Writes {"benchmark", "date", "machine", "reference", "rows"} to `path` (rows: a list of flat dicts)."""
  record = {"benchmark": benchmark, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "tensorflow": tf.__version__,
                        "gpus": len(tf.config.list_physical_devices("GPU"))},
            "reference": reference, "rows": rows}
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  with open(path, "w") as f:
    json.dump(record, f, indent=1)
  print(f"Wrote {path}")
