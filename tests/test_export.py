"""SavedModel export: TensorFlow-only reload, equality with the Keras model, saved_model_cli, bad inputs."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from keypointnet_tf import export
from keypointnet_tf import geometry
from keypointnet_tf import model as model_lib

SIZE = 32


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  keras.utils.set_random_seed(0)
  net = model_lib.KeypointNet(num_keypoints=3, num_filters=4)
  net(tf.zeros([1, SIZE, SIZE, 4]))
  path = str(tmp_path_factory.mktemp("export") / "1")
  export.export_saved_model(net, path, SIZE, geometry.focal_from_fov(5.0))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
  folder = tmp_path_factory.mktemp("pngs")
  files = []
  for i, image in enumerate(images):
    files.append(str(folder / f"{i}.png"))
    tf.io.write_file(files[-1], tf.io.encode_png(image))
  return net, path, images, files


_FRESH = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    loaded = tf.saved_model.load(sys.argv[1])
    data = tf.constant([open(f, "rb").read() for f in sys.argv[2:]])
    out = loaded.signatures["serving_default"](images=data)
    print(json.dumps({"project_imported": any(m.startswith("keypointnet") for m in sys.modules),
                      **{k: v.numpy().tolist() for k, v in out.items()}}))
""")


def test_fresh_process_without_project_code_matches_keras(exported, tmp_path):
  net, path, images, files = exported
  script = tmp_path / "fresh.py"
  script.write_text(_FRESH)
  proc = subprocess.run([sys.executable, str(script), path, *files], capture_output=True, text=True, timeout=120,
                        cwd=str(tmp_path))
  assert proc.returncode == 0, proc.stderr[-2000:]
  served = json.loads(proc.stdout.strip().splitlines()[-1])
  assert served["project_imported"] is False
  rgba = np.concatenate([images / 255.0, np.ones(images.shape[:3] + (1,))], -1).astype(np.float32)
  expected = net(rgba, training=False)
  np.testing.assert_allclose(served["uv"], expected["uv"].numpy(), atol=1e-5)
  np.testing.assert_allclose(served["z"], expected["z"].numpy(), atol=1e-4)  # ~-30: 1e-5 relative
  np.testing.assert_array_equal(served["orientation_flag"], expected["orientation_flag"].numpy())
  xyz = geometry.unproject(expected["uvz"], geometry.focal_from_fov(5.0)).numpy()
  np.testing.assert_allclose(served["xyz"], xyz, atol=1e-4)
  pixels = (np.array(served["uv"]) * [1, -1] + 1) * SIZE / 2 - 0.5
  np.testing.assert_allclose(served["uv_pixels"], pixels, atol=1e-4)


def test_float_signature_and_bad_inputs(exported):
  net, path, images, _ = exported
  loaded = tf.saved_model.load(path)
  rgba = np.concatenate([images / 255.0, np.ones(images.shape[:3] + (1,))], -1).astype(np.float32)
  out = loaded.signatures["predict_images"](images=tf.constant(rgba))
  np.testing.assert_allclose(out["uv"].numpy(), net(rgba, training=False)["uv"].numpy(), atol=1e-5)
  with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
    loaded.signatures["serving_default"](images=tf.constant([b"not an image"]))
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"expects float32 RGBA images of shape \[N, H, W, 4\]"):
    loaded.signatures["predict_images"](images=tf.zeros([1, SIZE, SIZE, 3]))  # 3 channels


def test_saved_model_cli_show_and_run(exported, tmp_path):
  _, path, _, files = exported
  cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  show = subprocess.run([cli, "show", "--dir", path, "--all"], capture_output=True, text=True, timeout=120)
  assert show.returncode == 0, show.stderr[-2000:]
  assert "signature_def['serving_default']" in show.stdout and "signature_def['predict_images']" in show.stdout
  inputs = tmp_path / "images.npy"
  np.save(inputs, np.array([open(files[0], "rb").read()], dtype=object), allow_pickle=True)
  run = subprocess.run([cli, "run", "--dir", path, "--tag_set", "serve", "--signature_def", "serving_default",
                        "--inputs", f"images={inputs}"], capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr[-2000:]
  assert "orientation_flag" in run.stdout and "uv_pixels" in run.stdout


def test_predict_request_for_the_signature(exported):
  from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top (test extra)
  _, path, _, files = exported
  request = predict_pb2.PredictRequest()
  request.model_spec.name = "keypointnet"
  request.model_spec.signature_name = "serving_default"
  request.inputs["images"].CopyFrom(tf.make_tensor_proto([open(files[0], "rb").read()], dtype=tf.string))
  # The request's input name and dtype are the ones the SavedModel's signature declares.
  signature = tf.saved_model.load(path).signatures["serving_default"]
  spec = signature.structured_input_signature[1]
  assert set(request.inputs) == set(spec) and spec["images"].dtype == tf.string
  decoded = tf.make_ndarray(request.inputs["images"])
  out = signature(images=tf.constant(decoded))
  assert out["uv"].shape == (1, 3, 2)


def test_exported_graph_runs_on_any_tensorflow_build(exported):
  """The SavedModel computes dilated convolutions the Keras way (SpaceToBatch around an undilated Conv2D), which
  TensorFlow builds without oneDNN (TF Serving's CPU build among them) run; the exporting model is unchanged."""
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top
  net, path, _, _ = exported
  proto = saved_model_pb2.SavedModel()
  with open(os.path.join(path, "saved_model.pb"), "rb") as f:
    proto.ParseFromString(f.read())
  graph = proto.meta_graphs[0].graph_def
  nodes = list(graph.node) + [n for fn in graph.library.function for n in fn.node_def]
  convs = [n for n in nodes if n.op == "Conv2D"]
  dilations = {tuple(n.attr["dilations"].list.i) for n in convs}
  assert convs and dilations <= {(), (1, 1, 1, 1)}, dilations
  assert any(n.op == "SpaceToBatchND" for n in nodes)
  assert net.dilated_conv == "auto"
