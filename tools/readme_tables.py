"""Writes README.md's shipped-models and results tables from the stored results, so they cannot drift.

Examples:
  python tools/readme_tables.py            # rewrite the two tables in README.md
  python tools/readme_tables.py --check    # exit 1 (and say which) when README.md differs from the results
Sources: keypointnet_tf/pretrained/<name>/pretrained.json (written by tools/ship_model.py) and
reproduction/results.json (written by tools/reproduce.py). Each table sits between the markers
<!-- table:NAME (tools/readme_tables.py) --> and <!-- end table:NAME --> in README.md.
"""

import json
import pathlib
import sys

from absl import app
from absl import flags

from keypointnet_research import reproduction
from keypointnet_tf import config as config_lib

REPO = pathlib.Path(__file__).resolve().parent.parent
README = REPO / "README.md"
PRETRAINED = REPO / "keypointnet_tf" / "pretrained"
RESULTS = REPO / "reproduction" / "results.json"
CATEGORIES = ("planes", "cars", "chairs")
_CHECK = flags.DEFINE_bool("check", False, "Only compare: exit 1 when README.md's tables differ from the results.")
# Table 1's methods, in the paper's order of interest: row d, row a, then the rest.
METHODS = ("KeypointNet", "supervised baseline", "KeypointNet + axis-anchor warm-up",
           "supervised baseline with pretrained O-Net", "KeypointNet with pretrained O-Net")


def _pct(value):
  return f"{100 * value:.0f}%"


def _budget(config):
  return (f"`{config['dataset_config']}`, {config['steps']:,} steps x {config['batch_size']} pairs, "
          f"{config['image_size']} px")


def shipped_table(pretrained_root=PRETRAINED):
  """Markdown table of the shipped models, one row per pretrained/<name>/pretrained.json (sorted by name)."""
  lines = ["| model | method | trained on | test pairs | mean / median (deg) | DAS | near a part | > 90 deg |",
           "|---|---|---|---|---|---|---|---|"]
  for info_path in sorted(pathlib.Path(pretrained_root).glob("*/pretrained.json")):
    info = json.loads(info_path.read_text())
    config = json.loads((info_path.parent / "config.json").read_text())
    test = info["test"]
    lines.append(f"| `{info_path.parent.name}` | {info['method']} | {_budget({**config, 'steps': info['step']})} | "
                 f"{test['pairs']} | {test['mean']:.1f} / "
                 f"{test['median']:.1f} | {test['das']:.2f} | {_pct(test['near_part'])} | {_pct(test['over_90'])} |")
  return "\n".join(lines)


def results_table(results_path=RESULTS):
  """Markdown table of Table 1's methods per category from reproduction/results.json (ablations left out).

  Each method's row is followed by its other seeds' rows, so the spread between seeds sits beside it.
  """
  results = json.loads(pathlib.Path(results_path).read_text())
  lines = ["| category | method | budget | mean / median (deg) | 3D-SE | DAS | near a part | > 90 deg |",
           "|---|---|---|---|---|---|---|---|"]
  for category in [c for c in CATEGORIES if c in results] + sorted(set(results) - set(CATEGORIES)):
    runs = results[category]["runs"]
    # A method's row under its full name: "KeypointNet (variant: ...)" fills KeypointNet's row (config.method_base);
    # its other seeds ("<method>, seed N", tools/reproduce.py --extra_seeds) follow it, by seed.
    by_seed = sorted(runs, key=lambda name: reproduction.split_seed(name)[1])
    for method in [name for m in METHODS for name in by_seed
                   if config_lib.method_base(reproduction.split_seed(name)[0]) == m]:
      run = runs[method]
      lines.append(f"| {category} | {method} | {_budget(run['config'])} | {run['mean']:.1f} / {run['median']:.1f} | "
                   f"{run['3d_se']:.2f} | {run['das']:.2f} | {_pct(run['near_part'])} | {_pct(run['over_90'])} |")
  return "\n".join(lines)


def replace_table(text, name, table):
  """`text` with the block between table NAME's markers replaced by `table`.

  Raises:
    ValueError: the markers are missing.
  """
  begin, end = f"<!-- table:{name} (tools/readme_tables.py) -->", f"<!-- end table:{name} -->"
  if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
    raise ValueError(f"README.md needs exactly one pair of markers {begin} ... {end}")
  head, rest = text.split(begin)
  _, tail = rest.split(end)
  return f"{head}{begin}\n{table}\n{end}{tail}"


def render(readme_text):
  """README text with both tables written from the stored results."""
  text = replace_table(readme_text, "shipped", shipped_table())
  return replace_table(text, "results", results_table())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; the only flag is --check.")
  current = README.read_text()
  try:
    wanted = render(current)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if _CHECK.value:
    if wanted != current:
      print("README.md's tables differ from the stored results: run python tools/readme_tables.py",
            file=sys.stderr)
      return 1
    print("README.md's tables match the stored results.")
    return 0
  README.write_text(wanted)
  print("Wrote the shipped-models and results tables in README.md.")
  return 0


if __name__ == "__main__":
  app.run(main)
