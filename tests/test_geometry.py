"""Geometry against SciPy / NumPy references and hand-derived values."""

import math

import numpy as np
import pytest
import tensorflow as tf
from scipy.spatial.transform import Rotation

from keypointnet_tf import geometry

FOCAL = geometry.focal_from_fov(5.0)


def test_focal_from_fov_matches_cot():
  assert FOCAL == pytest.approx(1.0 / math.tan(math.radians(2.5)))
  assert FOCAL == pytest.approx(22.9038, abs=1e-4)


def test_project_hand_derived_values():
  # A point 1 unit right and 2 up at depth 30: u = -f * 1 / -30 = f / 30, v = 2 f / 30.
  uvz = geometry.project(tf.constant([[[1.0, 2.0, -30.0]]]), FOCAL).numpy()
  np.testing.assert_allclose(uvz[0, 0], [FOCAL / 30, 2 * FOCAL / 30, -30.0], rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4, 3), (2, 5, 3), (2, 3, 4, 3)])
def test_unproject_project_round_trip(shape, dtype):
  rng = np.random.default_rng(0)
  uvz = np.concatenate([rng.uniform(-1, 1, shape[:-1] + (2,)),
                        rng.uniform(-32, -28, shape[:-1] + (1,))], -1).astype(dtype)
  focal = rng.uniform(10, 30, shape[:1]).astype(dtype) if len(shape) > 2 else FOCAL
  back = geometry.project(geometry.unproject(uvz, focal), focal).numpy()
  np.testing.assert_allclose(back, uvz, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)


def test_project_in_tf_function_matches_eager():
  xyz = tf.constant(np.random.default_rng(1).normal(size=(3, 4, 3)) - [0, 0, 30], tf.float32)
  eager = geometry.project(xyz, FOCAL)
  graph = tf.function(lambda p: geometry.project(p, FOCAL))(xyz)
  np.testing.assert_allclose(graph.numpy(), eager.numpy())


def test_project_rejects_wrong_last_dimension():
  with pytest.raises(ValueError, match=r"`xyz` must have shape \[\.\.\., 3\]"):
    geometry.project(tf.zeros([2, 5, 2]), FOCAL)


def test_ndc_grid_pixel_centres_and_orientation():
  grid = geometry.ndc_grid(4, 8).numpy()
  assert grid.shape == (4, 8, 2)
  # Column j centre: (j + 0.5) / 4 - 1; row r centre: -((r + 0.5) / 2 - 1) (top row is up, positive).
  np.testing.assert_allclose(grid[0, :, 0], [(j + 0.5) / 4 - 1 for j in range(8)])
  np.testing.assert_allclose(grid[:, 0, 1], [-((r + 0.5) / 2 - 1) for r in range(4)])
  assert grid[0, 0, 1] > 0 > grid[-1, 0, 1]


def test_matrix_flat_round_trip_is_row_major():
  flat = np.arange(16, dtype=np.float32)
  matrix = geometry.matrix_from_flat(flat).numpy()
  assert matrix[0, 3] == 3 and matrix[3, 0] == 12  # row-major
  np.testing.assert_array_equal(geometry.flat_from_matrix(matrix).numpy(), flat)


def test_look_at_model_view_places_target_in_front_and_up_up():
  eye = np.array([0.0, 0.0, 30.0])
  mv = geometry.look_at_model_view(eye)
  target_cam = mv @ np.array([0, 0, 0, 1.0])
  np.testing.assert_allclose(target_cam[:3], [0, 0, -30], atol=1e-12)
  up_cam = mv[:3, :3] @ np.array([0, 1.0, 0])
  assert up_cam[1] > 0.99  # world +Y appears up
  # +x of the object points to the camera's right when looking from +z: positive orientation flag.
  assert geometry.orientation_flag_from_mv(mv).numpy() == 1.0
  pose = geometry.camera_pose_from_model_view(mv)
  np.testing.assert_allclose(pose @ mv, np.eye(4), atol=1e-12)


def test_relative_rotation_maps_camera0_to_camera1():
  rng = np.random.default_rng(2)
  eyes = rng.normal(size=(2, 3)) * 30
  mv0, mv1 = (geometry.look_at_model_view(e) for e in eyes)
  point = rng.normal(size=3)
  p0 = mv0[:3, :3] @ point
  p1 = mv1[:3, :3] @ point
  rel = geometry.relative_rotation(mv0[None], mv1[None]).numpy()[0]
  np.testing.assert_allclose(rel @ p0, p1, atol=1e-12)


def _scipy_kabsch(xyz0, xyz1, weights):
  """Reference: SciPy align_vectors on weight-centred points. align_vectors(a, b) finds R with a ~= R b."""
  w = weights / weights.sum()
  c0 = (w[:, None] * xyz0).sum(0)
  c1 = (w[:, None] * xyz1).sum(0)
  rot, _ = Rotation.align_vectors(xyz1 - c1, xyz0 - c0, weights=w)
  return rot.as_matrix()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_estimate_rotation_matches_scipy(dtype):
  rng = np.random.default_rng(0)
  batch, num_kp = 16, 10
  rotations = Rotation.random(batch, random_state=0).as_matrix()
  xyz0 = rng.normal(size=(batch, num_kp, 3))
  shift = rng.normal(size=(batch, 1, 3)) * 5
  xyz1 = np.einsum("bij,bkj->bki", rotations, xyz0) + shift
  weights = rng.uniform(0.1, 1.0, size=(batch, num_kp))
  estimate = geometry.estimate_rotation(xyz0.astype(dtype), xyz1.astype(dtype), weights.astype(dtype)).numpy()
  for b in range(batch):
    reference = _scipy_kabsch(xyz0[b], xyz1[b], weights[b])
    angle = Rotation.from_matrix(estimate[b].astype(np.float64) @ reference.T).magnitude()
    assert math.degrees(angle) < 1e-3
    np.testing.assert_allclose(estimate[b], rotations[b], atol=1e-4)


def test_estimate_rotation_weights_and_noise_match_scipy():
  # Noisy correspondences and zero weights on outliers: both solvers must agree on the same weighted optimum.
  rng = np.random.default_rng(3)
  xyz0 = rng.normal(size=(8, 12, 3))
  rotations = Rotation.random(8, random_state=3).as_matrix()
  xyz1 = np.einsum("bij,bkj->bki", rotations, xyz0) + rng.normal(size=(8, 12, 3)) * 0.2
  weights = rng.uniform(0, 1, size=(8, 12))
  weights[:, :3] = 0.0
  estimate = geometry.estimate_rotation(xyz0, xyz1, weights).numpy()
  for b in range(8):
    reference = _scipy_kabsch(xyz0[b], xyz1[b], weights[b])
    assert math.degrees(Rotation.from_matrix(estimate[b] @ reference.T).magnitude()) < 1e-3


def test_estimate_rotation_fixes_reflection():
  # xyz1 is a mirror image of xyz0: the raw SVD solution V U^T has det -1; the result must be a rotation.
  rng = np.random.default_rng(4)
  xyz0 = rng.normal(size=(4, 10, 3))
  mirror = np.diag([1.0, 1.0, -1.0])
  xyz1 = np.einsum("ij,bkj->bki", mirror, xyz0)
  covariance = np.einsum("bki,bkj->bij", xyz0 - xyz0.mean(1, keepdims=True), xyz1 - xyz1.mean(1, keepdims=True))
  u, _, vt = np.linalg.svd(covariance)
  assert np.all(np.linalg.det(np.swapaxes(vt, 1, 2) @ np.swapaxes(u, 1, 2)) < 0)  # raw SVD reflects
  estimate = geometry.estimate_rotation(xyz0, xyz1).numpy()
  np.testing.assert_allclose(np.linalg.det(estimate), 1.0, atol=1e-9)
  np.testing.assert_allclose(np.swapaxes(estimate, 1, 2) @ estimate, np.broadcast_to(np.eye(3), (4, 3, 3)),
                             atol=1e-9)
  for b in range(4):
    reference = _scipy_kabsch(xyz0[b], xyz1[b], np.ones(10))
    assert math.degrees(Rotation.from_matrix(estimate[b] @ reference.T).magnitude()) < 1e-3


def test_estimate_rotation_rejects_bad_rank():
  with pytest.raises(ValueError, match=r"`xyz0` must have shape \[B, K, 3\]"):
    geometry.estimate_rotation(tf.zeros([10, 3]), tf.zeros([10, 3]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_angular_distance_matches_scipy_magnitude(dtype):
  r_a = Rotation.random(64, random_state=5)
  r_b = Rotation.random(64, random_state=6)
  expected = (r_a * r_b.inv()).magnitude()
  got = geometry.angular_distance(r_a.as_matrix().astype(dtype), r_b.as_matrix().astype(dtype)).numpy()
  # float32: |Ra - Rb| has ~1e-7 relative error; asin amplifies it near 180 degrees.
  np.testing.assert_allclose(got, expected, atol=2e-3 if dtype == np.float32 else 1e-6)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_angular_distance_presets(axis):
  rotvec = np.zeros(3)
  rotvec[axis] = math.pi / 2
  r = Rotation.from_rotvec(rotvec).as_matrix()
  got = geometry.angular_distance(r[None], np.eye(3)[None]).numpy()
  np.testing.assert_allclose(got, [math.pi / 2], atol=1e-9)
  assert geometry.angular_distance(r[None], r[None]).numpy()[0] == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_angular_distance_gradient_is_finite_and_non_zero_at_180_degrees(dtype):
  # The released code's 2 asin(min(1, x)) keeps a finite, non-zero gradient there; a clip below 1 would zero it.
  flip = tf.constant(Rotation.from_rotvec([0.0, 0.0, math.pi]).as_matrix()[None], dtype)
  start = tf.constant(Rotation.from_rotvec([0.0, 0.0, math.pi - 0.3]).as_matrix()[None], dtype)
  quarter = tf.constant(Rotation.from_rotvec([0.0, math.pi / 2, 0.0]).as_matrix()[None], dtype)
  eye = tf.eye(3, batch_shape=[1], dtype=dtype)
  for rotation, expected_angle in ((flip, math.pi), (start, math.pi - 0.3), (quarter, math.pi / 2)):
    with tf.GradientTape() as tape:
      tape.watch(rotation)
      angle = geometry.angular_distance(rotation, eye)
    grad = tape.gradient(angle, rotation).numpy()
    assert angle.numpy()[0] == pytest.approx(expected_angle, abs=1e-3 if dtype == tf.float32 else 1e-9)
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0
  # Away from 180 degrees the gradient is asin's own: d angle / d R = (R - I) / (|R - I| sqrt(2) cos(angle / 2)).
  expected = (quarter.numpy() - eye.numpy()) / (np.linalg.norm(quarter.numpy() - eye.numpy()) * math.sqrt(2) *
                                                math.cos(math.pi / 4))
  np.testing.assert_allclose(grad, expected, rtol=1e-4 if dtype == tf.float32 else 1e-9)


def test_orientation_targets_hand_derived():
  mv = geometry.look_at_model_view([0.0, 0.0, 30.0])[None].astype(np.float32)
  targets = geometry.orientation_targets(mv, FOCAL).numpy()
  np.testing.assert_allclose(targets[0], [[FOCAL / 30, 0], [-FOCAL / 30, 0]], atol=1e-5)


def test_rotation_angles_and_procrustes_match_tensorflow_graphics():
  # tensorflow-graphics as an independent reference: its Euler sampling and its axis-angle conversion.
  from tensorflow_graphics.geometry.transformation import axis_angle  # pylint: disable=g-import-not-at-top
  from tensorflow_graphics.geometry.transformation import rotation_matrix_3d  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(7)
  r_a = rotation_matrix_3d.from_euler(tf.constant(rng.uniform(-np.pi, np.pi, (64, 3)), tf.float64))
  r_b = rotation_matrix_3d.from_euler(tf.constant(rng.uniform(-np.pi, np.pi, (64, 3)), tf.float64))
  _, angle = axis_angle.from_rotation_matrix(tf.linalg.matmul(r_a, r_b, transpose_a=True))
  np.testing.assert_allclose(geometry.angular_distance(r_a, r_b).numpy(), angle.numpy()[:, 0], atol=1e-6)
  # Keypoints rotated by a tfg rotation: the Procrustes estimate recovers it.
  xyz0 = tf.constant(rng.normal(size=(64, 10, 3)), tf.float64)
  xyz1 = rotation_matrix_3d.rotate(xyz0, r_a[:, tf.newaxis]) + 3.0
  np.testing.assert_allclose(geometry.estimate_rotation(xyz0, xyz1).numpy(), r_a.numpy(), atol=1e-6)
