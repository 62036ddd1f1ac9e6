"""The reproduction driver: ablation configs, a tiny end-to-end reproduction, the report, resuming."""

import dataclasses
import json
import os
import subprocess
import sys

from PIL import Image
import pytest

from keypointnet_tf import config as config_lib
from keypointnet_tf import reproduction

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ablations_change_only_what_they_name():
  base = config_lib.cpu_preset("planes")
  w = base.loss.weights
  expected = {
      "no_consistency": dataclasses.replace(w, consistency=0.0),
      "no_pose": dataclasses.replace(w, pose=0.0),
      "no_silhouette": dataclasses.replace(w, silhouette=0.0, variance=0.0),
      "no_anchor": dataclasses.replace(w, anchor=0.0),
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


def _tiny_base(data_dir, name):
  return config_lib.TrainConfig(
      category="planes", data_dir=data_dir, dataset_config=name, steps=3, batch_size=2, image_size=32,
      model=config_lib.ModelConfig(num_keypoints=4, num_filters=4), anneal_start=1, anneal_end=2, log_every=3,
      checkpoint_every=3, image_summary_every=3)


def test_tiny_reproduction_writes_results_report_and_pictures(tiny_planes, tmp_path):
  data_dir, name = tiny_planes
  output, runs = str(tmp_path / "out"), str(tmp_path / "runs")
  entry = reproduction.reproduce(_tiny_base(data_dir, name), output, runs, ablations=["keypoints_3"],
                                 log=lambda _: None)
  assert set(entry["runs"]) == {"KeypointNet", "supervised", "ablation: keypoints_3"}
  for method, run in entry["runs"].items():
    assert run["steps"] == 3 and run["pairs"] == 4  # 2 test models x 2 pairs
    assert 0.0 <= run["median"] <= 180.0 and run["3d_se"] >= 0.0
  # The baseline regresses the data's 9 ground-truth plane keypoints with the same budget.
  assert entry["runs"]["supervised"]["config"]["supervised"]
  assert entry["runs"]["supervised"]["config"]["model"]["num_keypoints"] == 9
  assert entry["runs"]["ablation: keypoints_3"]["config"]["model"]["num_keypoints"] == 3
  with open(os.path.join(output, reproduction.RESULTS_FILE)) as f:
    assert json.load(f)["planes"]["runs"]["KeypointNet"]["mean"] == entry["runs"]["KeypointNet"]["mean"]
  with Image.open(os.path.join(output, entry["picture"])) as picture:
    assert picture.size == (4 * 128, 4 * 128)  # 4 pairs: 2 rows (view 0, view 1) per run, 128 px views

  report = reproduction.write_report(output, str(tmp_path / "REPRODUCTION.md"), "python tools/reproduce.py ...")
  with open(report) as f:
    text = f.read()
  ours = entry["runs"]["KeypointNet"]
  assert f"{ours['mean']:.3f} | {ours['median']:.3f} | {ours['3d_se']:.3f}" in text
  assert "| paper: d) KeypointNet |" in text and "procedural" in text
  assert "| planes | keypoints_3 | N = 3 keypoints |" in text
  assert "](out/planes_predictions.png)" in text

  # Running it again evaluates the finished runs without training them again.
  checkpoint_file = os.path.join(runs, "planes", "keypointnet", "checkpoints", "checkpoint")
  before = os.path.getmtime(checkpoint_file)
  again = reproduction.reproduce(_tiny_base(data_dir, name), output, runs, log=lambda _: None)
  assert again["runs"]["KeypointNet"]["mean"] == pytest.approx(ours["mean"])
  assert again["runs"]["KeypointNet"]["train_seconds"] == ours["train_seconds"] > 0  # kept from the real run
  assert "ablation: keypoints_3" in again["runs"]  # results of an earlier invocation are kept
  assert os.path.getmtime(checkpoint_file) == before


def test_command_line_rejects_unknown_ablations():
  bad = subprocess.run([sys.executable, "tools/reproduce.py", "--ablations=no_such_thing"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and "Unknown ablation" in bad.stderr
