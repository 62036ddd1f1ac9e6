"""The reproduction driver: ablation configs, a tiny end-to-end reproduction, the report, resuming."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from keypointnet_tf import config as config_lib
from keypointnet_research import reproduction
from keypointnet_tf import runs as runs_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ablations_change_only_what_they_name():
  base = config_lib.cpu_preset("planes")
  w = base.loss.weights
  expected = {
      "no_consistency": dataclasses.replace(w, consistency=0.0),
      "no_pose": dataclasses.replace(w, pose=0.0),
      "no_silhouette": dataclasses.replace(w, silhouette=0.0, variance=0.0),
  }
  for name, weights in expected.items():
    variant = reproduction.ABLATIONS[name](base)
    assert variant.loss.weights == weights
    assert dataclasses.replace(variant, loss=base.loss) == base
  noisy = reproduction.ABLATIONS["more_noise"](base)
  assert noisy.loss.pose_noise_stddev == 2 * base.loss.pose_noise_stddev
  for n in (3, 5, 8, 10, 15, 20):
    variant = reproduction.ABLATIONS[f"keypoints_{n}"](base)
    assert variant.model.num_keypoints == n
    assert dataclasses.replace(variant, model=base.model) == base
  with pytest.raises(ValueError, match="Unknown ablation"):
    reproduction.check_ablations(["no_pose", "no_such_thing"])
  assert "no_anchor" not in reproduction.ABLATIONS  # the paper's losses alone are the "KeypointNet" row itself


def test_method_configs_share_one_budget(tmp_path, tiny_planes):
  data_dir, name = tiny_planes
  configs = reproduction.method_configs(_tiny_base(data_dir, name), str(tmp_path))
  assert list(configs) == ["KeypointNet", "KeypointNet + axis-anchor warm-up", "supervised baseline",
                           "supervised baseline with pretrained O-Net", "KeypointNet with pretrained O-Net"]
  label_free, anchored, supervised, supervised_onet, label_free_onet = configs.values()
  # Rows b and c: rows a and d with the KeypointNet run's orientation network frozen, nothing else changed.
  onet = os.path.join(str(tmp_path), "keypointnet")
  assert supervised_onet == dataclasses.replace(supervised, orientation_from=onet,
                                                model_dir=supervised_onet.model_dir)
  assert label_free_onet == dataclasses.replace(label_free, orientation_from=onet,
                                                model_dir=label_free_onet.model_dir)
  assert label_free.loss.weights.anchor == 0 and anchored.loss.weights.anchor == 1.0
  assert anchored.anchor_steps == 1  # half of the 3 steps
  assert {c.steps for c in configs.values()} == {3} and {c.batch_size for c in configs.values()} == {2}
  assert supervised.supervised and supervised.model.num_keypoints == 9
  # A preset that has its own anchor keeps it for the anchored row (planes: with the preset's silhouette warm-up,
  # which every row keeps, so the row names carry it).
  preset = config_lib.cpu_anchor_preset("planes")
  configs = reproduction.method_configs(dataclasses.replace(preset, data_dir=data_dir, dataset_config=name),
                                        str(tmp_path))
  variant = " (variant: silhouette_warmup_steps 4000)"
  assert list(configs)[:2] == [f"KeypointNet{variant}", f"KeypointNet + axis-anchor warm-up{variant}"]
  anchored = configs[f"KeypointNet + axis-anchor warm-up{variant}"]
  assert anchored.loss.weights.anchor == preset.loss.weights.anchor and anchored.anchor_steps == preset.anchor_steps


def _tiny_base(data_dir, name):
  return config_lib.TrainConfig(
      category="planes", data_dir=data_dir, dataset_config=name, steps=3, batch_size=2, image_size=32,
      model=config_lib.ModelConfig(num_keypoints=4, num_filters=4), anneal_start=1, anneal_end=2, log_every=3,
      checkpoint_every=3, image_summary_every=3)


def test_tiny_reproduction_writes_results_report_and_pictures(tiny_planes, tmp_path):
  data_dir, name = tiny_planes
  output, runs = str(tmp_path / "out"), str(tmp_path / "runs")
  entry = reproduction.reproduce(_tiny_base(data_dir, name), output, runs, ablations=["keypoints_3", "no_pose"],
                                 log=lambda _: None)
  anchored = "KeypointNet + axis-anchor warm-up"
  assert set(entry["runs"]) == {"KeypointNet", anchored, "supervised baseline", "ablation: keypoints_3",
                               "ablation: no_pose"}
  for method, run in entry["runs"].items():
    assert run["steps"] == 3 and run["pairs"] == 4  # 2 test models x 2 pairs
    assert 0.0 <= run["median"] <= 180.0 and run["3d_se"] >= 0.0
  # The baseline regresses the data's 9 ground-truth plane keypoints with the same budget.
  assert entry["runs"]["supervised baseline"]["config"]["supervised"]
  assert entry["runs"]["supervised baseline"]["config"]["model"]["num_keypoints"] == 9
  assert entry["runs"]["KeypointNet"]["config"]["loss"]["weights"]["anchor"] == 0.0
  assert entry["runs"][anchored]["config"]["loss"]["weights"]["anchor"] == 1.0
  for run in entry["runs"].values():
    assert 0.0 <= run["das"] <= 1.0 and 0.0 <= run["near_part"] <= 1.0
  assert entry["runs"]["ablation: keypoints_3"]["config"]["model"]["num_keypoints"] == 3
  with open(os.path.join(output, reproduction.RESULTS_FILE)) as f:
    assert json.load(f)["planes"]["runs"]["KeypointNet"]["mean"] == entry["runs"]["KeypointNet"]["mean"]
  assert set(entry["pictures"]) == {"KeypointNet", anchored, "supervised baseline", "ablation: keypoints_3",
                                   "ablation: no_pose"}
  for file in entry["pictures"].values():
    with Image.open(os.path.join(output, file)) as picture:
      assert picture.size == (4 * 128, 2 * 128)  # 4 pairs: view 0 above view 1, 128 px views

  os.makedirs(os.path.join(output, "deformation"))
  with open(os.path.join(output, "deformation", "README.md"), "w") as f:
    f.write("# Deformation test\n\n| planes | bend | 33.7 |\n")
  report = reproduction.write_report(output, str(tmp_path / "REPRODUCTION.md"), "python tools/reproduce.py ...")
  with open(report) as f:
    text = f.read()
  ours = entry["runs"]["KeypointNet"]
  assert f"{ours['mean']:.1f} | {ours['median']:.1f} | {ours['3d_se']:.2f}" in text  # the report's precision
  assert "seed N" not in text  # no other seeds, no sentence about them
  assert f"- planes, KeypointNet: `{ours['config']['dataset_config']}`, {ours['config']['steps']:,} steps x" in text
  # Tables first: ours, the paper's, the ablations, the sweep; budgets, pictures and commands after them.
  order = ["## Ours", "## The paper", "## Ablations", "## Number of keypoints", "## Deformation test",
           "## Budgets and notes", "## Pictures", "## Commands"]
  assert [text.index(heading) for heading in order] == sorted(text.index(heading) for heading in order)
  ours_section, paper_section = text.split("## The paper", 1)
  assert "| d) KeypointNet |" in paper_section and "| d) KeypointNet |" not in ours_section
  assert f"| {anchored} (procedural) |" in ours_section
  assert "| KeypointNet (procedural) |" in ours_section and "procedural" in text
  assert f"![planes, {anchored}](out/planes_keypointnet_anchor.png)" in text
  assert "![planes, KeypointNet](out/planes_keypointnet.png)" in text
  assert "![planes, ablation: keypoints_3](out/planes_ablation_keypoints_3.png)" in text  # the N sweep's pictures
  # The N sweep has its own table, ordered by N, with the KeypointNet row as its N = 4 (this test's N).
  ablations = text.split("## Ablations", 1)[1].split("\n## ", 1)[0]
  assert ablations.index("| planes | none | the KeypointNet row above | "
                         f"{ours['mean']:.1f} | {ours['median']:.1f} |") < ablations.index("| planes | no_pose |")
  assert "keypoints_3" not in ablations  # it belongs to the sweep
  sweep = text.split("## Number of keypoints", 1)[1].split("\n## ", 1)[0]
  three = entry["runs"]["ablation: keypoints_3"]
  assert sweep.index(f"| planes | 3 | ablation | {three['mean']:.1f} | {three['median']:.1f} |") < \
      sweep.index(f"| planes | 4 | KeypointNet row | {ours['mean']:.1f} | {ours['median']:.1f} |")
  # The deformation test's write-up is part of the report, without its own title.
  deformation = text.split("## Deformation test", 1)[1].split("\n## ", 1)[0]
  assert "| planes | bend | 33.7 |" in deformation and "# Deformation test" not in deformation

  # Running it again evaluates the finished runs without training them again.
  checkpoint_file = os.path.join(runs, "planes", "keypointnet", "checkpoints", "checkpoint")
  before = os.path.getmtime(checkpoint_file)
  again = reproduction.reproduce(_tiny_base(data_dir, name), output, runs, log=lambda _: None)
  assert again["runs"]["KeypointNet"]["mean"] == pytest.approx(ours["mean"])
  assert again["runs"]["KeypointNet"]["train_seconds"] == ours["train_seconds"] > 0  # kept from the real run
  assert "ablation: keypoints_3" in again["runs"]  # results of an earlier invocation are kept
  assert os.path.getmtime(checkpoint_file) == before

  # A run trained elsewhere (its directory is gone) whose stored result has the same configuration is kept, not
  # trained again; a different budget trains it anew.
  shutil.rmtree(os.path.join(runs, "planes", "supervised"))
  messages = []
  kept = reproduction.reproduce(_tiny_base(data_dir, name), output, runs, log=messages.append)
  assert kept["runs"]["supervised baseline"] == again["runs"]["supervised baseline"]
  assert not os.path.exists(os.path.join(runs, "planes", "supervised"))
  assert any("supervised baseline: kept the stored result" in m for m in messages)
  assert kept["pictures"] == again["pictures"]  # the picture of the run trained elsewhere is kept

  # One method at a new budget: the stored rows of the old budget go, so a category's rows share one budget.
  messages = []
  longer = dataclasses.replace(_tiny_base(data_dir, name), steps=4)
  fresh = reproduction.reproduce(longer, output, str(tmp_path / "runs4"), log=messages.append, methods=["keypointnet"],
                                 command="python tools/reproduce.py --methods=keypointnet")
  assert list(fresh["runs"]) == ["KeypointNet"] and fresh["runs"]["KeypointNet"]["steps"] == 4
  assert list(fresh["pictures"]) == ["KeypointNet"]
  assert any("supervised baseline: dropped the stored result of another budget" in m for m in messages)
  with pytest.raises(ValueError, match="Unknown method"):
    reproduction.reproduce(longer, output, runs, methods=["keypointnet", "fancy"])
  with pytest.raises(ValueError, match="add keypointnet to the methods"):
    reproduction.reproduce(longer, output, str(tmp_path / "runs5"), methods=["keypointnet_onet"])
  # Row c after row d: the frozen orientation network is the KeypointNet run's, weight for weight.
  onet_rows = reproduction.reproduce(longer, output, str(tmp_path / "runs4"), log=messages.append,
                                     methods=["keypointnet_onet"],
                                     command="python tools/reproduce.py --methods=keypointnet_onet")
  assert set(onet_rows["runs"]) == {"KeypointNet", "KeypointNet with pretrained O-Net"}
  source, _ = runs_lib.load_trained_model(str(tmp_path / "runs4" / "planes" / "keypointnet"))
  frozen, _ = runs_lib.load_trained_model(str(tmp_path / "runs4" / "planes" / "keypointnet_onet"))
  for a, b in zip(source.orientation_backbone.weights + source.orientation_head.weights,
                  frozen.orientation_backbone.weights + frozen.orientation_head.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  # Each run keeps the command that trained it, so the report lists both invocations, not only the last one.
  assert onet_rows["runs"]["KeypointNet"]["command"] == "python tools/reproduce.py --methods=keypointnet"
  with open(reproduction.write_report(output, str(tmp_path / "REPRODUCTION.md"), "")) as f:
    produced_by = f.read().split("## Commands", 1)[1].split("```", 2)[1]
  assert produced_by.split() == ["bash"] + "python tools/reproduce.py --methods=keypointnet".split() + \
      "python tools/reproduce.py --methods=keypointnet_onet".split()
  # Rows b and c on a machine without the KeypointNet run (its result is stored): it is trained again, not kept.
  messages = []
  again = reproduction.reproduce(longer, output, str(tmp_path / "runs5"), log=messages.append,
                                 methods=["keypointnet", "keypointnet_onet"])
  assert any("KeypointNet: its stored result has no run on this machine" in m for m in messages)
  assert os.path.exists(tmp_path / "runs5" / "planes" / "keypointnet" / "checkpoints" / "checkpoint")
  assert again["runs"]["KeypointNet with pretrained O-Net"]["steps"] == 4


def test_command_line_rejects_unknown_ablations():
  bad = subprocess.run([sys.executable, "tools/reproduce.py", "--ablations=no_such_thing"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and "Unknown ablation" in bad.stderr


def test_extra_seeds_repeat_rows_a_and_d(tiny_planes, tmp_path):
  data_dir, name = tiny_planes
  output, runs = str(tmp_path / "out"), str(tmp_path / "runs")
  base = _tiny_base(data_dir, name)
  configs = reproduction.method_configs(base, runs)
  seeded = reproduction.seeded_configs(configs, [1, 2])
  # Only the KeypointNet and supervised rows, each with its seed and its own folder, nothing else changed.
  assert list(seeded) == ["KeypointNet, seed 1", "supervised baseline, seed 1", "KeypointNet, seed 2",
                          "supervised baseline, seed 2"]
  assert seeded["KeypointNet, seed 2"] == dataclasses.replace(
      configs["KeypointNet"], seed=2, model_dir=os.path.join(runs, "keypointnet_seed2"))
  for bad in ([0], [1, 1]):
    with pytest.raises(ValueError, match="extra seeds must differ"):
      reproduction.seeded_configs(configs, bad)

  # Interrupted before its last row (here by the log; in life by a lost machine), it has stored the rows it
  # finished; the same call again completes it.
  class Interrupted(Exception):
    pass

  def interrupt_at_last_row(message):
    if "supervised baseline, seed 1: training" in message:
      raise Interrupted(message)

  with pytest.raises(Interrupted):
    reproduction.reproduce(base, output, runs, log=interrupt_at_last_row, methods=["keypointnet", "supervised"],
                           extra_seeds=[1])
  stored = reproduction.load_results(output)["planes"]["runs"]
  assert list(stored) == ["KeypointNet", "supervised baseline", "KeypointNet, seed 1"]
  assert all(0.0 <= run["median"] <= 180.0 and run["steps"] == 3 for run in stored.values())
  entry = reproduction.reproduce(base, output, runs, log=lambda _: None, methods=["keypointnet", "supervised"],
                                 extra_seeds=[1])
  assert set(entry["runs"]) == {"KeypointNet", "KeypointNet, seed 1", "supervised baseline",
                               "supervised baseline, seed 1"}
  assert entry["runs"]["KeypointNet, seed 1"]["config"]["seed"] == 1
  assert entry["runs"]["KeypointNet"]["config"]["seed"] == 0
  # Another seed trains other weights from the same data and budget.
  first, _ = runs_lib.load_trained_model(os.path.join(runs, "planes", "keypointnet"))
  second, _ = runs_lib.load_trained_model(os.path.join(runs, "planes", "keypointnet_seed1"))
  assert not np.allclose(first.weights[0].numpy(), second.weights[0].numpy())
  assert set(entry["pictures"]) == {"KeypointNet", "supervised baseline"}  # seeds add rows, not pictures
  with open(reproduction.write_report(output, str(tmp_path / "REPRODUCTION.md"), "")) as f:
    text = f.read()
  assert 'A row "<method>, seed N" is the same method and budget trained from another seed.' in text
  ours = text.split("## Ours", 1)[1].split("\n## ", 1)[0]
  rows = list(dict.fromkeys(line.split(" | ")[0] for line in ours.splitlines()  # both tables: the same order
                            if line.startswith("| ") and "(procedural)" in line))
  assert rows == ["| KeypointNet (procedural)", "| KeypointNet, seed 1 (procedural)",
                  "| supervised baseline (procedural)", "| supervised baseline, seed 1 (procedural)"]
  bad = subprocess.run([sys.executable, "tools/reproduce.py", "--extra_seeds=one"], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  assert bad.returncode == 2 and "--extra_seeds takes seeds as integers" in bad.stderr


def test_a_variant_preset_fills_its_methods_rows(tmp_path, readme_tables):
  # The planes preset's row d is "KeypointNet (variant: ...)": the report and the README table place it (and its
  # row c) where KeypointNet's rows go and measure the ablations and the N sweep against it. The stored results
  # with every row (an ablation and an N-sweep row among them) a copy of one stored label-free run (no training).
  with open(os.path.join(REPO, "reproduction", "results.json")) as f:
    planes = json.load(f)["planes"]
  stored = next(run for run in planes["runs"].values()
                if not run["config"]["supervised"] and run["config"]["model"]["num_keypoints"] == 10)
  variant = " (variant: silhouette_warmup_steps 4000)"
  fewer = json.loads(json.dumps(stored))
  fewer["config"]["model"]["num_keypoints"] = 8
  names = ["ablation: no_pose", f"KeypointNet{variant} with pretrained O-Net", "supervised baseline",
           f"KeypointNet{variant}, seed 1", "KeypointNet + axis-anchor warm-up", f"KeypointNet{variant}",
           "supervised baseline with pretrained O-Net"]  # out of order on purpose
  planes["runs"] = {**{name: stored for name in names}, "ablation: keypoints_8": fewer}
  planes["pictures"] = {}
  output = tmp_path / "out"
  output.mkdir()
  (output / reproduction.RESULTS_FILE).write_text(json.dumps({"planes": planes}))
  with open(reproduction.write_report(str(output), str(tmp_path / "REPRODUCTION.md"), "")) as f:
    text = f.read()
  ours = text.split("## Ours", 1)[1].split("\n## ", 1)[0]
  rows = list(dict.fromkeys(line.split(" | ")[0] for line in ours.splitlines()
                            if line.startswith("| ") and "(procedural)" in line))
  assert rows == [f"| KeypointNet{variant} (procedural)", f"| KeypointNet{variant}, seed 1 (procedural)",
                  "| KeypointNet + axis-anchor warm-up (procedural)", "| supervised baseline (procedural)",
                  "| supervised baseline with pretrained O-Net (procedural)",
                  f"| KeypointNet{variant} with pretrained O-Net (procedural)"]
  ablations = text.split("## Ablations", 1)[1].split("\n## ", 1)[0]
  assert ablations.index(f"| planes | none | the KeypointNet row above | {stored['mean']:.1f} |") < \
      ablations.index("| planes | no_pose |")
  sweep = text.split("## Number of keypoints", 1)[1].split("\n## ", 1)[0]
  assert sweep.index(f"| planes | 8 | ablation | {stored['mean']:.1f} |") < \
      sweep.index(f"| planes | 10 | KeypointNet row | {stored['mean']:.1f} |")
  # The README's results table: rows a-d by method, under their full names, each followed by its other seeds.
  table = readme_tables.results_table(output / reproduction.RESULTS_FILE)
  methods = [line.split(" | ")[1] for line in table.splitlines()[2:]]
  assert methods == [f"KeypointNet{variant}", f"KeypointNet{variant}, seed 1", "supervised baseline",
                     "KeypointNet + axis-anchor warm-up", "supervised baseline with pretrained O-Net",
                     f"KeypointNet{variant} with pretrained O-Net"]
