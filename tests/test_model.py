"""KeypointNet model: shapes, initial values, gradients, serialization and input validation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keypointnet_tf import config
from keypointnet_tf import geometry
from keypointnet_tf import losses
from keypointnet_tf import model as model_lib
import helpers  # pylint: disable=g-bad-import-order  (tests/helpers.py)

NUM_KP, FILTERS = 4, 8


def _images(size, batch=2, seed=0):
  return tf.constant(np.random.default_rng(seed).uniform(size=(batch, size, size, 4)), tf.float32)


@pytest.fixture(scope="module")
def small_model():
  keras.utils.set_random_seed(0)
  return model_lib.KeypointNet(num_keypoints=NUM_KP, num_filters=FILTERS)


@pytest.mark.parametrize("size", [32, 64, 128])
def test_output_shapes_ranges_and_initial_depth(small_model, size):
  out = small_model(_images(size))
  assert {k: tuple(v.shape) for k, v in out.items()} == {
      "uv": (2, NUM_KP, 2), "z": (2, NUM_KP), "uvz": (2, NUM_KP, 3), "prob": (2, NUM_KP, size, size),
      "orientation": (2, 2, 2), "orientation_flag": (2,), "predicted_orientation_flag": (2,)}
  assert np.all(np.abs(out["uv"].numpy()) <= 1.0)
  np.testing.assert_allclose(out["prob"].numpy().sum(axis=(2, 3)), 1.0, rtol=1e-5)
  # Small initial conv_z outputs: depth starts at the -30 bias.
  np.testing.assert_allclose(out["z"].numpy(), -30.0, atol=0.5)


def test_non_square_images(small_model):
  out = small_model(tf.zeros([1, 32, 48, 4]))
  assert tuple(out["prob"].shape) == (1, NUM_KP, 32, 48)


def test_spatial_softmax_expectation_hand_derived():
  # A single very peaked logit at row 1, column 2 of a 4 x 8 image: uv = that pixel centre.
  logits = np.full((1, 4, 8, 1), -1e4, np.float32)
  logits[0, 1, 2, 0] = 0.0
  prob, uv = model_lib.spatial_softmax(tf.constant(logits))
  np.testing.assert_allclose(uv.numpy()[0, 0], [(2 + 0.5) / 4 - 1, -((1 + 0.5) / 2 - 1)], atol=1e-6)
  assert prob.numpy()[0, 0, 1, 2] == pytest.approx(1.0)


def test_orientation_flag_prediction_and_mixing(small_model):
  images = _images(32)
  out = small_model(images)
  predicted = out["predicted_orientation_flag"].numpy()
  expected = (out["orientation"].numpy()[:, 0, 0] > out["orientation"].numpy()[:, 1, 0]).astype(np.float32)
  np.testing.assert_array_equal(predicted, expected)
  np.testing.assert_array_equal(out["orientation_flag"].numpy(), predicted)  # no flag given: prediction
  given = 1.0 - predicted
  np.testing.assert_array_equal(small_model(images, given, flag_mix=1.0)["orientation_flag"].numpy(), given)
  np.testing.assert_array_equal(small_model(images, given, flag_mix=0.0)["orientation_flag"].numpy(), predicted)
  # round half to even: at mix 0.5 a disagreement (value 0.5) rounds to 0.
  np.testing.assert_array_equal(small_model(images, given, flag_mix=0.5)["orientation_flag"].numpy(), [0, 0])
  # The flag reaches the keypoint network: flipping it changes the keypoints.
  flipped = small_model(images, given)["uv"].numpy()
  assert not np.allclose(flipped, out["uv"].numpy())


def _fake_batch(size, batch=2, seed=1):
  rng = np.random.default_rng(seed)
  mv = helpers.random_cameras(rng, 2 * batch).astype(np.float32).reshape(2, batch, 4, 4)
  images = rng.uniform(size=(2, batch, size, size, 4)).astype(np.float32)
  images[..., 3] = images[..., 3] > 0.5
  return {"image0": images[0], "image1": images[1], "mv0": mv[0], "mv1": mv[1],
          "mvi0": np.linalg.inv(mv[0]), "mvi1": np.linalg.inv(mv[1]),
          "focal": np.full([batch], geometry.focal_from_fov(5.0), np.float32)}


def test_gradients_reach_every_trainable_variable():
  keras.utils.set_random_seed(1)
  net = model_lib.KeypointNet(num_keypoints=NUM_KP, num_filters=FILTERS)
  batch = _fake_batch(32)
  net(batch["image0"])
  with tf.GradientTape() as tape:
    out0 = net(batch["image0"], geometry.orientation_flag_from_mv(batch["mv0"]), training=True)
    out1 = net(batch["image1"], geometry.orientation_flag_from_mv(batch["mv1"]), training=True)
    terms = losses.total_loss(out0, out1, batch, config.LossConfig(), tf.random.Generator.from_seed(0))
  grads = tape.gradient(terms["total"], net.trainable_variables)
  assert len(net.trainable_variables) == 2 * 12 * 2 + 3 * 2  # conv kernel + BN beta per layer; 3 heads
  for var, grad in zip(net.trainable_variables, grads):
    assert grad is not None, var.path
    assert np.all(np.isfinite(grad.numpy())), var.path
    assert np.any(grad.numpy() != 0), var.path


def test_batch_norm_has_no_scale_and_slim_defaults(small_model):
  small_model(_images(32))
  bn = small_model.keypoint_backbone.norms[0]
  assert bn.gamma is None and bn.momentum == 0.999 and bn.epsilon == 1e-3
  conv = small_model.keypoint_backbone.convs[5]
  assert conv.bias is None and conv.dilation_rate == (16, 16)
  assert [c.dilation_rate[0] for c in small_model.keypoint_backbone.convs] == [1, 1, 2, 4, 8, 16, 1, 2, 4, 8,
                                                                              16, 1]
  assert small_model.orientation_backbone.convs[0].filters == FILTERS // 2


def test_config_round_trip_and_keras_file_round_trip(tmp_path):
  keras.utils.set_random_seed(2)
  net = model_lib.KeypointNet(num_keypoints=NUM_KP, num_filters=FILTERS)
  images = _images(32, seed=3)
  before = net(images)
  cfg = net.get_config()
  clone = model_lib.KeypointNet.from_config(cfg)
  assert clone.get_config() == cfg
  path = tmp_path / "model.keras"
  net.save(path)
  reloaded = keras.models.load_model(path)
  assert isinstance(reloaded, model_lib.KeypointNet)
  after = reloaded(images)
  for key in before:
    np.testing.assert_array_equal(after[key].numpy(), before[key].numpy(), err_msg=key)


@pytest.mark.parametrize("shape", [(2, 32, 32, 3), (32, 32, 4), (1, 2, 32, 32, 4)])
def test_bad_input_shape_raises_clear_error(small_model, shape):
  with pytest.raises(ValueError, match=r"RGBA images of shape \[batch, height, width, 4\]"):
    small_model(tf.zeros(shape))


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_keypoints=0), "num_keypoints must be a positive integer"),
    (dict(num_filters=1), "num_filters must be an integer >= 2"),
    (dict(batch_norm_momentum=1.0), "batch_norm_momentum must be in"),
])
def test_bad_constructor_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    model_lib.KeypointNet(**kwargs)


def test_build_model_from_config():
  net = model_lib.build_model(config.ModelConfig(num_keypoints=3, num_filters=4), image_size=32)
  assert net.built and net.num_keypoints == 3


def _conv_and_grads(fn, x, kernel):
  with tf.GradientTape() as tape:
    tape.watch(x)
    if not isinstance(kernel, tf.Variable):
      tape.watch(kernel)
    y = fn(x, kernel)
    loss = tf.reduce_sum(y * tf.sin(y))  # non-constant output gradient
  return [y] + tape.gradient(loss, [x, kernel])


@pytest.mark.parametrize("shape", [(2, 32, 32, 5), (2, 16, 16, 3), (1, 12, 40, 3)])
@pytest.mark.parametrize("rate", [1, 2, 4, 8, 16, 40])
def test_native_dilated_conv_equals_keras_conv2d(shape, rate):
  """Same outputs and gradients as keras.layers.Conv2D(dilation_rate=rate) from the same kernel, including rates
  at or beyond the image side (taps skipped: 1x1 at 16 px and 40 px, 1x3 taps on the 12 x 40 image)."""
  rng = np.random.default_rng(rate)
  x = tf.constant(rng.normal(size=shape), tf.float32)
  layer = keras.layers.Conv2D(6, 3, padding="same", dilation_rate=rate, use_bias=False)
  layer.build(shape)
  kernel = tf.constant(rng.normal(size=(3, 3, shape[-1], 6)), tf.float32)
  layer.kernel.assign(kernel)
  expected = _conv_and_grads(lambda x, k: layer(x), x, layer.kernel.value)  # the layer's tf.Variable
  if not model_lib.native_dilation_supported():  # then asking for it must say so, and "auto" must fall back
    with pytest.raises(ValueError, match="dilated_conv='native' needs"):
      model_lib.resolve_dilated_conv("native")
    assert model_lib.resolve_dilated_conv("auto") == "keras"
    return
  got = _conv_and_grads(lambda x, k: model_lib.dilated_conv3x3(x, k, rate), x, kernel)
  for name, a, b in zip(["output", "input gradient", "kernel gradient"], got, expected):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5 * np.abs(b.numpy()).max(),
                               err_msg=name)


def test_fast_implementation_computes_the_same_network():
  """Keras layers everywhere (dilated Conv2D, BatchNormalization) against the defaults (native dilations where
  supported, the fused batch-norm kernel), same weights: training-mode outputs, every gradient, the moving
  statistics after the step, and inference outputs agree."""
  batch = _fake_batch(32)
  results = {}
  for name, kwargs in (("keras", dict(dilated_conv="keras", fused_batch_norm=False)), ("fast", {})):
    keras.utils.set_random_seed(4)
    net = model_lib.KeypointNet(num_keypoints=NUM_KP, num_filters=FILTERS, batch_norm_momentum=0.5, **kwargs)
    net(batch["image0"])
    with tf.GradientTape() as tape:
      out = net(batch["image0"], geometry.orientation_flag_from_mv(batch["mv0"]), training=True)
      loss = tf.reduce_sum(out["uvz"] ** 2) + tf.reduce_sum(out["orientation"] ** 2)
    grads = tape.gradient(loss, net.trainable_variables)
    moving = [v for v in net.non_trainable_variables if "moving" in v.path]
    results[name] = [out["uvz"], out["orientation"]] + grads + moving + [net(batch["image1"])["uvz"]]
  assert len(moving) == 2 * 2 * 12
  assert len(results["fast"]) == len(results["keras"])
  # Some gradients are zero in exact arithmetic (a constant shift of a softmax head's bias), so float noise is
  # judged against the largest gradient.
  gradient_scale = max(np.abs(np.asarray(g)).max() for g in results["keras"][2:2 + len(grads)])
  for i, (a, b) in enumerate(zip(results["fast"], results["keras"])):
    a, b = np.asarray(a), np.asarray(b)
    scale = gradient_scale if 2 <= i < 2 + len(grads) else np.abs(b).max()
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * scale + 1e-7, err_msg=str(i))


def test_switching_implementation_keeps_outputs():
  keras.utils.set_random_seed(5)
  net = model_lib.KeypointNet(num_keypoints=NUM_KP, num_filters=FILTERS, dilated_conv="keras")
  images = _images(32, seed=6)
  before = net(images)["uvz"].numpy()
  assert net.keypoint_backbone._impl == "keras"  # pylint: disable=protected-access
  net.set_implementation(dilated_conv="auto", fused_batch_norm=False)
  assert net.keypoint_backbone._impl == model_lib.resolve_dilated_conv("auto")  # pylint: disable=protected-access
  assert not net.orientation_backbone.fused_batch_norm
  np.testing.assert_allclose(net(images)["uvz"].numpy(), before, rtol=1e-5, atol=1e-5)


def test_bad_dilated_conv_name():
  with pytest.raises(ValueError, match="dilated_conv must be one of"):
    model_lib.KeypointNet(dilated_conv="fast")
  with pytest.raises(ValueError, match="dilated_conv must be one of"):
    model_lib.build_model(config.ModelConfig(num_keypoints=3, num_filters=4, dilated_conv="cuda"), image_size=32)


@pytest.mark.parametrize("size,filters,num_kp", [(32, 16, 10), (48, 32, 5)])
def test_forward_flops_match_tensorflow_profiler(size, filters, num_kp):
  """The analytic count used by bench/train_step.py against TensorFlow's own graph profiler."""
  net = model_lib.build_model(config.ModelConfig(num_keypoints=num_kp, num_filters=filters), image_size=size)
  fn = tf.function(lambda x: net(x, training=False))
  graph = fn.get_concrete_function(tf.TensorSpec([1, size, size, 4], tf.float32)).graph
  options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  options["output"] = "none"
  profiled = tf.compat.v1.profiler.profile(graph, options=options).total_float_ops
  analytic = model_lib.forward_flops(size, filters, num_kp)
  # The profiler also counts biases, batch norm and the softmax expectations: a little above the convolutions.
  assert analytic <= profiled <= 1.02 * analytic


def test_network_input_is_the_one_area_resize():
  # Halving by area averaging is the mean of each 2x2 block (a NumPy reference); uint8 is scaled by 1/255.
  rng = np.random.default_rng(3)
  pixels = rng.integers(0, 256, size=(2, 64, 64, 4), dtype=np.uint8)
  got = model_lib.network_input(tf.constant(pixels), 32).numpy()
  expected = pixels.astype(np.float64).reshape(2, 32, 2, 32, 2, 4).mean(axis=(2, 4)) / 255.0
  np.testing.assert_allclose(got, expected, atol=1e-6)
  same = rng.uniform(size=(1, 32, 32, 4)).astype(np.float32)
  np.testing.assert_array_equal(model_lib.network_input(same, 32).numpy(), same)  # right size: unchanged


def test_prediction_and_pipeline_preprocess_a_file_alike(tmp_path):
  # prediction.read_image (PIL) and the input pipeline's PNG decoding both end in network_input.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from keypointnet_tf import prediction  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(4)
  pixels = rng.integers(0, 256, size=(48, 80, 4), dtype=np.uint8)
  Image.fromarray(pixels, "RGBA").save(tmp_path / "x.png")
  image, size = prediction.read_image(str(tmp_path / "x.png"), 32)
  decoded = tf.io.decode_png(tf.io.read_file(str(tmp_path / "x.png")), channels=4)
  assert size == (48, 80)
  np.testing.assert_allclose(image, model_lib.network_input(decoded, 32).numpy(), atol=1e-6)
