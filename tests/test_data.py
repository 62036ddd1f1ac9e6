"""Data across modules: the library never imports the builder; your own meshes from build to evaluation."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from keypointnet_datasets.shapenet_pairs import shapenet_pairs_dataset_builder as builder_lib
from keypointnet_tf import evaluation
from keypointnet_tf import input_pipeline
import helpers  # pylint: disable=g-bad-import-order  (tests/helpers.py)


def test_library_imports_no_dataset_builder_or_renderer():
  code = ("import sys, pkgutil, importlib, keypointnet_tf\n"
          "for m in pkgutil.iter_modules(keypointnet_tf.__path__): importlib.import_module('keypointnet_tf.' + m.name)\n"
          "print(sorted(n for n in sys.modules if n.startswith(('keypointnet_datasets', 'pyrender', 'OpenGL'))))")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip().splitlines()[-1] == "[]"
  # Not even lazily, inside a function: the tools pass keypointnet_datasets.shapenet_pairs.build to the library.
  library = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "keypointnet_tf")
  for name in os.listdir(library):
    if name.endswith(".py"):
      with open(os.path.join(library, name)) as f:
        assert "keypointnet_datasets" not in f.read(), name


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_user_meshes_build_train_and_evaluate_without_a_category(tmp_path):
  from keypointnet_datasets.shapenet_pairs import meshes  # pylint: disable=g-import-not-at-top
  mesh_dir = tmp_path / "arrows"
  arrows = helpers.user_mesh_dir(mesh_dir)
  by_split = builder_lib.find_user_meshes(mesh_dir)
  listed = {"shelf/arrow1.ply": "test", "box/inner/arrow2.stl": "test", "shelf/arrow3.off": "validation"}
  every = sorted(set(arrows) | {"box/broken.obj", "shelf/empty.ply"})  # notes.txt and splits/ are not meshes
  # The split lists decide where they name a file, a stable hash of the relative path elsewhere.
  expected = {split: [p for p in every if (listed.get(p) or builder_lib._hash_split(p)) == split]  # pylint: disable=protected-access
              for split in builder_lib.SPLITS}
  assert by_split == expected
  assert builder_lib.find_user_meshes(mesh_dir) == by_split
  assert by_split["test"] == ["box/inner/arrow2.stl", "shelf/arrow1.ply"]
  # The front axis: each arrow's nose (along +Z in its file) comes out as the +X end, on the axis (up stays +Y).
  for relative, arrow in arrows.items():
    loaded = meshes.load({"kind": "file", "path": str(mesh_dir / relative), "front": "+z", "up": "+y"})
    tip = loaded.mesh.bounds[1][0]
    assert tip == pytest.approx(1.0, abs=1e-6) and loaded.keypoints.shape == (0, 3)
    nose = loaded.mesh.vertices[np.argmax(loaded.mesh.vertices[:, 0])]
    assert abs(nose[1]) < 1e-5 and abs(nose[2]) < 1e-5, relative
  with pytest.raises(ValueError, match="perpendicular"):
    meshes.axes_to_object_frame("+z", "-z")

  # The README's commands: tfds build with a JSON config, then train and evaluate with no fixed category.
  data_dir = tmp_path / "data"
  config = ('{"name": "arrows", "mesh_dir": "%s", "image_size": 32, "pairs_per_model": 2, "front_axis": "+z"}'
            % mesh_dir)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  build = subprocess.run(["tfds", "build", os.path.join(REPO, "datasets", "shapenet_pairs"), f"--data_dir={data_dir}",
                          f"--config={config}"], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
  assert build.returncode == 0, build.stderr[-3000:]
  log = build.stdout + build.stderr
  assert "skipping box/broken.obj" in log and "skipping shelf/empty.ply" in log  # reported by name
  built = tfds.builder_from_directory(input_pipeline.find_tfds_dir(data_dir, "arrows"))
  for split in ("train", "test"):  # two pairs per readable mesh; the corrupt and the empty file are left out
    assert built.info.splits[split].num_examples == 2 * len([p for p in by_split[split] if p in arrows])
  example = next(iter(tfds.as_numpy(built.as_dataset(split="test"))))
  assert example["model_id"].decode() in by_split["test"] and example["keypoints"].shape == (0, 3)
  assert example["img0"][..., 3].any()

  train = subprocess.run([sys.executable, os.path.join(REPO, "tools", "train.py"), "--dataset_config=arrows",
                          f"--data_dir={data_dir}", f"--model_dir={tmp_path / 'run'}", "--steps=2", "--batch_size=2",
                          "--num_filters=4", "--num_keypoints=4", "--validate_every=2", "--log_every=1"],
                         capture_output=True, text=True, timeout=300, env=env)
  assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-3000:]
  assert "Training KeypointNet on arrows with the CPU preset" in train.stdout
  assert "'status': 'done'" in train.stdout
  row, category = evaluation.evaluate_run(str(tmp_path / "run"), "test")
  assert category == "arrows" and row["pairs"] == 4 and np.isfinite(row["median"])
  assert "das" not in row and "near_part" not in row  # no ground-truth parts on the user's meshes
  assert 0 <= row["flag_accuracy"] <= 1
  # The same meshes with random appearance: the same masks and cameras, backgrounds in RGB; the run evaluates on it.
  random_config = config.replace('"name": "arrows"', '"name": "arrows_random", "appearance": "random"')
  build = subprocess.run(["tfds", "build", os.path.join(REPO, "datasets", "shapenet_pairs"), f"--data_dir={data_dir}",
                          f"--config={random_config}"], capture_output=True, text=True, timeout=300, env=env,
                         cwd=tmp_path)
  assert build.returncode == 0, build.stderr[-3000:]
  plain, randomised = ({e["model_id"].decode() + e["mv0"].tobytes().hex(): e for e in tfds.as_numpy(
      tfds.builder_from_directory(input_pipeline.find_tfds_dir(data_dir, name)).as_dataset(split="test"))}
                       for name in ("arrows", "arrows_random"))
  assert plain.keys() == randomised.keys()
  for key, example in plain.items():
    np.testing.assert_array_equal(example["img0"][..., 3], randomised[key]["img0"][..., 3])
    assert np.any(randomised[key]["img0"][..., :3][example["img0"][..., 3] == 0] > 0)
  other, _ = evaluation.evaluate_run(str(tmp_path / "run"), "test", dataset_config="arrows_random")
  assert other["pairs"] == 4 and other["errors"].tolist() != row["errors"].tolist()
  # The reproduction trains KeypointNet, the anchored variant and row c on it; there is nothing for a supervised
  # baseline (rows a and b).
  from keypointnet_tf import config as config_lib  # pylint: disable=g-import-not-at-top
  from keypointnet_research import reproduction  # pylint: disable=g-import-not-at-top
  base = dataclasses.replace(config_lib.cpu_preset("arrows"), data_dir=str(data_dir))
  assert base.dataset_config == "arrows"
  assert list(reproduction.method_configs(base, str(tmp_path / "reproduce"))) == [
      "KeypointNet", "KeypointNet + axis-anchor warm-up", "KeypointNet with pretrained O-Net"]
