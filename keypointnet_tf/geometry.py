"""Camera conventions, 4x4 transforms, NDC grids and weighted Procrustes.

This module is the one place that owns the conventions. Everything else (losses, model, data generation,
evaluation, export) calls these functions instead of re-deriving them. The conventions are the released TF1
code's (research/keypointnet/main.py and tools/render.py), so the paper's released TFRecords can be used as
they are.

Dimensions: `B` batch, `K` keypoints, `H`, `W` image height and width; `...` means optional leading batch
dimensions.

Conventions:
- Camera space is OpenGL's: the camera sits at the origin looking down -Z, +Y is up, +X is right. Points in
  front of the camera have *negative* z (about -30 for the paper's renders, whose camera is 30 units away).
- Projection to normalised device coordinates (NDC) with focal length `f` (f = cot(fov / 2), 22.90 for the
  paper's 5 degree field of view): u = -f * x / z, v = -f * y / z. NDC spans [-1, 1] across the image, u to the
  right and v *up*: the top image row has v close to +1.
- Pixel (row r, column j) of an H x W image has its centre at u = (j + 0.5) / (W / 2) - 1 and
  v = -((r + 0.5) / (H / 2) - 1).
- Object ("world") space is ShapeNet's OBJ frame, Y up, the object's front along +X and its bilateral symmetry
  plane X-Y, so Z runs across it (SYMMETRY_AXIS). The released data's 4x4 model-view matrix `mv` maps
  object to camera space; `mvi` is its inverse. Both are stored as 16 floats in *row-major* order of the matrix
  M that acts on column vectors: p_cam = M @ [x, y, z, 1]^T. The TF1 code reshapes to 4x4 and transposes so
  that it can multiply row vectors (p_row @ M^T); this module uses column vectors throughout, which is the
  same arithmetic.
- The ground-truth orientation flag of a view is 1 where M[0, 0] > 0 (the object's +x axis points to the
  camera's right) and 0 otherwise (TF1: max(0, sign(mv[0]))).
- The relative rotation of a pair is R_rel = (M1 @ M0^-1)[:3, :3], which maps camera-0 coordinates to
  camera-1 coordinates. `estimate_rotation` returns the same direction: xyz1 - c1 = R (xyz0 - c0). (The TF1
  code's estimate_rotation returns R^T and compares it with R_rel^T; the angle is the same.)
"""

import math

import numpy as np
import tensorflow as tf

# Added to z before dividing, as in the TF1 code's project().
_PROJECT_EPSILON = 1e-8
# The object frame's axis across the categories' plane of mirror symmetry (X-Y): Z. The procedural generator
# builds its objects in this frame (its own SYMMETRY_AXIS, for its NumPy-only workers, is tested equal to this).
SYMMETRY_AXIS = 2


# The paper's camera (its render script): a 5 degree field of view at distance 30 from the object's centre. The
# data set builder renders with these by default, and the network's depth head is biased by the distance.
PAPER_FOV_DEGREES = 5.0
PAPER_CAMERA_DISTANCE = 30.0


def focal_from_fov(fov_degrees):
  """NDC focal length of a symmetric perspective camera: f = cot(fov / 2). 5 degrees gives 22.904."""
  return 1.0 / math.tan(math.radians(fov_degrees) / 2.0)


def _check_last_dim(name, tensor, size):
  tensor = tf.convert_to_tensor(tensor)
  rank = tensor.shape.rank
  if rank is not None and (rank < 1 or tensor.shape[-1] not in (None, size)):
    raise ValueError(f"`{name}` must have shape [..., {size}]. Received: shape={tensor.shape}")
  return tensor


def _broadcastable_focal(focal, points):
  """Casts `focal` ([] or [B]) to points' dtype, shaped [B, 1, ..., 1] to broadcast against [B, ..., 3]."""
  focal = tf.cast(focal, points.dtype)
  if focal.shape.rank == 0:
    return focal
  if focal.shape.rank != 1:
    raise ValueError(f"`focal` must be a scalar or have shape [B]. Received: shape={focal.shape}")
  return tf.reshape(focal, tf.concat([tf.shape(focal), tf.ones([points.shape.rank - 1], tf.int32)], 0))


def project(xyz, focal):
  """Camera space to NDC plus depth: u = -f x / z, v = -f y / z.

  Args:
    xyz: [..., 3] float. Points in camera space (z < 0 in front of the camera).
    focal: float, [] or [B] float (one per example when `xyz` is [B, ..., 3]). NDC focal length.
  Returns:
    [..., 3] float. (u, v, z): NDC coordinates (v up) and the unchanged camera z.
  """
  xyz = _check_last_dim("xyz", xyz, 3)
  focal = _broadcastable_focal(focal, xyz)
  z = xyz[..., 2:3]
  return tf.concat([-focal * xyz[..., :2] / (z + _PROJECT_EPSILON), z], axis=-1)


def unproject(uvz, focal):
  """NDC plus depth to camera space: x = -u z / f, y = -v z / f. Inverse of `project`.

  Args:
    uvz: [..., 3] float. NDC coordinates (v up) and camera z (negative in front of the camera).
    focal: float, [] or [B] float (see `project`).
  Returns:
    [..., 3] float. Points in camera space.
  """
  uvz = _check_last_dim("uvz", uvz, 3)
  focal = _broadcastable_focal(focal, uvz)
  z = uvz[..., 2:3]
  return tf.concat([-uvz[..., :2] * z / focal, z], axis=-1)


def matrix_from_flat(flat):
  """Reads the released TFRecords' 16-float layout.

  Args:
    flat: [..., 16] float. A 4x4 matrix in row-major order.
  Returns:
    [..., 4, 4] float. The matrix M that acts on column vectors.
  """
  flat = _check_last_dim("flat", flat, 16)
  return tf.reshape(flat, tf.concat([tf.shape(flat)[:-1], [4, 4]], axis=0))


def flat_from_matrix(matrix):
  """Inverse of `matrix_from_flat`: [..., 4, 4] -> [..., 16] row-major."""
  matrix = tf.convert_to_tensor(matrix)
  return tf.reshape(matrix, tf.concat([tf.shape(matrix)[:-2], [16]], axis=0))


def transform_points(matrix, xyz):
  """Applies a 4x4 homogeneous transform to points.

  Args:
    matrix: [B, 4, 4] float. Acts on column vectors (e.g. `mv`: object -> camera).
    xyz: [B, K, 3] float. Points.
  Returns:
    [B, K, 3] float. matrix @ [xyz, 1], divided by w (w is 1 for rigid transforms).
  """
  xyz = _check_last_dim("xyz", xyz, 3)
  matrix = tf.cast(matrix, xyz.dtype)
  out = tf.einsum("bij,bkj->bki", matrix[:, :3, :3], xyz) + matrix[:, tf.newaxis, :3, 3]  # [B, K, 3]
  return out


def relative_rotation(mv0, mv1):
  """Rotation taking camera-0 coordinates to camera-1 coordinates: (M1 @ M0^-1)[:3, :3] = R1 @ R0^T.

  Args:
    mv0, mv1: [..., 4, 4] float. Object-to-camera matrices of the two views (rigid).
  Returns:
    [..., 3, 3] float.
  """
  r0 = tf.convert_to_tensor(mv0)[..., :3, :3]
  r1 = tf.cast(mv1, r0.dtype)[..., :3, :3]
  return tf.linalg.matmul(r1, r0, transpose_b=True)


def orientation_flag_from_mv(mv):
  """Ground-truth orientation flag: 1.0 where M[0, 0] > 0 (object +x points right in the image), else 0.0.

  Args:
    mv: [..., 4, 4] float. Object-to-camera matrix.
  Returns:
    [...] float32.
  """
  return tf.cast(tf.convert_to_tensor(mv)[..., 0, 0] > 0, tf.float32)


def orientation_targets(mv, focal):
  """NDC projections of the object-space points (+1, 0, 0) and (-1, 0, 0): the orientation network's targets.

  Args:
    mv: [B, 4, 4] float. Object-to-camera matrix.
    focal: float, [] or [B] float. NDC focal length.
  Returns:
    [B, 2, 2] float. [:, 0] is the +x end's (u, v), [:, 1] the -x end's.
  """
  mv = tf.convert_to_tensor(mv)
  ends = tf.constant([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]], mv.dtype)
  ends = tf.broadcast_to(ends, tf.stack([tf.shape(mv)[0], 2, 3]))
  return project(transform_points(mv, ends), focal)[..., :2]


def ndc_grid(height, width, dtype=tf.float32):
  """NDC coordinates of pixel centres.

  Args:
    height, width: ints or scalar int tensors. Image size in pixels.
  Returns:
    [H, W, 2] float. [..., 0] = u = (j + 0.5) / (W / 2) - 1 (right), [..., 1] = v = -((r + 0.5) / (H / 2) - 1)
    (up: the top row is close to +1).
  """
  u = (tf.cast(tf.range(width), dtype) + 0.5) / (tf.cast(width, dtype) / 2.0) - 1.0
  v = -((tf.cast(tf.range(height), dtype) + 0.5) / (tf.cast(height, dtype) / 2.0) - 1.0)
  uu, vv = tf.meshgrid(u, v)  # [H, W] each
  return tf.stack([uu, vv], axis=-1)


def pixel_from_ndc(uv, height, width):
  """NDC (u right, v up) to continuous pixel coordinates (column, row); inverse of `ndc_grid`.

  Args:
    uv: [..., 2] float NDC.
    height, width: scalars or tensors broadcastable against uv[..., 0] (e.g. [N, 1] for uv [N, K, 2]).
  Returns:
    [..., 2] float (x = column, y = row); integer values are pixel centres.
  """
  uv = tf.convert_to_tensor(uv)
  height = tf.cast(height, uv.dtype)
  width = tf.cast(width, uv.dtype)
  return tf.stack([(uv[..., 0] + 1.0) * width / 2.0 - 0.5, (1.0 - uv[..., 1]) * height / 2.0 - 0.5], axis=-1)


def estimate_rotation(xyz0, xyz1, weights=None):
  """Weighted Kabsch / orthogonal Procrustes through `tf.linalg.svd`.

  Finds the rotation R minimising sum_i w_i |R (x0_i - c0) - (x1_i - c1)|^2 with weighted centroids c. No
  noise is added here (the TF1 code hid sigma = 0.1 noise inside this function; callers add noise
  explicitly, see `losses.pose_loss`).

  Args:
    xyz0: [B, K, 3] float. Keypoints in camera 0.
    xyz1: [B, K, 3] float. The same keypoints in camera 1.
    weights: optional [B, K] float, non-negative. Uniform (1/K) when None. Normalised to sum to 1.
  Returns:
    [B, 3, 3] float. R with xyz1 - c1 ~= R (xyz0 - c0), det(R) = +1 (the reflection that a raw SVD solution
    can contain is removed by the determinant fix).
  """
  xyz0 = _check_last_dim("xyz0", xyz0, 3)
  xyz1 = tf.cast(_check_last_dim("xyz1", xyz1, 3), xyz0.dtype)
  if xyz0.shape.rank != 3:
    raise ValueError(f"`xyz0` must have shape [B, K, 3]. Received: shape={xyz0.shape}")
  if weights is None:
    weights = tf.ones(tf.shape(xyz0)[:2], xyz0.dtype)
  weights = tf.cast(weights, xyz0.dtype)
  weights = weights / tf.maximum(tf.reduce_sum(weights, axis=1, keepdims=True), 1e-12)  # [B, K]
  w = weights[..., tf.newaxis]  # [B, K, 1]
  centred0 = xyz0 - tf.reduce_sum(w * xyz0, axis=1, keepdims=True)
  centred1 = xyz1 - tf.reduce_sum(w * xyz1, axis=1, keepdims=True)
  covariance = tf.linalg.matmul(centred0 * w, centred1, transpose_a=True)  # [B, 3, 3] = X0^T diag(w) X1
  _, u, v = tf.linalg.svd(covariance)  # covariance = U S V^T
  # det(V U^T) is +-1, piecewise constant: no gradient. Written as the triple product row0 . (row1 x row2)
  # because XLA has no MatrixDeterminant kernel, and under stop_gradient so that no MatrixInverse (det's
  # gradient) enters the backward pass, where a non-finite input would raise instead of propagating NaN.
  vu = tf.stop_gradient(tf.linalg.matmul(v, u, transpose_b=True))  # [B, 3, 3]
  det = tf.reduce_sum(vu[:, 0] * tf.linalg.cross(vu[:, 1], vu[:, 2]), axis=-1)  # [B]
  ones = tf.ones_like(det)
  fix = tf.linalg.diag(tf.stack([ones, ones, det], axis=-1))  # [B, 3, 3]
  return tf.linalg.matmul(tf.linalg.matmul(v, fix), u, transpose_b=True)  # V diag(1, 1, d) U^T


def chordal_distance(r_a, r_b):
  """Frobenius norm |Ra - Rb|_F, with an epsilon inside the square root so its gradient is finite at 0.

  Args:
    r_a, r_b: [..., 3, 3] float. Rotation matrices.
  Returns:
    [...] float.
  """
  r_a = tf.convert_to_tensor(r_a)
  r_b = tf.cast(r_b, r_a.dtype)
  return tf.sqrt(tf.reduce_sum(tf.square(r_a - r_b), axis=[-2, -1]) + 1e-12)


# Smallest 1 - x^2 the asin derivative divides by: float32's spacing below 1 (x = 1 - 6e-8), so the derivative
# stays finite (at most ~2,900) at and near 180 degrees, the largest value the released code's float32 asin reaches.
_ASIN_FLOOR = 2.0 ** -23


@tf.custom_gradient
def _asin_to_one(x):
  """asin(min(x, 1)) for x >= 0, with the derivative 1 / sqrt(1 - x^2) bounded by 1 / sqrt(_ASIN_FLOOR).

  Round-off can put x a little above 1 at 180 degrees; the value is then pi / 2 and the derivative its bound, not 0.
  """
  x = tf.minimum(x, 1.0)
  def grad(dy):
    return dy * tf.math.rsqrt(tf.maximum(1.0 - tf.square(x), _ASIN_FLOOR))
  return tf.asin(x), grad


def angular_distance(r_a, r_b):
  """Geodesic angle between rotations: 2 asin(|Ra - Rb|_F / (2 sqrt 2)), in radians.

  As the released code (2 asin(min(1, .))): the value is exact up to 180 degrees, and round-off beyond the asin's
  domain counts as 180. The gradient is finite and non-zero at 180 degrees too (the derivative of asin is bounded
  by _ASIN_FLOOR, also where round-off put the argument above 1), so a pair predicted front-to-back still gets a
  pose gradient; at 0 the chordal distance's square root has an epsilon.

  Args:
    r_a, r_b: [..., 3, 3] float. Rotation matrices.
  Returns:
    [...] float. Angle in [0, pi].
  """
  x = chordal_distance(r_a, r_b) / (2.0 * math.sqrt(2.0))
  return 2.0 * _asin_to_one(x)


# ----------------------------------------------------------------------------------------------------------
# NumPy helpers for data generation (the renderer and the TFDS builder use these, so the camera convention is
# still written down once).
# ----------------------------------------------------------------------------------------------------------


def look_at_model_view(eye, target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0), roll=0.0):
  """Object-to-camera matrix of an OpenGL camera at `eye` looking at `target` (camera -Z forward, +Y up).

  Args:
    eye: [3] float. Camera position in object space (Y up).
    target: [3] float. Point the camera looks at.
    up: [3] float. World direction that appears up in the image (before roll).
    roll: float. Rotation about the viewing axis, radians (positive turns the image counter-clockwise).
  Returns:
    [4, 4] float64 numpy array M (column-vector convention, p_cam = M p_obj).
  """
  eye = np.asarray(eye, np.float64)
  forward = np.asarray(target, np.float64) - eye
  forward /= np.linalg.norm(forward)
  right = np.cross(forward, np.asarray(up, np.float64))
  if np.linalg.norm(right) < 1e-9:  # Looking straight along `up`: any right vector will do.
    right = np.cross(forward, np.array([0.0, 0.0, 1.0]))
  right /= np.linalg.norm(right)
  cam_up = np.cross(right, forward)
  c, s = math.cos(roll), math.sin(roll)
  right, cam_up = c * right + s * cam_up, -s * right + c * cam_up
  rotation = np.stack([right, cam_up, -forward])  # rows: camera axes in object space
  mv = np.eye(4)
  mv[:3, :3] = rotation
  mv[:3, 3] = -rotation @ eye
  return mv


def camera_pose_from_model_view(mv):
  """Camera-to-object pose (what pyrender's scene node takes): the rigid inverse of `mv`, numpy [4, 4]."""
  mv = np.asarray(mv, np.float64)
  pose = np.eye(4)
  pose[:3, :3] = mv[:3, :3].T
  pose[:3, 3] = -mv[:3, :3].T @ mv[:3, 3]
  return pose


def project_numpy(xyz, focal):
  """NumPy twin of `project` for data generation: [..., 3] camera points -> [..., 3] (u, v, z)."""
  xyz = np.asarray(xyz, np.float64)
  z = xyz[..., 2:3]
  return np.concatenate([-focal * xyz[..., :2] / (z + _PROJECT_EPSILON), z], axis=-1)
