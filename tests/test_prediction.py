"""Image reading, keypoint drawing, and tools/predict.py end to end (folder with a corrupt file, turntable)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from keypointnet_datasets.shapenet_pairs import procedural
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
                         f"--output={tmp_path / 'table'}", "--per_keypoint"], capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.splitlines()
  assert lines[0].startswith("| method | cars mean | cars median | cars 3D-SE | planes mean")
  assert any(line.startswith("| d) KeypointNet | 11.310 | 3.372 | 0.171 |") for line in lines)
  with open(tmp_path / "table.json") as f:
    runs = json.load(f)["runs"]
  assert runs["run"]["pairs"] == runs["savedmodel"]["pairs"] == 4  # 2 test models x 2 pairs
  # Same weights, same images, same protocol: the SavedModel path reproduces the checkpoint's numbers.
  np.testing.assert_allclose(runs["savedmodel"]["errors_deg"], runs["run"]["errors_deg"], atol=0.05)
  # --per_keypoint: each run's keypoint and part tables, with the planes' part names, whose shares average to
  # the run's DAS halves.
  assert proc.stdout.count("| keypoint | nearest part in most views |") == 2
  found = runs["run"]["keypoint_parts"]
  assert len(found["keypoints"]) == 3 and len(found["parts"]) == len(procedural.KEYPOINT_NAMES["planes"])
  for k, kp in enumerate(found["keypoints"]):
    assert any(line.startswith(f"| {k} | {procedural.KEYPOINT_NAMES['planes'][kp['part']]} | ") for line in lines)
  assert np.mean([kp["share"] for kp in found["keypoints"]]) == pytest.approx(runs["run"]["das_forward"])


# ------------------------------------------------------------------------------------------------------------
# Shipped models (keypointnet_tf/pretrained, runs.write_pretrained, --model).
# ------------------------------------------------------------------------------------------------------------


def test_write_pretrained_keeps_the_weights_and_drops_the_optimizer(tiny_run, tmp_path):
  from keypointnet_tf import runs  # pylint: disable=g-import-not-at-top
  target = str(tmp_path / "pretrained" / "tiny")
  size = runs.write_pretrained(tiny_run, target, {"method": "KeypointNet"})
  net, config = runs.load_trained_model(tiny_run)
  shipped, shipped_config = runs.load_trained_model(target)
  assert len(net.weights) == len(shipped.weights)
  for a, b in zip(net.weights, shipped.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert shipped_config.model == config.model and shipped_config.model_dir == ""
  latest = os.path.basename(tf_latest(os.path.join(tiny_run, "checkpoints")))
  training_bytes = sum(os.path.getsize(os.path.join(tiny_run, "checkpoints", f))
                       for f in os.listdir(os.path.join(tiny_run, "checkpoints")) if f.startswith(latest + "."))
  assert size < training_bytes  # no optimizer state
  assert os.listdir(tmp_path / "pretrained") == ["tiny"]  # nothing half-written left beside it
  with open(os.path.join(target, "pretrained.json")) as f:
    assert json.load(f)["step"] == 1
  with pytest.raises(runs.RunError, match="exactly one of --model_dir"):
    runs.chosen_run(None, None)
  with pytest.raises(runs.RunError, match="No shipped model 'nope'"):
    runs.chosen_run(None, "nope")


def test_write_pretrained_ships_a_chosen_checkpoint(tiny_run, tmp_path):
  # An earlier checkpoint of the run (here: the latest weights plus 1, saved as step 7 outside the run) is shipped
  # instead of the latest when named (here by its .index file, which names its prefix); a missing one is refused.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from keypointnet_tf import runs  # pylint: disable=g-import-not-at-top
  net, _ = runs.load_trained_model(tiny_run)
  for weight in net.weights:
    weight.assign(weight + 1.0)
  prefix = tf.train.CheckpointManager(tf.train.Checkpoint(model=net), str(tmp_path / "milestones"),
                                      max_to_keep=1).save(checkpoint_number=7)
  target = str(tmp_path / "pretrained" / "tiny")
  runs.write_pretrained(tiny_run, target, {"method": "KeypointNet"}, checkpoint=prefix + ".index")
  shipped, _ = runs.load_trained_model(target)
  latest, _ = runs.load_trained_model(tiny_run)
  for a, b, c in zip(net.weights, shipped.weights, latest.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(b.numpy(), c.numpy() + np.float32(1.0))
  with open(os.path.join(target, "pretrained.json")) as f:
    assert json.load(f)["step"] == 7
  with pytest.raises(FileNotFoundError, match="ckpt-8.index does not exist"):
    runs.write_pretrained(tiny_run, target, {}, checkpoint=str(tmp_path / "milestones" / "ckpt-8"))
  with open(os.path.join(target, "pretrained.json")) as f:
    assert json.load(f)["step"] == 7  # refused before the shipped model was touched


def tf_latest(folder):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.train.latest_checkpoint(folder)


def test_shipped_models_find_the_pose_of_held_out_objects(tmp_path):
  # Each shipped model, on 8 test objects of its category (planes_small_x10's test split, objects 220-227, from the
  # generator its data came from) exported as PLY files and rendered from new cameras through the user-mesh path;
  # chance is ~90 degrees.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from keypointnet_datasets.shapenet_pairs import procedural  # pylint: disable=g-import-not-at-top
  from keypointnet_datasets.shapenet_pairs import shapenet_pairs_dataset_builder as builder_lib  # pylint: disable=g-import-not-at-top
  from keypointnet_tf import evaluation  # pylint: disable=g-import-not-at-top
  from keypointnet_tf import input_pipeline  # pylint: disable=g-import-not-at-top
  from keypointnet_tf import runs  # pylint: disable=g-import-not-at-top
  names = runs.pretrained_models()
  assert "planes" in names
  for name in names:
    with open(os.path.join(runs.pretrained_dir(name), "pretrained.json")) as f:
      info = json.load(f)
    # Label-free: the paper's losses, or a named variant of their schedule (the planes preset's warm-up).
    assert config_lib.method_base(info["method"]) == "KeypointNet" and info["category"] == name
    net, config = runs.load_trained_model(runs.pretrained_dir(name))
    meshes = tmp_path / name
    meshes.mkdir()
    for index in range(220, 228):
      procedural.generate(name, index, builder_lib.generator_of(config.dataset_config)).mesh.export(
          meshes / f"{index}.ply")
    (meshes / "splits").mkdir()
    (meshes / "splits" / "test.txt").write_text("".join(f"{i}.ply\n" for i in range(220, 228)))
    data_dir = tmp_path / "data"
    builder_lib.Builder(config=builder_lib.ShapenetPairsConfig(
        name=f"held_out_{name}", mesh_dir=str(meshes), image_size=64, pairs_per_model=4,
        scale=procedural.CATEGORY_SCALE[name]), data_dir=data_dir).download_and_prepare()
    dataset = input_pipeline.make_dataset(input_pipeline.find_tfds_dir(data_dir, f"held_out_{name}"), "test", 8,
                                          image_size=config.image_size, shuffle=False, repeat=False,
                                          deterministic=True, drop_remainder=False)
    predict = tf.function(lambda images: net(images, training=False))
    row = evaluation.evaluate(predict, dataset)
    assert row["pairs"] == 32
    assert row["median"] < 35.0, (name, row["median"], info["test"])


@pytest.mark.slow  # runs tools/predict.py in a process
def test_predict_with_a_shipped_model_in_one_command(tmp_path):
  from keypointnet_tf import runs  # pylint: disable=g-import-not-at-top
  folder = tmp_path / "photos"
  folder.mkdir()
  Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(folder / "mine.png")
  out = tmp_path / "out"
  proc = _predict(["--model=planes", f"--images={folder}", f"--output={out}"], tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(os.path.join(runs.pretrained_dir("planes"), "pretrained.json")) as f:
    method = json.load(f)["method"]  # the run's method name, a named variant included
  assert f"Keypoints of {method} ({runs.pretrained_dir('planes')})" in proc.stdout
  assert sorted(os.listdir(out)) == ["contact_sheet.png", "mine.png"]
  bad = _predict(["--model=planes", "--model_dir=runs/x", f"--images={folder}"], tmp_path)
  assert bad.returncode == 2 and "exactly one of --model_dir" in bad.stderr
