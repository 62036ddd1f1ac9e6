"""input_pipeline: the released TFRecords and built data sets as decoded, batched pairs."""

import os

import numpy as np
import pytest
import tensorflow as tf

from keypointnet_datasets.shapenet_pairs import shapenet_pairs_dataset_builder as builder_lib
from keypointnet_tf import evaluation
from keypointnet_tf import geometry
from keypointnet_tf import input_pipeline
import helpers  # pylint: disable=g-bad-import-order  (tests/helpers.py)

FOCAL = geometry.focal_from_fov(5.0)


def _png(rng, size=16):
  return tf.io.encode_png(rng.integers(0, 256, (size, size, 4), dtype=np.uint8)).numpy()


def _write_released(folder, rng):
  """A tiny data set in the released *_with_keypoints.zip layout: 4 shards x 2 objects x 3 pairs."""
  folder.mkdir()
  written = {}
  jobs = ["tfrecord,id,num,args"]
  for shard in range(4):
    name = f"{shard:04d}"
    with tf.io.TFRecordWriter(str(folder / f"{name}.tfrecord")) as writer:
      for obj in range(2):
        jobs.append(f"{name}.tfrecord,obj{shard}{obj},3,")
        for _ in range(3):
          mv = helpers.random_cameras(rng, 2)
          feats = {"img0": _png(rng), "img1": _png(rng), "mv0": mv[0].ravel(), "mv1": mv[1].ravel(),
                   "mvi0": np.linalg.inv(mv[0]).ravel(), "mvi1": np.linalg.inv(mv[1]).ravel()}
          example = tf.train.Example(features=tf.train.Features(feature={
              k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v])) if isinstance(v, bytes) else
              tf.train.Feature(float_list=tf.train.FloatList(value=v)) for k, v in feats.items()}))
          writer.write(example.SerializeToString())
          written.setdefault(name, []).append((f"obj{shard}{obj}", feats))
  (folder / "dev.txt").write_text("0002\n")
  (folder / "test.txt").write_text("0003\n")
  (folder / "train.txt").write_text("0000\n")  # ignored, as by the released code
  (folder / "job.txt").write_text("\n".join(jobs) + "\n")
  (folder / "projection.txt").write_text(f"{FOCAL} 0 0 0\n0 {FOCAL} 0 0\n0 0 -1.002 -0.2002\n0 0 -1 0\n")
  return written


def test_released_reader_returns_written_tensors(tmp_path):
  written = _write_released(tmp_path / "planes", np.random.default_rng(0))
  source = tmp_path / "planes"
  assert input_pipeline.is_released_dir(source)
  assert [os.path.basename(s) for s in input_pipeline.released_shards(source, "train")] == ["0000.tfrecord",
                                                                                             "0001.tfrecord"]
  ds = input_pipeline.make_dataset(source, "train", batch_size=None, shuffle=False, repeat=False,
                                   deterministic=True)
  elements = list(ds.as_numpy_iterator())
  # Unshuffled, the two train shards are read round-robin.
  expected = [item for pair in zip(written["0000"], written["0001"]) for item in pair]
  assert len(elements) == len(expected) == 12
  for element, (model_id, feats) in zip(elements, expected):
    assert element["model_id"].decode() == model_id
    np.testing.assert_allclose(element["image0"], tf.io.decode_png(feats["img0"]).numpy() / 255.0, atol=1e-7)
    np.testing.assert_allclose(element["mv0"], feats["mv0"].reshape(4, 4), rtol=1e-6)
    np.testing.assert_allclose(element["mvi1"], feats["mvi1"].reshape(4, 4), rtol=1e-6)
    assert element["focal"] == pytest.approx(FOCAL)
    assert element["keypoints"].shape == (0, 3)
    assert element["orientation_flag0"] == float(feats["mv0"][0] > 0)
    np.testing.assert_allclose(element["relative_rotation"],
                               (feats["mv1"].reshape(4, 4) @ feats["mvi0"].reshape(4, 4))[:3, :3], atol=1e-5)
  test_ids = {e["model_id"] for e in input_pipeline.make_dataset(
      source, "test", None, shuffle=False, repeat=False).as_numpy_iterator()}
  assert test_ids == {b"obj30", b"obj31"}


def test_released_projection_reads_both_focal_lengths(tmp_path):
  # The released code unprojects y with P[1, 1]: both entries are read, and non-square pixels are refused.
  (tmp_path / "projection.txt").write_text(f"{FOCAL} 0 0 0\n0 {FOCAL} 0 0\n0 0 -1.002 -0.2002\n0 0 -1 0\n")
  assert input_pipeline.read_projection(tmp_path) == pytest.approx(FOCAL)
  (tmp_path / "projection.txt").write_text(f"{FOCAL} 0 0 0\n0 {FOCAL * 1.5} 0 0\n0 0 -1.002 -0.2002\n0 0 -1 0\n")
  with pytest.raises(ValueError, match=r"P\[1, 1\] = .*square pixels"):
    input_pipeline.read_projection(tmp_path)


def test_pipeline_on_built_dataset_shapes_resize_determinism_and_mixing(tmp_path):
  builder = builder_lib.Builder(config=helpers.tiny_config(name="tiny_pipe", num_models=(6, 1, 1), pairs_per_model=4),
                                data_dir=tmp_path)
  builder.download_and_prepare()
  source = input_pipeline.find_tfds_dir(tmp_path, "tiny_pipe")
  ds = input_pipeline.make_dataset(source, "train", batch_size=8, image_size=16, seed=3, deterministic=True)
  batches = [b for b in ds.take(3).as_numpy_iterator()]
  again = [b for b in input_pipeline.make_dataset(source, "train", batch_size=8, image_size=16, seed=3,
                                                  deterministic=True).take(3).as_numpy_iterator()]
  for a, b in zip(batches, again):
    np.testing.assert_array_equal(a["image0"], b["image0"])
  batch = batches[0]
  assert batch["image0"].shape == (8, 16, 16, 4) and batch["keypoints"].shape == (8, 9, 3)
  assert 0.0 <= batch["image0"].min() and batch["image0"].max() <= 1.0
  np.testing.assert_array_equal(batch["orientation_flag1"], (batch["mv1"][:, 0, 0] > 0).astype(np.float32))
  assert len(set(batch["model_id"])) >= 4  # 8 pairs drawn from at least 4 of the 6 objects
  with pytest.raises(FileNotFoundError, match="tfds build datasets/shapenet_pairs --config=missing"):
    input_pipeline.find_tfds_dir(tmp_path, "missing")
  with pytest.raises(FileNotFoundError, match="neither a built TFDS dataset"):
    input_pipeline.make_dataset(tmp_path, "train", 8)


def test_released_data_without_job_txt_refuses_3d_se(tmp_path):
  _write_released(tmp_path / "planes", np.random.default_rng(0))
  source = tmp_path / "planes"
  (source / "job.txt").unlink()  # shards of ~40 objects each, and nothing says which views show which object
  dataset = input_pipeline.make_dataset(source, "test", 2, shuffle=False, repeat=False, deterministic=True)
  rng = np.random.default_rng(1)
  row = evaluation.evaluate(lambda images: {"uvz": tf.constant(
      rng.normal(size=(images.shape[0], 5, 3)) + [0, 0, -30], tf.float32)}, dataset)
  assert row["pairs"] == 6 and np.isfinite(row["mean"])
  assert np.isnan(row["3d_se"]) and "job.txt" in row["3d_se_note"]
  with pytest.raises(ValueError, match="3D-SE not computed"):
    evaluation.standard_error_3d([b"", b""], np.zeros((2, 5, 3)))
