"""Loss terms against NumPy references, hand-derived values and gradient checks."""

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf
from scipy.spatial.transform import Rotation

from keypointnet_tf import config
from keypointnet_tf import geometry
from keypointnet_tf import losses
import helpers  # pylint: disable=g-bad-import-order  (tests/helpers.py)

FOCAL = geometry.focal_from_fov(5.0)


def _random_cameras(rng, batch):
  """Two look-at cameras per example on the upper hemisphere at distance 30 (as the paper renders)."""
  mv0 = helpers.random_cameras(rng, batch, jitter=0.2, max_roll=1.0)
  mv1 = helpers.random_cameras(rng, batch, jitter=0.2, max_roll=1.0)
  return mv0, np.linalg.inv(mv0), mv1, np.linalg.inv(mv1)


def _views_of(points, mv):
  """Exact (u, v, z) of object-space points [B, K, 3] seen by cameras mv [B, 4, 4], in NumPy."""
  cam = np.einsum("bij,bkj->bki", mv[:, :3, :3], points) + mv[:, None, :3, 3]
  return geometry.project_numpy(cam, FOCAL)


def test_consistency_loss_zero_for_exact_keypoints_and_grows_with_perturbation():
  rng = np.random.default_rng(0)
  mv0, mvi0, mv1, mvi1 = _random_cameras(rng, 4)
  points = rng.uniform(-1, 1, size=(4, 10, 3))
  uvz0, uvz1 = _views_of(points, mv0), _views_of(points, mv1)
  exact = losses.consistency_loss(uvz0, uvz1, mv0, mvi0, mv1, mvi1, FOCAL).numpy()
  assert exact < 1e-12
  previous = exact
  for scale in [0.01, 0.05, 0.2]:
    noisy = uvz0 + np.concatenate([rng.normal(size=(4, 10, 2)) * scale, np.zeros((4, 10, 1))], -1)
    value = losses.consistency_loss(noisy, uvz1, mv0, mvi0, mv1, mvi1, FOCAL).numpy()
    assert value > previous
    previous = value


def test_consistency_loss_matches_numpy_reference():
  rng = np.random.default_rng(1)
  mv0, mvi0, mv1, mvi1 = _random_cameras(rng, 3)
  uvz0 = np.concatenate([rng.uniform(-0.5, 0.5, (3, 6, 2)), rng.uniform(-31, -29, (3, 6, 1))], -1)
  uvz1 = np.concatenate([rng.uniform(-0.5, 0.5, (3, 6, 2)), rng.uniform(-31, -29, (3, 6, 1))], -1)

  def direction(uvz_a, uvz_b, mvi_a, mv_b):
    total = 0.0
    for b in range(3):
      for i in range(6):
        u, v, z = uvz_a[b, i]
        cam_a = np.array([-u * z / FOCAL, -v * z / FOCAL, z, 1.0])
        cam_b = mv_b[b] @ mvi_a[b] @ cam_a
        uv = -FOCAL * cam_b[:2] / cam_b[2]
        total += np.sum((uv - uvz_b[b, i, :2]) ** 2) / 6
    return total / 3

  expected = direction(uvz0, uvz1, mvi0, mv1) + direction(uvz1, uvz0, mvi1, mv0)
  got = losses.consistency_loss(uvz0, uvz1, mv0, mvi0, mv1, mvi1, FOCAL).numpy()
  # The implementation adds 1e-8 to z before dividing (as the TF1 code does): ~3e-8 relative difference.
  np.testing.assert_allclose(got, expected, rtol=1e-7)


def test_pose_loss_zero_for_exact_keypoints():
  rng = np.random.default_rng(2)
  mv0, _, mv1, _ = _random_cameras(rng, 8)
  points = rng.uniform(-1, 1, size=(8, 10, 3))
  xyz0 = np.einsum("bij,bkj->bki", mv0[:, :3, :3], points) + mv0[:, None, :3, 3]
  xyz1 = np.einsum("bij,bkj->bki", mv1[:, :3, :3], points) + mv1[:, None, :3, 3]
  result = losses.pose_loss(xyz0, xyz1, geometry.relative_rotation(mv0, mv1))
  assert result["angular"].numpy() < 1e-6
  assert result["chordal"].numpy() < 1e-11  # chordal_distance keeps a 1e-12 epsilon under its sqrt


def test_pose_loss_matches_scipy_angle_and_noise_is_seeded():
  rng = np.random.default_rng(3)
  xyz0 = rng.normal(size=(5, 10, 3))
  true = Rotation.random(5, random_state=3)
  wrong = true * Rotation.from_rotvec(np.tile([0.0, 0.3, 0.0], (5, 1)))  # 0.3 rad off
  xyz1 = np.einsum("bij,bkj->bki", wrong.as_matrix(), xyz0)
  result = losses.pose_loss(xyz0, xyz1, true.as_matrix())
  assert result["angular"].numpy() == pytest.approx(0.3, abs=1e-6)
  assert result["chordal"].numpy() == pytest.approx(8 * math.sin(0.15) ** 2, abs=1e-6)
  noisy = [losses.pose_loss(xyz0, xyz1, true.as_matrix(), 0.1, tf.random.Generator.from_seed(7))["angular"]
           for _ in range(2)]
  assert noisy[0].numpy() == noisy[1].numpy() != pytest.approx(0.3, abs=1e-6)
  with pytest.raises(ValueError, match="generator"):
    losses.pose_loss(xyz0, xyz1, true.as_matrix(), 0.1)


def test_separation_loss_matches_numpy_double_loop():
  rng = np.random.default_rng(4)
  xyz = rng.normal(size=(3, 7, 3)) * 0.15
  delta = 0.05
  total = 0.0
  for b in range(3):
    for i in range(7):
      for j in range(7):
        total += max(0.0, delta - np.sum((xyz[b, i] - xyz[b, j]) ** 2))
  expected = total / (2 * 3 * 7)
  np.testing.assert_allclose(losses.separation_loss(xyz, delta).numpy(), expected, rtol=1e-12)
  # Well separated keypoints only pay the constant diagonal terms: delta / 2.
  spread = np.eye(7, 3)[None] * 10 + np.arange(7)[None, :, None]
  np.testing.assert_allclose(losses.separation_loss(spread, delta).numpy(), delta / 2)


def test_silhouette_and_variance_losses_match_numpy():
  rng = np.random.default_rng(5)
  logits = rng.normal(size=(2, 3, 4, 6))
  prob = np.exp(logits) / np.exp(logits).sum(axis=(2, 3), keepdims=True)
  mask = rng.uniform(size=(2, 4, 6)) > 0.5
  grid = geometry.ndc_grid(4, 6).numpy().astype(np.float64)
  uv = np.einsum("bkhw,hwc->bkc", prob, grid)
  sil, var = 0.0, 0.0
  for b in range(2):
    for k in range(3):
      sil += -np.log((prob[b, k] * mask[b]).sum() + 1e-12)
      var += (prob[b, k] * ((grid - uv[b, k]) ** 2).sum(-1)).sum()
  np.testing.assert_allclose(losses.silhouette_loss(prob, mask).numpy(), sil / 6, rtol=1e-9)
  np.testing.assert_allclose(losses.variance_loss(prob, uv).numpy(), var / 6, rtol=1e-6)
  full = np.ones((2, 4, 6))
  assert losses.silhouette_loss(prob, full).numpy() == pytest.approx(0.0, abs=1e-9)


def test_orientation_loss_zero_at_targets_and_matches_mse():
  rng = np.random.default_rng(6)
  mv0, _, _, _ = _random_cameras(rng, 4)
  target = geometry.orientation_targets(mv0, FOCAL).numpy()
  assert losses.orientation_loss(target, mv0, FOCAL).numpy() == pytest.approx(0.0, abs=1e-12)
  offset = rng.normal(size=target.shape)
  np.testing.assert_allclose(losses.orientation_loss(target + offset, mv0, FOCAL).numpy(),
                             np.mean(offset ** 2), rtol=1e-9)


def _degenerate_pairs():
  rng = np.random.default_rng(7)
  base = rng.normal(size=(10, 3))
  rot = Rotation.from_rotvec([0.0, 0.0, math.pi]).as_matrix()  # 180 degrees
  return {
      "identical_points": (np.zeros((10, 3)) + [0.1, 0.2, -30], np.zeros((10, 3)) + [0.1, 0.2, -30], np.eye(3)),
      "collinear": (np.outer(np.linspace(-1, 1, 10), [1, 2, 3]), np.outer(np.linspace(-1, 1, 10), [1, 2, 3]),
                    np.eye(3)),
      "coplanar": (base * [1, 1, 0], base * [1, 1, 0], np.eye(3)),
      "exact_rotation": (base, base, np.eye(3)),
      "opposite_180": (base, base, rot),
  }


@pytest.mark.parametrize("case", sorted(_degenerate_pairs()))
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_pose_loss_gradient_finite_at_degenerate_inputs(case, dtype):
  xyz0, xyz1, rotation = _degenerate_pairs()[case]
  xyz0 = tf.constant(xyz0[None], dtype)
  xyz1 = tf.constant(xyz1[None], dtype)
  with tf.GradientTape() as tape:
    tape.watch([xyz0, xyz1])
    value = losses.pose_loss(xyz0, xyz1, tf.constant(rotation[None], dtype))["angular"]
  grads = tape.gradient(value, [xyz0, xyz1])
  assert np.isfinite(value.numpy())
  for grad in grads:
    assert grad is not None and np.all(np.isfinite(grad.numpy()))


def test_separation_loss_gradient_finite_for_coincident_points():
  xyz = tf.zeros([2, 5, 3])
  with tf.GradientTape() as tape:
    tape.watch(xyz)
    value = losses.separation_loss(xyz, 0.05)
  assert np.all(np.isfinite(tape.gradient(value, xyz).numpy()))


def test_loss_gradients_match_numeric():
  rng = np.random.default_rng(8)
  mv0, mvi0, mv1, mvi1 = _random_cameras(rng, 2)
  uvz1 = np.concatenate([rng.uniform(-0.5, 0.5, (2, 4, 2)), rng.uniform(-31, -29, (2, 4, 1))], -1)
  uvz0 = np.concatenate([rng.uniform(-0.5, 0.5, (2, 4, 2)), rng.uniform(-31, -29, (2, 4, 1))], -1)
  functions = {
      "consistency": lambda x: losses.consistency_loss(x, uvz1, mv0, mvi0, mv1, mvi1, FOCAL),
      "separation": lambda x: losses.separation_loss(x * [1, 1, 0.05], 0.05),
      "pose": lambda x: losses.pose_loss(x, tf.constant(uvz1), geometry.relative_rotation(mv0, mv1))["angular"],
  }
  for name, fn in functions.items():
    theoretical, numerical = tf.test.compute_gradient(fn, [tf.constant(uvz0)])
    np.testing.assert_allclose(theoretical[0], numerical[0], rtol=1e-4, atol=1e-6, err_msg=name)


def test_total_loss_weights_and_keys():
  rng = np.random.default_rng(9)
  mv0, mvi0, mv1, mvi1 = _random_cameras(rng, 2)
  size, num_kp = 8, 3

  def fake_outputs():
    logits = rng.normal(size=(2, num_kp, size, size))
    prob = tf.constant(np.exp(logits) / np.exp(logits).sum(axis=(2, 3), keepdims=True), tf.float32)
    uv = tf.einsum("bkhw,hwc->bkc", prob, geometry.ndc_grid(size, size))
    z = tf.constant(rng.uniform(-31, -29, (2, num_kp)), tf.float32)
    return {"uv": uv, "z": z, "uvz": tf.concat([uv, z[..., None]], -1), "prob": prob,
            "orientation": tf.constant(rng.uniform(-1, 1, (2, 2, 2)), tf.float32)}

  images = rng.uniform(size=(2, size, size, 4)).astype(np.float32)
  batch = {"image0": images, "image1": images, "focal": np.full([2], FOCAL, np.float32),
           **{k: v.astype(np.float32) for k, v in dict(mv0=mv0, mvi0=mvi0, mv1=mv1, mvi1=mvi1).items()}}
  out0, out1 = fake_outputs(), fake_outputs()
  loss_config = config.LossConfig(pose_noise_stddev=0.0)
  terms = losses.total_loss(out0, out1, batch, loss_config)
  assert set(terms) == {"total", "pose", "consistency", "separation", "silhouette", "orientation", "variance",
                        "chordal"}
  w = loss_config.weights
  expected = sum(getattr(w, k) * terms[k].numpy() for k in
                 ["pose", "consistency", "separation", "silhouette", "orientation", "variance"])
  np.testing.assert_allclose(terms["total"].numpy(), expected, rtol=1e-6)
  np.testing.assert_allclose(
      terms["orientation"].numpy(),
      losses.orientation_loss(out0["orientation"], batch["mv0"], FOCAL).numpy() +
      losses.orientation_loss(out1["orientation"], batch["mv1"], FOCAL).numpy(), rtol=1e-6)
  assert (w.pose, w.consistency, w.separation, w.silhouette, w.orientation, w.variance) == (
      0.2, 1.0, 1.0, 1.0, 1.0, 0.5)

  # The CPU preset's anchor (not in the paper): off by default; when on, keypoints 0 and 1 are compared with the
  # hand-projected +x / -x axis ends, and its weight is scaled by the decay factor.
  anchored = config.LossConfig(pose_noise_stddev=0.0, weights=config.LossWeights(anchor=2.0))
  ends = np.array([[1.0, 0, 0], [-1.0, 0, 0]])
  expected_anchor = 0.0
  for out, mv in ((out0, mv0), (out1, mv1)):
    reference = _views_of(np.broadcast_to(ends, (2, 2, 3)), mv)[..., :2]  # [B, 2, 2]
    expected_anchor += np.mean((out["uv"].numpy()[:, :2] - reference) ** 2)
  for scale in (1.0, 0.25, 0.0):
    with_anchor = losses.total_loss(out0, out1, batch, anchored, anchor_scale=scale)
    np.testing.assert_allclose(with_anchor["anchor"].numpy(), expected_anchor, rtol=1e-5)
    np.testing.assert_allclose(with_anchor["total"].numpy(), terms["total"].numpy() + 2.0 * scale * expected_anchor,
                               rtol=1e-5)

  # The silhouette warm-up (not in the paper) scales the silhouette and variance weights only; the raw terms stay.
  for scale in (0.0, 0.4):
    warming = losses.total_loss(out0, out1, batch, loss_config, silhouette_scale=scale)
    np.testing.assert_allclose(warming["silhouette"].numpy(), terms["silhouette"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(
        warming["total"].numpy(),
        terms["total"].numpy() - (1.0 - scale) * (w.silhouette * terms["silhouette"].numpy() +
                                                  w.variance * terms["variance"].numpy()), rtol=1e-5)


def test_extra_terms_are_registered_by_name_and_unknown_ones_refused():
  rng = np.random.default_rng(6)
  mv0, mvi0, mv1, mvi1 = _random_cameras(rng, 2)
  points = rng.uniform(-1, 1, size=(2, 4, 3))
  outputs = [_outputs_of(points, mv) for mv in (mv0, mv1)]
  batch = _batch_of(mv0, mvi0, mv1, mvi1)
  losses.register_term("test_constant", lambda o0, o1, b, c: tf.constant(0.25))
  plain = losses.total_loss(*outputs, batch, config.LossConfig(pose_noise_stddev=0.0))
  extra = losses.total_loss(*outputs, batch, config.LossConfig(pose_noise_stddev=0.0,
                                                               extra_terms=(("test_constant", 2.0),)))
  assert "test_constant" not in plain and extra["test_constant"].numpy() == pytest.approx(0.25)
  np.testing.assert_allclose(extra["total"], plain["total"] + 0.5, rtol=1e-6)
  with pytest.raises(ValueError, match="Unknown loss term 'nonesuch'.*keypointnet_research.losses"):
    losses.total_loss(*outputs, batch, config.LossConfig(pose_noise_stddev=0.0, extra_terms=(("nonesuch", 1.0),)))


def _outputs_of(points, mv):
  """KeypointNet-like outputs whose keypoints are the exact images of `points` [B, K, 3] under `mv`."""
  uvz = tf.constant(_views_of(points, mv), tf.float32)
  batch, num_kp = points.shape[:2]
  return {"uv": uvz[..., :2], "z": uvz[..., 2], "uvz": uvz, "prob": tf.fill([batch, num_kp, 8, 8], 1.0 / 64),
          "orientation": tf.zeros([batch, 2, 2])}


def _batch_of(mv0, mvi0, mv1, mvi1):
  batch = {"image0": tf.ones([len(mv0), 8, 8, 4]), "image1": tf.ones([len(mv0), 8, 8, 4]), "mv0": mv0,
           "mvi0": mvi0, "mv1": mv1, "mvi1": mvi1, "focal": tf.fill([len(mv0)], FOCAL)}
  return {k: tf.cast(v, tf.float32) for k, v in batch.items()}


def test_lateral_anchor_pulls_keypoints_off_the_symmetry_plane_on_alternate_sides():
  rng = np.random.default_rng(9)
  mv0, mvi0, mv1, mvi1 = _random_cameras(rng, 3)
  points = rng.uniform(-1, 1, size=(3, 8, 3))
  points[:, :, 2] = rng.choice([-0.4, -0.1, 0.0, 0.05, 0.3], size=(3, 8))  # object Z, across the plane X-Y
  uvz = tf.constant(_views_of(points, mv0), tf.float32)
  side = np.where(np.arange(6) % 2 == 0, 1.0, -1.0)
  expected = np.mean(np.maximum(0.15 - side * points[:, :6, 2], 0.0) ** 2)  # keypoints 6 and 7 are free
  ours = losses.lateral_anchor_loss(uvz, mvi0, FOCAL)
  np.testing.assert_allclose(ours, expected, rtol=1e-4)
  # Its gradient moves a pulled keypoint on the plane towards its own side, in the object frame.
  on_plane = points.copy()
  on_plane[:, :, 2] = 0.0
  uvz = tf.Variable(_views_of(on_plane, mv0), dtype=tf.float32)
  with tf.GradientTape() as tape:
    loss = losses.lateral_anchor_loss(uvz, mvi0, FOCAL)
  stepped = uvz - 0.01 * tape.gradient(loss, uvz)
  moved = geometry.transform_points(mvi0, geometry.unproject(stepped, FOCAL)).numpy()[..., 2]
  assert np.all(moved[:, :6] * side > 0) and np.allclose(moved[:, 6:], 0.0, atol=1e-5)


def test_the_lateral_anchor_decays_over_the_silhouette_warm_up():
  rng = np.random.default_rng(10)
  mv0, mvi0, mv1, mvi1 = _random_cameras(rng, 2)
  points = rng.uniform(-1, 1, size=(2, 6, 3))
  batch = _batch_of(mv0, mvi0, mv1, mvi1)
  outputs = (_outputs_of(points, mv0), _outputs_of(points, mv1))
  variant = config.LossConfig(pose_noise_stddev=0.0, silhouette_warmup_steps=100,
                              extra_terms=(("lateral_anchor", 3.0),))
  plain = config.LossConfig(pose_noise_stddev=0.0, silhouette_warmup_steps=100)
  pulled = sum(float(losses.lateral_anchor_loss(_views_of(points, mv), mvi, FOCAL))
               for mv, mvi in ((mv0, mvi0), (mv1, mvi1)))
  assert pulled > 0
  for scale in (0.0, 0.25, 1.0):  # the silhouette warm-up's factor: 0 at step 0, 1 from its end on
    ours = losses.total_loss(*outputs, batch, variant, silhouette_scale=scale)
    paper = losses.total_loss(*outputs, batch, plain, silhouette_scale=scale)
    np.testing.assert_allclose(ours["lateral_anchor"], pulled, rtol=1e-4)
    np.testing.assert_allclose(ours["total"] - paper["total"], (1.0 - scale) * 3.0 * pulled, rtol=1e-4, atol=1e-6)
  # Without a warm-up it would never act: refused, not silently 0.
  no_warmup = dataclasses.replace(variant, silhouette_warmup_steps=0)
  with pytest.raises(ValueError, match="'lateral_anchor' acts during the silhouette warm-up only.*"
                                       "--silhouette_warmup_steps=4000"):
    losses.check_terms(no_warmup)
  with pytest.raises(ValueError, match="'lateral_anchor' acts during the silhouette warm-up only"):
    losses.total_loss(*outputs, batch, no_warmup)  # direct callers of the loss get the same refusal
  losses.check_terms(variant)
  with pytest.raises(ValueError, match="Unknown loss term 'no_such_term'"):
    losses.check_terms(dataclasses.replace(variant, extra_terms=(("no_such_term", 1.0),)))
  with pytest.raises(ValueError, match="Unknown schedule 'sometimes'"):
    losses.register_term("test_sometimes", lambda o0, o1, b, c: tf.constant(0.0), schedule="sometimes")
