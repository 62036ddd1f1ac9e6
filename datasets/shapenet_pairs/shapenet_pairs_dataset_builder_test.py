"""The shapenet_pairs builder: tfds.testing on dummy_data (a tiny fake ShapeNetCore.v2 folder), determinism and
splits, ShapeNet frames and annotations, your own meshes, bad input, Apache Beam."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
import trimesh

from keypointnet_datasets.shapenet_pairs import shapenet_pairs_dataset_builder
from keypointnet_datasets.shapenet_pairs import shapenet_pairs_dataset_builder as builder_lib
from keypointnet_tf import evaluation
from keypointnet_tf import geometry
import helpers  # pylint: disable=g-bad-import-order  (tests/helpers.py)


@pytest.mark.slow  # builds cars_small from dummy_data with rendering workers
class ShapenetPairsTest(tfds.testing.DatasetBuilderTestCase):
  """Builds cars_small from dummy_data (3 / 2 / 2 models listed in dummy_data/splits, 8 pairs each)."""
  DATASET_CLASS = shapenet_pairs_dataset_builder.Builder
  BUILDER_CONFIG_NAMES_TO_TEST = ["cars_small"]
  SPLITS = {"train": 24, "validation": 16, "test": 16}
  SKIP_CHECKSUMS = True

  def test_content(self):
    builder = self.DATASET_CLASS(data_dir=self.tmp_dir, config="cars_small")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=self.dummy_data))
    ids = {}
    for split in ("train", "validation", "test"):
      examples = list(tfds.as_numpy(builder.as_dataset(split=split)))
      ids[split] = {e["model_id"] for e in examples}
      for e in examples:
        self.assertEqual(e["img0"].shape, (64, 64, 4))
        self.assertGreater(int((e["img0"][..., 3] > 0).sum()), 20)  # the object is in view
        np.testing.assert_allclose(e["mv0"] @ e["mvi0"], np.eye(4), atol=1e-4)
        np.testing.assert_allclose(e["mv1"] @ e["mvi1"], np.eye(4), atol=1e-4)
        self.assertEqual(e["keypoints"].shape, (0, 3))  # ShapeNet has no ground-truth keypoints
    self.assertEqual(ids["train"], {b"dummy_train_a", b"dummy_train_b", b"dummy_train_c"})
    self.assertFalse(ids["train"] & ids["validation"] or ids["train"] & ids["test"] or
                     ids["validation"] & ids["test"])


if __name__ == "__main__":
  tfds.testing.test_main()


FOCAL = geometry.focal_from_fov(5.0)


def _examples(builder, split):
  return {e["model_id"].decode() + f"/{i}": e for i, e in enumerate(tfds.as_numpy(
      builder.as_dataset(split=split, shuffle_files=False, read_config=tfds.ReadConfig(add_tfds_id=False))))}


def test_procedural_builds_are_deterministic_with_disjoint_splits(tmp_path):
  builds = []
  for name in ("a", "b"):
    builder = builder_lib.Builder(config=helpers.tiny_config(), data_dir=tmp_path / name)
    builder.download_and_prepare()
    builds.append(builder)
  ids = {}
  for split, models in zip(("train", "validation", "test"), (3, 1, 2)):
    first, second = _examples(builds[0], split), _examples(builds[1], split)
    assert len(first) == models * 2
    ids[split] = {e["model_id"] for e in first.values()}
    assert len(ids[split]) == models
    for a, b in zip(sorted(first.items(), key=lambda kv: (kv[1]["model_id"], kv[1]["mv0"].tobytes())),
                    sorted(second.items(), key=lambda kv: (kv[1]["model_id"], kv[1]["mv0"].tobytes()))):
      for key in ("img0", "img1", "mv0", "mv1", "keypoints"):
        np.testing.assert_array_equal(a[1][key], b[1][key])
    example = next(iter(first.values()))
    assert example["keypoints"].shape == (9, 3) and example["keypoint_valid"].all()
    assert example["focal"] == pytest.approx(FOCAL, rel=1e-6)
  assert not (ids["train"] & ids["validation"] or ids["train"] & ids["test"] or ids["validation"] & ids["test"])


def test_extra_training_objects_keep_the_other_splits():
  """extra_train_models adds objects after every split's range: train grows, validation and test stay the same."""
  plain = builder_lib.procedural_indices((3, 1, 2))
  assert plain == {"train": [0, 1, 2], "validation": [3], "test": [4, 5]}
  more = builder_lib.procedural_indices((3, 1, 2), extra_train_models=4)
  assert more == {"train": [0, 1, 2, 6, 7, 8, 9], "validation": [3], "test": [4, 5]}
  with pytest.raises(ValueError, match="must be >= 0"):
    builder_lib.procedural_indices((3, 1, 2), extra_train_models=-1)
  # The named x10 configs are their _small configs with 1,800 more training objects.
  configs = {c.name: c for c in builder_lib.Builder.BUILDER_CONFIGS}
  for category in ("cars", "planes", "chairs"):
    small, x10 = configs[f"{category}_small"], configs[f"{category}_small_x10"]
    assert (x10.image_size, x10.pairs_per_model, x10.num_models) == (small.image_size, small.pairs_per_model,
                                                                      small.num_models)
    assert x10.extra_train_models == 1800 and small.extra_train_models == 0


def _write_obj(path, vertices, faces):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(f"v {x} {y} {z}\n" for x, y, z in vertices) +
                  "".join(f"f {a + 1} {b + 1} {c + 1}\n" for a, b, c in faces))


def test_corrupt_shapenet_mesh_is_skipped_and_reported(tmp_path, capsys):
  manual = tmp_path / "manual"
  box = trimesh.creation.box(extents=[2.0, 0.6, 1.0])
  for model_id in ("good1", "good2", "broken"):
    obj = manual / "02691156" / model_id / "models" / "model_normalized.obj"
    if model_id == "broken":
      obj.parent.mkdir(parents=True)
      obj.write_text("this is not an OBJ file\nf 1 2 3\n")
    else:
      _write_obj(obj, box.vertices, box.faces)
  (manual / "splits" / "02691156").mkdir(parents=True)
  (manual / "splits" / "02691156" / "train.txt").write_text("good1\nbroken\n")
  (manual / "splits" / "02691156" / "test.txt").write_text("good2\n")
  builder = builder_lib.Builder(config=helpers.tiny_config(name="tiny_shapenet"), data_dir=tmp_path / "data")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
  assert builder.info.splits["train"].num_examples == 2  # good1's two pairs; broken skipped
  assert builder.info.splits["test"].num_examples == 2
  assert "skipped 1 that failed to load or render: broken" in capsys.readouterr().out


def test_manual_dir_without_category_gives_clear_error(tmp_path):
  manual = tmp_path / "manual"
  (manual / "something_else").mkdir(parents=True)
  builder = builder_lib.Builder(config=helpers.tiny_config(name="tiny_missing"), data_dir=tmp_path / "data")
  with pytest.raises(FileNotFoundError, match="02691156/<model_id>/models/model_normalized.obj"):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))


def test_beam_direct_runner_with_two_workers_gives_the_same_examples(tmp_path):
  # FnApiRunner is the DirectRunner's local engine; naming it skips the DirectRunner's attempt to download its
  # newer Prism engine (no network here).
  from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  config = builder_lib.ShapenetPairsConfig(name="tiny_beam", category="cars", image_size=16, pairs_per_model=2,
                                           num_models=(3, 1, 1))
  local = builder_lib.Builder(config=config, data_dir=tmp_path / "local")
  local.download_and_prepare()
  options = pipeline_options.PipelineOptions(
      ["--runner=FnApiRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"])
  beam_builder = builder_lib.Builder(config=config, data_dir=tmp_path / "beam")
  beam_builder.download_and_prepare(download_config=tfds.download.DownloadConfig(beam_options=options))
  assert beam_builder._use_beam  # pylint: disable=protected-access  (the examples came through Beam)
  for split, count in (("train", 6), ("validation", 2), ("test", 2)):
    a, b = (sorted(tfds.as_numpy(builder.as_dataset(split=split)),
                   key=lambda e: (e["model_id"], e["mv0"].tobytes())) for builder in (local, beam_builder))
    assert len(a) == len(b) == count
    for x, y in zip(a, b):
      assert x.keys() == y.keys()
      for key in x:
        np.testing.assert_array_equal(x[key], y[key], err_msg=f"{split} {key}")


@pytest.mark.parametrize("layout,nose", [("v2", [0.0, 0.0, -1.6]), ("v1", [1.6, 0.0, 0.0])])
def test_shapenet_frames_put_the_front_on_plus_x(tmp_path, layout, nose):
  # ShapeNetCore.v2's model_normalized.obj faces -Z and v1's model.obj faces +X (the paper's released frame, where
  # the orientation targets are the +-x ends); both must come out with the nose on +X, up still +Y.
  from keypointnet_datasets.shapenet_pairs import meshes  # pylint: disable=g-import-not-at-top
  arrow = helpers.arrow(nose)
  relative = "models/model_normalized.obj" if layout == "v2" else "model.obj"
  _write_obj(tmp_path / "02691156" / "arrow" / relative, arrow.vertices, arrow.faces)
  by_split, _ = builder_lib._find_shapenet_models(tmp_path, "02691156")  # pylint: disable=protected-access
  ((model_id, path, version),) = [m for models in by_split.values() for m in models]
  assert model_id == "arrow" and version == (2 if layout == "v2" else 1)
  loaded = meshes.load({"kind": "shapenet", "path": str(path), "version": version, "scale": 1.0})
  apex = int(np.argmin(np.linalg.norm(arrow.vertices - nose, axis=1)))  # the nose's vertex (order is kept)
  assert np.allclose(arrow.vertices[apex], nose)
  tip = loaded.mesh.vertices[apex]
  assert tip[0] == pytest.approx(loaded.mesh.bounds[1][0]) and tip[0] > 0.9  # the nose is the +X end
  assert abs(tip[1]) < 1e-6 and abs(tip[2]) < 1e-6  # and on the axis: up stays +Y


def test_user_mesh_dir_errors_are_clear(tmp_path):
  with pytest.raises(FileNotFoundError, match="is not a folder"):
    builder_lib.find_user_meshes(tmp_path / "missing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match=r"No mesh files .*\.obj, \.glb"):
    builder_lib.find_user_meshes(tmp_path / "empty")
  mesh_dir = tmp_path / "arrows"
  helpers.user_mesh_dir(mesh_dir)
  (mesh_dir / "splits" / "train.txt").write_text("shelf/arrow9.obj\n")
  with pytest.raises(FileNotFoundError, match=r"lists 1 file\(s\) that are not mesh files"):
    builder_lib.find_user_meshes(mesh_dir)
  config = builder_lib.ShapenetPairsConfig(name="bad_axes", mesh_dir=str(mesh_dir), front_axis="+y", image_size=32)
  builder = builder_lib.Builder(config=config, data_dir=tmp_path / "data")
  with pytest.raises(ValueError, match="must be perpendicular"):
    builder.download_and_prepare()
  assert not (tmp_path / "data" / "shapenet_pairs" / "bad_axes").exists() or not list(
      (tmp_path / "data" / "shapenet_pairs" / "bad_axes").rglob("dataset_info.json"))


def test_builder_refuses_bad_appearance_before_writing(tmp_path):
  for kwargs, message in (({"appearance": "photo"}, "appearance must be plain or random"),
                          ({"appearance": "random", "lighting": "hemisphere"}, "set lighting to directional"),
                          ({"generator": 7}, "generator must be one of"),
                          ({"deformation": "twist"}, "deformation must be none or one of")):
    builder = builder_lib.Builder(config=helpers.tiny_config(name="bad", **kwargs), data_dir=tmp_path)
    with pytest.raises(ValueError, match=message):
      builder.download_and_prepare()
    assert not list(tmp_path.rglob("dataset_info.json"))


def test_human_annotations_follow_the_mesh_into_the_data_set(tmp_path):
  # A ShapeNetCore.v2 arrow (nose along -Z) with a KeypointNet-style annotation file: the nose (semantic id 3) and
  # the tail end (id 0); another class's record and a model without annotations are in the file or folder too.
  manual = tmp_path / "manual"
  arrow = helpers.arrow([0.0, 0.0, -1.6])
  tail = arrow.vertices[np.argmax(arrow.vertices[:, 2])]
  for model_id in ("arrow", "plain"):
    _write_obj(manual / "02691156" / model_id / "models" / "model_normalized.obj", arrow.vertices, arrow.faces)
  records = [{"class_id": "02691156", "model_id": "arrow", "keypoints": [
      {"xyz": [0.0, 0.0, -1.6], "rgb": [0, 0, 0], "semantic_id": 3, "pcd_info": {"point_index": 0}},
      {"xyz": tail.tolist(), "rgb": [0, 0, 0], "semantic_id": 0, "pcd_info": {"point_index": 1}}]},
             {"class_id": "03001627", "model_id": "chair", "keypoints": [{"xyz": [0, 0, 0], "semantic_id": 20}]}]
  (manual / "annotations").mkdir()
  (manual / "annotations" / "airplane.json").write_text(json.dumps(records))
  for split in ("train", "validation", "test"):
    (manual / "splits" / "02691156").mkdir(parents=True, exist_ok=True)
    (manual / "splits" / "02691156" / f"{split}.txt").write_text("arrow\nplain\n" if split == "test" else "")
  builder = builder_lib.Builder(config=helpers.tiny_config(name="annotated", num_models=(0, 0, 0)), data_dir=tmp_path / "d")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  examples = {e["model_id"].decode(): e for e in tfds.as_numpy(builder.as_dataset(split="test"))}
  annotated, plain = examples["arrow"], examples["plain"]
  assert annotated["keypoint_valid"].tolist() == [True, False, False, True]  # ids 0..3 of this category
  assert not plain["keypoint_valid"].any() and plain["keypoints"].shape == (4, 3)
  # The nose went through the mesh's transform: it is the +X end of the normalised arrow, on its axis; the tail
  # keypoint is on the rendered object's -X side. Both sit on the surface of the mesh as the renderer saw it.
  from keypointnet_datasets.shapenet_pairs import meshes  # pylint: disable=g-import-not-at-top
  loaded = meshes.load({"kind": "shapenet", "path": str(manual / "02691156" / "arrow" / "models" /
                                                         "model_normalized.obj"), "version": 2})
  nose = annotated["keypoints"][3]
  assert nose[0] == pytest.approx(loaded.mesh.bounds[1][0], abs=1e-5) and np.allclose(nose[1:], 0, atol=1e-5)
  assert annotated["keypoints"][0][0] < -0.5
  _, distance, _ = loaded.mesh.nearest.on_surface(annotated["keypoints"][[0, 3]])
  assert np.max(distance) < 1e-5
  # DAS against them: exact predictions score 1; a bad file is refused with its name.
  truth = np.stack([annotated["keypoints"]] * 2)
  valid = np.stack([annotated["keypoint_valid"]] * 2)
  assert evaluation.semantic_scores(truth[:, [0, 3]], truth, valid)["das"] == pytest.approx(1.0)
  (manual / "annotations" / "airplane.json").write_text('{"not": "a list"}')
  with pytest.raises(ValueError, match="airplane.json: not a KeypointNet annotation file"):
    builder_lib.load_annotations(manual / "annotations" / "airplane.json", "02691156")
