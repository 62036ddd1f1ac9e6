"""The documentation matches the code: links resolve, tool commands name real flags, generated tables are current."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_TEXT_SUFFIXES = {".py", ".md", ".txt", ".toml", ".cfg", ".ini", ".sh", ".json", ".bib", ".tsv"}


def _tracked_text_files():
  listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
  if listed.returncode == 0:
    paths = [REPO / line for line in listed.stdout.splitlines()]
  else:  # not a git checkout (an unpacked archive): every file
    paths = [p for p in REPO.rglob("*") if p.is_file() and ".git" not in p.parts]
  return [p for p in paths if p.suffix in _TEXT_SUFFIXES and p.is_file()]


def _commands(text):
  """Every `python tools/X.py ...` or `python bench/X.py ...` command in a Markdown text, one string each.

  Code blocks are read line by line (backslash continuations joined, comments cut); inline code spans may wrap
  across lines in prose.
  """
  found = []
  for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
    for line in block.replace("\\\n", " ").splitlines():
      found += re.findall(r"python (?:tools|bench)/\w+\.py[^#\n]*", line)
  prose = re.sub(r"```.*?```", "", text, flags=re.S)
  for span in re.findall(r"`([^`]+)`", prose):
    found += re.findall(r"python (?:tools|bench)/\w+\.py.*", " ".join(span.split()))
  return [command.strip() for command in found]


# Imports every absl tool in one process (TensorFlow once, not once per tool) and prints the flag names each one
# accepts: the flags defined once the tool's module has run (as --helpfull lists them: its own, absl's and the help
# flags). A tool's own flags (its own and its project modules') are removed again before the next tool.
_FLAG_LISTER = textwrap.dedent("""
    import json, os, runpy, sys
    from absl import app, flags, logging
    import tensorflow, tensorflow_datasets, keras
    app.define_help_flags()
    repo, scripts = sys.argv[1], sys.argv[2:]
    result = {}
    for script in scripts:
      before = set(flags.FLAGS)
      sys.argv, path = [script], os.path.dirname(os.path.join(repo, script))
      sys.path.insert(0, path)  # as `python <script>` does: a tool may import its neighbours
      runpy.run_path(os.path.join(repo, script), run_name="flag_lister")
      sys.path.remove(path)
      result[script] = sorted(flags.FLAGS)
      defined = {name: flags.FLAGS.find_module_defining_flag(name) for name in set(flags.FLAGS) - before}
      ours = {module for module in defined.values()  # the tool and its project modules (a library's flags stay)
              if module == "flag_lister" or (getattr(sys.modules.get(module), "__file__", None) or "").startswith(
                  repo + os.sep)}
      for name, module in defined.items():
        if module in ours:
          delattr(flags.FLAGS, name)
      for module in ours:
        sys.modules.pop(module, None)  # imported again, so its flags defined again, by the next tool using it
    print("FLAGS " + json.dumps(result))
""")


def _flags_of(scripts):
  """{script: names of every flag it accepts}: absl programs' flags as they define them (see _FLAG_LISTER); the
  others take the flags their usage text names."""
  known, absl_scripts = {}, []
  for script in scripts:
    source = (REPO / script).read_text()
    if "from absl import" in source:
      absl_scripts.append(script)
    else:  # positional arguments only (bench/trial_table.py)
      usage = re.search(r'"""(.*?)"""', source, flags=re.S).group(1)
      known[script] = set(re.findall(r"--([A-Za-z0-9_]+)", usage)) | {"help"}
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
  proc = subprocess.run([sys.executable, "-c", _FLAG_LISTER, str(REPO), *absl_scripts], cwd=REPO,
                        capture_output=True, text=True, env=env, timeout=300)
  line = next((l for l in proc.stdout.splitlines() if l.startswith("FLAGS ")), None)
  assert line, f"the flag lister printed no flags:\n{proc.stdout[-500:]}{proc.stderr[-2000:]}"
  for script, names in json.loads(line[len("FLAGS "):]).items():
    assert "helpfull" in names and len(names) > 10, (script, names)
    known[script] = set(names)
  return known


def test_readme_is_a_short_user_guide():
  readme = (REPO / "README.md").read_text()
  assert len(readme.splitlines()) <= 200
  for heading in ("## Quickstart", "## Train", "## Evaluate", "## Export and serve", "## Shipped models",
                  "## Results", "## Documentation", "## Citation"):
    assert heading in readme
  # The Quickstart's two commands, the first one the main job.
  quickstart = readme.split("## Quickstart")[1].split("\n## ")[0]
  assert "bash install.sh && python tools/train.py --category=planes" in quickstart
  assert "bash install.sh && python -m pytest -q" in quickstart
  for page in (REPO / "docs").glob("*.md"):
    assert f"(docs/{page.name})" in readme, f"README.md's table of contents misses docs/{page.name}"


def test_no_file_points_outside_the_repository():
  offenders = [str(path.relative_to(REPO)) for path in _tracked_text_files()
               if path.name != "test_docs.py" and "../shared" in path.read_text(errors="replace")]
  assert not offenders, f"files referring to ../shared (not part of the repository): {offenders}"


def test_relative_links_in_the_docs_resolve():
  broken = []
  for page in DOCS:
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
      if re.match(r"[a-z]+://", target) or target.startswith("#"):
        continue
      if not (page.parent / target.split("#")[0]).exists():
        broken.append(f"{page.relative_to(REPO)}: {target}")
  assert not broken, broken


@pytest.mark.slow  # imports every tool in one process
def test_every_documented_tool_command_names_real_flags():
  commands = {}
  for page in DOCS:
    for command in _commands(page.read_text()):
      commands.setdefault(command.split()[1], []).append((page.name, command))
  assert {"tools/train.py", "tools/evaluate.py", "tools/predict.py", "tools/export.py"} <= set(commands)
  problems = [f"{script} does not exist ({uses[0][0]})" for script, uses in commands.items()
              if not (REPO / script).is_file()]
  scripts = sorted(script for script in commands if (REPO / script).is_file())
  flags_of = _flags_of(scripts)
  for script in scripts:
    known = flags_of[script]
    for page, command in commands[script]:
      for name in re.findall(r"(?:^|\s)--([A-Za-z0-9_]+)", command):
        if name not in known and not (name.startswith("no") and name[2:] in known):
          problems.append(f"{page}: `{command}`: {script} has no flag --{name}")
  assert not problems, "\n".join(problems)


@pytest.mark.slow  # a Python process
def test_readme_tables_match_the_stored_results():
  proc = subprocess.run([sys.executable, "tools/readme_tables.py", "--check"], cwd=REPO, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stdout + proc.stderr


def test_readme_tables_are_written_from_the_files(tmp_path, readme_tables):
  # The tool's tables against hand-written results: its numbers are the files', rounded as documented.
  tables = readme_tables
  config = {"dataset_config": "planes_small_x10", "steps": 8000, "batch_size": 32, "image_size": 32}
  run = {"config": config, "mean": 19.04, "median": 14.67, "3d_se": 0.1876, "das": 0.5656, "near_part": 0.2383,
         "over_90": 0.0156}
  results = tmp_path / "results.json"
  other = {**run, "mean": 21.0, "median": 9.96}
  results.write_text(__import__("json").dumps({"planes": {"runs": {
      "supervised baseline, seed 2": other, "supervised baseline": run, "KeypointNet, seed 1": other,
      "KeypointNet": run, "ablation: no_pose": run, "supervised baseline, seed 1": run}}}))
  table = tables.results_table(results).splitlines()
  budget = "`planes_small_x10`, 8,000 steps x 32 pairs, 32 px"
  assert table[2:] == [  # row d before row a, each followed by its other seeds in order; ablations left out
      f"| planes | KeypointNet | {budget} | 19.0 / 14.7 | 0.19 | 0.57 | 24% | 2% |",
      f"| planes | KeypointNet, seed 1 | {budget} | 21.0 / 10.0 | 0.19 | 0.57 | 24% | 2% |",
      f"| planes | supervised baseline | {budget} | 19.0 / 14.7 | 0.19 | 0.57 | 24% | 2% |",
      f"| planes | supervised baseline, seed 1 | {budget} | 19.0 / 14.7 | 0.19 | 0.57 | 24% | 2% |",
      f"| planes | supervised baseline, seed 2 | {budget} | 21.0 / 10.0 | 0.19 | 0.57 | 24% | 2% |"]
  text = "a\n<!-- table:results (tools/readme_tables.py) -->\nold\n<!-- end table:results -->\nb"
  assert tables.replace_table(text, "results", "new") == (
      "a\n<!-- table:results (tools/readme_tables.py) -->\nnew\n<!-- end table:results -->\nb")
  with pytest.raises(ValueError, match="markers"):
    tables.replace_table("no markers", "results", "new")


@pytest.mark.slow  # a Python process
def test_python_example_in_the_docs_runs(tmp_path):
  # docs/layout.md's example: a shipped model's keypoints for an image file.
  layout = (REPO / "docs" / "layout.md").read_text()
  example = next(block for block in re.findall(r"```python\n(.*?)```", layout, flags=re.S)
                 if "read_image" in block)
  shutil.copy(REPO / "docs" / "planes_test_pairs.png", tmp_path / "plane.png")
  script = example + "\nassert out['uvz'].shape == (1, config.model.num_keypoints, 3)\nprint('ok')\n"
  proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
