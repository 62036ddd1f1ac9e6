"""Image reading, keypoint drawing, and tools/predict.py end to end (folder with a corrupt file, turntable)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from keypointnet_tf import config as config_lib
from keypointnet_tf import geometry
from keypointnet_tf import prediction
from keypointnet_tf import training
from keypointnet_tf import visualization

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_read_image_rgb_jpeg_rgba_png_and_corrupt(tmp_path):
  rgb = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(tmp_path / "a.jpg")
  rgba = np.zeros((32, 32, 4), np.uint8)
  rgba[8:24, 8:24] = [255, 0, 0, 255]
  Image.fromarray(rgba).save(tmp_path / "b.png")
  (tmp_path / "c.png").write_bytes(b"garbage")
  image, size = prediction.read_image(str(tmp_path / "a.jpg"), 32)
  assert image.shape == (32, 32, 4) and size == (40, 60)
  np.testing.assert_allclose(image[..., 3], 1.0)  # JPEG: opaque
  image, size = prediction.read_image(str(tmp_path / "b.png"), 32)
  np.testing.assert_array_equal(image, rgba / 255.0)  # right size: untouched
  with pytest.raises(ValueError, match="c.png: not a readable PNG or JPEG image"):
    prediction.read_image(str(tmp_path / "c.png"), 32)
  assert [os.path.basename(p) for p in prediction.list_images(str(tmp_path))] == ["a.jpg", "b.png", "c.png"]


def test_draw_keypoints_colours_the_pixel_of_each_keypoint():
  grid = geometry.ndc_grid(16, 16).numpy()
  uv = np.stack([grid[3, 12], grid[10, 2]])  # pixel centres (row 3, col 12) and (row 10, col 2)
  picture = visualization.draw_keypoints(np.zeros((16, 16, 4)), uv, radius=1.0)
  colors = visualization.keypoint_colors(2)
  np.testing.assert_allclose(picture[3, 12], colors[0], atol=1e-6)
  np.testing.assert_allclose(picture[10, 2], colors[1], atol=1e-6)
  np.testing.assert_allclose(geometry.pixel_from_ndc(uv, 16, 16).numpy(), [[12, 3], [2, 10]], atol=1e-6)
  sheet = visualization.contact_sheet(np.zeros((5, 4, 6, 3)), columns=2)
  assert sheet.shape == (12, 12, 3)


@pytest.fixture(scope="module")
def tiny_run(tiny_planes, tmp_path_factory):
  data_dir, name = tiny_planes
  model_dir = str(tmp_path_factory.mktemp("run"))
  config = config_lib.TrainConfig(category="planes", data_dir=data_dir, dataset_config=name, model_dir=model_dir,
                                  steps=1, batch_size=2, image_size=32, log_every=1,
                                  model=config_lib.ModelConfig(num_keypoints=3, num_filters=4))
  training.train(config)
  return model_dir


def _predict(args, tmp_path):
  return subprocess.run([sys.executable, os.path.join(REPO, "tools", "predict.py"), *args], capture_output=True,
                        text=True, timeout=300, cwd=str(tmp_path))


def test_predict_folder_skips_unreadable_files(tiny_run, tmp_path):
  folder = tmp_path / "in"
  folder.mkdir()
  Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(folder / "odd.jpg")
  Image.fromarray(np.zeros((32, 32, 4), np.uint8)).save(folder / "fine.png")
  (folder / "broken.png").write_bytes(b"\x89PNG but not really")
  out = tmp_path / "out"
  proc = _predict([f"--model_dir={tiny_run}", f"--images={folder}", f"--output={out}"], tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "note:" in proc.stdout and "the network sees it at 32x32" in proc.stdout
  assert "skipped 1 unreadable file(s)" in proc.stdout and "broken.png" in proc.stdout
  assert sorted(os.listdir(out)) == ["contact_sheet.png", "fine.png", "odd.png"]
  # Readable sizes: each picture at least 128 px (the network's input is 32 px).
  with Image.open(out / "contact_sheet.png") as sheet:
    assert sheet.size == (2 * 128, 128)


def test_predict_turntable_writes_gif(tiny_run, tmp_path):
  out = tmp_path / "turn"
  proc = _predict([f"--model_dir={tiny_run}", "--turntable=0", "--frames=4", f"--output={out}"], tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  with Image.open(out / "turntable.gif") as gif:
    assert gif.n_frames == 4


def test_evaluate_tool_run_and_saved_model_agree(tiny_run, tiny_planes, tmp_path):
  data_dir, name = tiny_planes
  export = subprocess.run([sys.executable, os.path.join(REPO, "tools", "export.py"), f"--model_dir={tiny_run}",
                           f"--output={tmp_path / 'sm'}"], capture_output=True, text=True, timeout=300)
  assert export.returncode == 0, export.stderr[-2000:]
  proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "evaluate.py"),
                         f"--model_dirs={tiny_run},{tmp_path / 'sm'}", "--names=run,savedmodel",
                         "--category=planes", f"--dataset_config={name}", f"--data_dir={data_dir}",
                         f"--output={tmp_path / 'table'}"], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.splitlines()
  assert lines[0].startswith("| method | cars mean | cars median | cars 3D-SE | planes mean")
  assert any(line.startswith("| d) KeypointNet | 11.310 | 3.372 | 0.171 |") for line in lines)
  with open(tmp_path / "table.json") as f:
    runs = json.load(f)["runs"]
  assert runs["run"]["pairs"] == runs["savedmodel"]["pairs"] == 4  # 2 test models x 2 pairs
  # Same weights, same images, same protocol: the SavedModel path reproduces the checkpoint's numbers.
  np.testing.assert_allclose(runs["savedmodel"]["errors_deg"], runs["run"]["errors_deg"], atol=0.05)
