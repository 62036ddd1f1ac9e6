"""Markdown rows of the trial log written by bench/cpu_trial.py --results (one JSON line per evaluation).

Examples:
  python bench/trial_table.py reproduction/trials.jsonl                              # print the rows
  python bench/trial_table.py reproduction/trials.jsonl reproduction/trials.md       # rewrite the table there
Prints one row per evaluation in file order: trial, method name, step, pairs seen, mean / median angular error,
3D-SE, DAS with its forward and backward halves (each keypoint on one part; each part under one keypoint), keypoints
near a part, shares under 30 and over 90 degrees, orientation-flag accuracy (trials since
2026-11-25, fifth session), training minutes of that leg, preset, overrides.
"""

import json
import os
import sys

from keypointnet_research import cpu_trial
from keypointnet_tf import config as config_lib


def method(record):
  """The run's reported name, from the trial's overrides applied to its base (cpu when not recorded)."""
  base = cpu_trial.BASES[record.get("preset", "cpu")](record["category"])
  config = cpu_trial.merge(base, cpu_trial.legacy_overrides(record["overrides"]))
  return config_lib.method_name(config), config.batch_size


def _das(record):
  """DAS, with its two halves where the trial recorded them."""
  if "das" not in record:
    return "—"
  halves = (f" ({record['das_forward']:.2f} / {record['das_backward']:.2f})" if "das_backward" in record else "")
  return f"{record['das']:.3f}{halves}"


def rows(records):
  yield ("| trial | method | category | step | pairs seen | mean | median | 3D-SE | DAS (forward / backward) | "
         "near a part | < 30 deg | > 90 deg | flag accuracy | leg minutes | preset | overrides of the preset |")
  yield "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  for r in records:
    name, batch = method(r)
    yield (f"| {r['name']} | {name} | {r['category']} | {r['step']:,} | {r['step'] * batch / 1000:.0f}k | "
           f"{r['mean']:.1f} | {r['median']:.1f} | {r['3d_se']:.3f} | {_das(r)} | "
           f"{r.get('near_part', float('nan')):.1%} | {r['under_30']:.1%} | {r['over_90']:.1%} | "
           f"{format(r['flag_accuracy'], '.1%') if 'flag_accuracy' in r else '—'} | "
           f"{r['train_seconds_this_leg'] / 60:.1f} | {r.get('preset', 'cpu')} | `{json.dumps(r['overrides'])}` |")


BEGIN, END = "<!-- trial rows: bench/trial_table.py -->", "<!-- end of trial rows -->"


def main(argv):
  if len(argv) not in (2, 3) or argv[1] in ("-h", "--help", "-help"):
    sys.exit(__doc__)
  if not os.path.isfile(argv[1]):
    sys.exit(f"No trial log at {argv[1]}: give the JSON-lines file bench/cpu_trial.py --results wrote.")
  with open(argv[1]) as f:
    records = [json.loads(line) for line in f if line.strip()]
  table = "\n".join(rows(records))
  if len(argv) == 2:
    print(table)
    return
  with open(argv[2]) as f:
    text = f.read()
  if BEGIN not in text or END not in text:
    sys.exit(f"{argv[2]} has no {BEGIN} ... {END} block to replace.")
  head, rest = text.split(BEGIN, 1)
  with open(argv[2], "w") as f:
    f.write(head + BEGIN + "\n" + table + "\n" + END + rest.split(END, 1)[1])


if __name__ == "__main__":
  main(sys.argv)
