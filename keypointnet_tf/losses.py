"""The six KeypointNet loss terms and their weighted total, as pure functions.

Shapes follow `geometry` (B batch, K keypoints, H x W image). Each term is computed per view and the views'
values are added, as in the released code (research/keypointnet/main.py). Every normalisation uses the
shapes of the tensors it is given, never a configured batch size (the TF1 separation loss divided by the
--batch_size flag; with a full batch the two agree).
"""

import dataclasses
import math

import tensorflow as tf

from keypointnet_tf import config as config_lib
from keypointnet_tf import geometry


def _reprojection_error(uvz_a, uv_b, mvi_a, mv_b, focal):
  """Mean over the batch of sum_i (1/K) |project(mv_b mvi_a unproject(uvz_a_i)) - uv_b_i|^2 (one direction)."""
  xyz_a = geometry.unproject(uvz_a, focal)  # [B, K, 3] camera a
  xyz_b = geometry.transform_points(mv_b, geometry.transform_points(mvi_a, xyz_a))  # [B, K, 3] camera b
  uv_ab = geometry.project(xyz_b, focal)[..., :2]  # [B, K, 2]
  return tf.reduce_mean(tf.reduce_sum(tf.square(uv_ab - uv_b), axis=-1))


def consistency_loss(uvz0, uvz1, mv0, mvi0, mv1, mvi1, focal):
  """Multi-view consistency: each view's keypoints, lifted to 3D and reprojected into the other view, should
  land on that view's keypoints. Only (u, v) is compared, as in the code; z is not.

  Args:
    uvz0, uvz1: [B, K, 3] float. Predicted (u, v, z) in views 0 and 1.
    mv0, mvi0, mv1, mvi1: [B, 4, 4] float. Object-to-camera matrices and their inverses.
    focal: float, [] or [B]. NDC focal length.
  Returns:
    [] float. Sum over the two directions of mean_b sum_i (1/K) |error_i|^2, in NDC^2. The TF1 code's
    normalisation (the paper's 1/(2K) form would be half of this).
  """
  return (_reprojection_error(uvz0, uvz1[..., :2], mvi0, mv1, focal) +
          _reprojection_error(uvz1, uvz0[..., :2], mvi1, mv0, focal))


def add_pose_noise(xyz0, xyz1, noise_stddev, generator):
  """Both keypoint sets with i.i.d. Gaussian noise on every coordinate (the pose loss's and the metric's noise).

  Args:
    xyz0, xyz1: [B, K, 3] float. Keypoints in camera 0 and camera 1 space (xyz1 is cast to xyz0's dtype).
    noise_stddev: float. Standard deviation in object units; 0 returns the inputs unchanged.
    generator: tf.random.Generator. Source of the noise; required when noise_stddev > 0. xyz0's noise is drawn
      first, then xyz1's.
  Returns:
    (xyz0, xyz1) with noise, [B, K, 3] each.
  """
  xyz0 = tf.convert_to_tensor(xyz0)
  xyz1 = tf.cast(xyz1, xyz0.dtype)
  if not noise_stddev:
    return xyz0, xyz1
  if generator is None:
    raise ValueError("A tf.random.Generator is required when the pose noise is > 0. "
                     f"Received: noise_stddev={noise_stddev}, generator=None")
  return (xyz0 + generator.normal(tf.shape(xyz0), stddev=noise_stddev, dtype=xyz0.dtype),
          xyz1 + generator.normal(tf.shape(xyz1), stddev=noise_stddev, dtype=xyz1.dtype))


def pose_loss(xyz0, xyz1, rotation, noise_stddev=0.0, generator=None):
  """Relative-pose loss: angle between the Procrustes rotation of the keypoints and the true rotation.

  Args:
    xyz0, xyz1: [B, K, 3] float. Keypoints in camera 0 and camera 1 space.
    rotation: [B, 3, 3] float. True rotation from camera 0 to camera 1 (`geometry.relative_rotation`).
    noise_stddev: float. Standard deviation of i.i.d. Gaussian noise (object units) added to every
      coordinate of both keypoint sets before the SVD (0.1 in the code). 0 disables it.
    generator: tf.random.Generator. Source of the noise; required when noise_stddev > 0.
  Returns:
    dict with "angular": [] float, mean geodesic angle in radians (the loss), and "chordal": [] float, mean
    squared Frobenius distance (logged only, as in the code).
  """
  xyz0, xyz1 = add_pose_noise(xyz0, xyz1, noise_stddev, generator)
  estimate = geometry.estimate_rotation(xyz0, xyz1)
  rotation = tf.cast(rotation, estimate.dtype)
  return {
      "angular": tf.reduce_mean(geometry.angular_distance(estimate, rotation)),
      "chordal": tf.reduce_mean(tf.square(geometry.chordal_distance(estimate, rotation))),
  }


def separation_loss(xyz, delta):
  """Hinge on keypoint pairs whose squared distance is below `delta` (one view).

  As in the code, all K^2 ordered pairs are summed, including i = j; each diagonal term is the constant
  delta, which adds delta / 2 to the value and nothing to the gradient.

  Args:
    xyz: [B, K, 3] float. Keypoints in camera space.
    delta: float. Threshold on the squared distance (0.05: pairs closer than ~0.224 units cost).
  Returns:
    [] float. sum_b sum_ij max(0, delta - |x_i - x_j|^2) / (2 B K).
  """
  xyz = tf.convert_to_tensor(xyz)
  diff = xyz[:, :, tf.newaxis, :] - xyz[:, tf.newaxis, :, :]  # [B, K, K, 3]
  hinge = tf.nn.relu(delta - tf.reduce_sum(tf.square(diff), axis=-1))  # [B, K, K]
  batch, num_kp = tf.shape(xyz)[0], tf.shape(xyz)[1]
  return tf.reduce_sum(hinge) / tf.cast(2 * batch * num_kp, xyz.dtype)


def silhouette_loss(prob, mask):
  """-log of each keypoint's probability mass on the object (one view).

  Args:
    prob: [B, K, H, W] float. Spatial-softmax heatmaps (each sums to 1).
    mask: [B, H, W] float or bool. 1 on the object (alpha > 0), 0 on the background.
  Returns:
    [] float. mean_{b,i} -log(sum_p prob_i(p) mask(p) + 1e-12).
  """
  prob = tf.convert_to_tensor(prob)
  mask = tf.cast(mask, prob.dtype)
  mass = tf.reduce_sum(prob * mask[:, tf.newaxis], axis=[2, 3])  # [B, K]
  return tf.reduce_mean(-tf.math.log(mass + 1e-12))


def variance_loss(prob, uv):
  """Spread of each heatmap around its expectation, in NDC^2 (one view).

  Args:
    prob: [B, K, H, W] float. Spatial-softmax heatmaps.
    uv: [B, K, 2] float. Their expectations (the keypoints' NDC positions).
  Returns:
    [] float. mean_{b,i} sum_p prob_i(p) |grid(p) - uv_i|^2.
  """
  prob = tf.convert_to_tensor(prob)
  grid = geometry.ndc_grid(tf.shape(prob)[2], tf.shape(prob)[3], prob.dtype)  # [H, W, 2]
  diff = grid[tf.newaxis, tf.newaxis] - tf.cast(uv, prob.dtype)[:, :, tf.newaxis, tf.newaxis, :]  # [B,K,H,W,2]
  return tf.reduce_mean(tf.reduce_sum(prob * tf.reduce_sum(tf.square(diff), axis=-1), axis=[2, 3]))


def orientation_loss(orientation, mv, focal):
  """MSE between the orientation network's two points and the projected object +x and -x axis ends (one view).

  Args:
    orientation: [B, 2, 2] float. Predicted NDC (u, v) of the +x end ([:, 0]) and the -x end ([:, 1]).
    mv: [B, 4, 4] float. Object-to-camera matrix.
    focal: float, [] or [B]. NDC focal length.
  Returns:
    [] float. Mean over the B x 2 x 2 elements of the squared error.
  """
  orientation = tf.convert_to_tensor(orientation)
  target = geometry.orientation_targets(tf.cast(mv, orientation.dtype), focal)
  return tf.reduce_mean(tf.square(orientation - target))


def anchor_loss(uv, mv, focal):
  """Warm-up anchor (not in the paper): keypoints 0 and 1 pulled to the orientation targets (one view).

  The orientation network's targets, the projections of the object's +x and -x axis ends, come from the known
  pose like every other training signal; the anchor asks keypoints 0 and 1 to land there too. With two keypoints
  tied to object points from the start, the relative-pose and consistency losses have a frame to build on and
  the other keypoints spread over the object within a CPU budget, where the paper's losses alone keep every
  keypoint in a cluster at the object's centre for thousands of steps (docs/research.md). The anchored
  preset (`--preset=cpu_anchor`) decays its weight to 0 halfway through training, so the second half is trained
  by the paper's losses only.

  Args:
    uv: [B, K, 2] float, K >= 2. Predicted keypoints (NDC).
    mv: [B, 4, 4] float. Object-to-camera matrix.
    focal: float, [] or [B]. NDC focal length.
  Returns:
    [] float. Mean over the B x 2 x 2 elements of the squared error (as `orientation_loss`).
  """
  return orientation_loss(uv[:, :2], mv, focal)


# The lateral anchor's pulled keypoints (0 .. LATERAL_KEYPOINTS - 1; even ones to +Z, odd ones to -Z) and how far
# from the symmetry plane it asks them to be, in object units (objects are 2 long; the procedural planes' wing
# roots sit 0.10 from the plane, their wing and stabilizer tips further out).
LATERAL_KEYPOINTS = 6
LATERAL_MARGIN = 0.15


def lateral_anchor_loss(uvz, mvi, focal, num_keypoints=LATERAL_KEYPOINTS, margin=LATERAL_MARGIN):
  """Lateral anchor (not in the paper): keypoints pulled to alternate sides of the object's symmetry plane.

  Every label-free run of the recipe study put most keypoints on the plane of mirror symmetry (X-Y), where the
  losses cost the same for a step left or right, and they stay where the early steps leave them
  (reproduction/trials.md). This term asks keypoint k < num_keypoints to lie at least `margin` from the plane, on
  the +Z side for even k and the -Z side for odd k, and leaves the other keypoints free. It reads the object frame
  from the known pose (the inverse model-view matrix), as the orientation targets do, not from any keypoint label;
  but which plane is the mirror plane is a prior about the category, so a run with it is not label-free in the
  paper's sense. `--preset=cpu_lateral` adds it at weight 10, decaying to 0 over the silhouette warm-up
  (LossConfig.extra_terms, the "warmup_decay" schedule).

  Args:
    uvz: [B, K, 3] float. Predicted keypoints (NDC u, v and camera z).
    mvi: [B, 4, 4] float. Camera-to-object matrix of the view.
    focal: float, [] or [B]. NDC focal length.
    num_keypoints: int. How many keypoints are pulled (at most K are).
    margin: float. Distance from the plane (object units) from which on a keypoint costs nothing.
  Returns:
    [] float. Mean over B x min(K, num_keypoints) of relu(margin - side_k * z_k)^2, z_k the keypoint's object Z.
  """
  uvz = tf.convert_to_tensor(uvz)
  count = min(uvz.shape[1], num_keypoints)
  pulled = geometry.transform_points(tf.cast(mvi, uvz.dtype), geometry.unproject(uvz[:, :count], focal))
  side = tf.where(tf.range(count) % 2 == 0, 1.0, -1.0)  # [count]
  offset = pulled[..., geometry.SYMMETRY_AXIS] * tf.cast(side, uvz.dtype)  # [B, count], > 0 on its own side
  return tf.reduce_mean(tf.square(tf.nn.relu(margin - offset)))


# Loss terms that are not the paper's, registered by name (the lateral anchor below; the research package registers
# its variants). A term is a function (outputs0, outputs1, batch, loss_config) -> [] float; LossConfig.extra_terms
# names the registered terms a run adds to the total, with their weights.
_EXTRA_TERMS = {}
# How each registered term's weight changes over training (a factor from the silhouette warm-up's schedule):
#   "constant": full weight from step 0; "silhouette_warmup": rises with the silhouette weight (a variant of the
#   silhouette term does); "warmup_decay": 1 - that factor, full at step 0 and 0 from the warm-up's end on (a
#   guide for the warm-up only; check_terms refuses it in a run without a warm-up, silhouette_warmup_steps 0).
TERM_SCHEDULES = ("constant", "silhouette_warmup", "warmup_decay")
_TERM_SCHEDULE = {}


def register_term(name, term, schedule="constant"):
  """Makes `term` available to LossConfig.extra_terms under `name` (e.g. keypointnet_research.losses).

  Args:
    name: str.
    term: callable (outputs0, outputs1, batch, loss_config) -> [] float.
    schedule: one of TERM_SCHEDULES, how the term's weight follows the silhouette warm-up.
  """
  if schedule not in TERM_SCHEDULES:
    raise ValueError(f"Unknown schedule {schedule!r} for loss term {name!r}; choose from {TERM_SCHEDULES}.")
  if name in _EXTRA_TERMS and _EXTRA_TERMS[name] is not term:
    raise ValueError(f"A loss term named {name!r} is already registered.")
  _EXTRA_TERMS[name] = term
  _TERM_SCHEDULE[name] = schedule


def _lateral_anchor_term(outputs0, outputs1, batch, loss_config):
  del loss_config
  return tf.add_n([lateral_anchor_loss(out["uvz"], batch[mvi], batch["focal"])
                   for out, mvi in ((outputs0, "mvi0"), (outputs1, "mvi1"))])


register_term("lateral_anchor", _lateral_anchor_term, schedule="warmup_decay")


def check_terms(loss_config):
  """Refuses extra terms that are not registered or could not act in this run; training calls it before step 0.

  Args:
    loss_config: config.LossConfig.
  Raises:
    ValueError: an extra term that is not registered (the message says which module registers research terms), or
      a "warmup_decay" term in a run without a silhouette warm-up (its weight would be 0 at every step).
  """
  for name, _ in loss_config.extra_terms:
    if name not in _EXTRA_TERMS:
      raise ValueError(f"Unknown loss term {name!r} in extra_terms; registered: {sorted(_EXTRA_TERMS)}. Research "
                       "terms are registered by importing keypointnet_research.losses.")
    if _TERM_SCHEDULE[name] == "warmup_decay" and not loss_config.silhouette_warmup_steps:
      raise ValueError(f"The loss term {name!r} acts during the silhouette warm-up only (its weight decays to 0 at "
                       "the warm-up's end), and this run has none: set silhouette_warmup_steps > 0 (e.g. "
                       f"--silhouette_warmup_steps={config_lib.LATERAL_WARMUP_STEPS}) or leave the term out "
                       "(--preset=cpu has no extra terms).")


def total_loss(outputs0, outputs1, batch, loss_config=config_lib.LossConfig(), generator=None, anchor_scale=1.0,
               silhouette_scale=1.0):
  """All six terms, summed over both views where per-view, and their weighted total.

  Args:
    outputs0, outputs1: dicts from `KeypointNet.call` for view 0 and view 1 (uv [B,K,2], z [B,K],
      uvz [B,K,3], prob [B,K,H,W], orientation [B,2,2]).
    batch: dict with "image0", "image1" ([B, H, W, 4] RGBA in [0, 1]; alpha > 0 is the mask), "mv0", "mvi0",
      "mv1", "mvi1" ([B, 4, 4]) and "focal" ([B] or []).
    loss_config: config.LossConfig. Weights, separation delta and pose noise.
    generator: tf.random.Generator, needed when loss_config.pose_noise_stddev > 0.
    anchor_scale: float or [] tensor. Factor on the anchor weight (its decay schedule).
    silhouette_scale: float or [] tensor. Factor on the silhouette and variance weights (their warm-up), and on
      the extra terms registered with the "silhouette_warmup" schedule (1 - it on the "warmup_decay" ones).
  Returns:
    dict of [] float32: "total", the six weighted terms' raw values "pose", "consistency", "separation",
    "silhouette", "orientation", "variance", plus "chordal" (logged only), "anchor" when the anchor weight is not
    0, and each of loss_config.extra_terms by its name.
  Raises:
    ValueError: from `check_terms`.
  """
  focal = batch["focal"]
  views = ((outputs0, batch["image0"], batch["mv0"]), (outputs1, batch["image1"], batch["mv1"]))
  xyz = [geometry.unproject(tf.cast(out["uvz"], tf.float32), focal) for out, _, _ in views]
  pose = pose_loss(xyz[0], xyz[1], geometry.relative_rotation(batch["mv0"], batch["mv1"]),
                   loss_config.pose_noise_stddev, generator)
  terms = {
      "pose": pose["angular"],
      "consistency": consistency_loss(outputs0["uvz"], outputs1["uvz"], batch["mv0"], batch["mvi0"],
                                      batch["mv1"], batch["mvi1"], focal),
      "separation": tf.add_n([separation_loss(x, loss_config.separation_delta) for x in xyz]),
      "silhouette": tf.add_n([silhouette_loss(out["prob"], image[..., 3] > 0) for out, image, _ in views]),
      "orientation": tf.add_n([orientation_loss(out["orientation"], mv, focal) for out, _, mv in views]),
      "variance": tf.add_n([variance_loss(out["prob"], out["uv"]) for out, _, _ in views]),
  }
  weights = dataclasses.asdict(loss_config.weights)
  if weights["anchor"]:
    terms["anchor"] = tf.add_n([anchor_loss(out["uv"], mv, focal) for out, _, mv in views])
  check_terms(loss_config)
  for name, weight in loss_config.extra_terms:
    terms[name] = _EXTRA_TERMS[name](outputs0, outputs1, batch, loss_config)
    weights[name] = weight
  terms = {name: tf.cast(value, tf.float32) for name, value in terms.items()}
  silhouette_scale = tf.cast(silhouette_scale, tf.float32)
  term_scales = {"constant": 1.0, "silhouette_warmup": silhouette_scale, "warmup_decay": 1.0 - silhouette_scale}
  scales = {"anchor": tf.cast(anchor_scale, tf.float32), "silhouette": silhouette_scale, "variance": silhouette_scale,
            **{name: term_scales[_TERM_SCHEDULE[name]] for name, _ in loss_config.extra_terms}}
  terms["total"] = tf.add_n([weights[name] * scales.get(name, 1.0) * value for name, value in terms.items()])
  terms["chordal"] = tf.cast(pose["chordal"], tf.float32)
  return terms


def supervised_loss(uvz, mv, keypoints, valid, focal):
  """The supervised baseline's regression loss (one view): mean squared (u, v, z) error over valid keypoints.

  Args:
    uvz: [B, K, 3] float. Predicted keypoints.
    mv: [B, 4, 4] float. Object-to-camera matrix of the view.
    keypoints: [B, K, 3] float. Ground-truth keypoints in the object frame.
    valid: [B, K] bool. Which ground-truth keypoints exist.
    focal: float, [] or [B]. NDC focal length.
  Returns:
    [] float32: sum over (u, v, z) of the squared error, averaged over valid keypoints (0 when none is valid).
  """
  target = geometry.project(geometry.transform_points(mv, keypoints), focal)  # [B, K, 3]
  mask = tf.cast(valid, tf.float32)
  error = tf.reduce_sum(tf.square(tf.cast(uvz, tf.float32) - target), axis=-1)  # [B, K]
  return tf.reduce_sum(error * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


def supervised_total(outputs0, outputs1, batch, orientation_weight=1.0):
  """The supervised baseline's loss over both views: keypoint regression plus the orientation loss.

  Args:
    outputs0, outputs1: dicts from `KeypointNet.call` (uvz [B,K,3], orientation [B,2,2]).
    batch: dict with "mv0", "mv1" ([B, 4, 4]), "keypoints" ([B, K, 3] object frame), "keypoint_valid" ([B, K])
      and "focal" ([B] or []).
    orientation_weight: float.
  Returns:
    dict of [] float32: "supervised", "orientation" and their weighted "total".
  """
  views = ((outputs0, batch["mv0"]), (outputs1, batch["mv1"]))
  terms = {
      "supervised": tf.add_n([supervised_loss(out["uvz"], mv, batch["keypoints"], batch["keypoint_valid"],
                                              batch["focal"]) for out, mv in views]),
      "orientation": tf.add_n([orientation_loss(out["orientation"], mv, batch["focal"]) for out, mv in views]),
  }
  terms["total"] = terms["supervised"] + orientation_weight * terms["orientation"]
  return terms


def angle_degrees(radians):
  """Radians to degrees (for logs and tables)."""
  return radians * (180.0 / math.pi)
