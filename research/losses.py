"""Loss variants tried in the research trials (reproduction/trials.md), none of them the paper's.

Importing this module registers them with `keypointnet_tf.losses.register_term`, so that a LossConfig names them
in `extra_terms`:
  triangulation: depth-free multi-view consistency (`triangulation_loss`).
  image_separation: the separation loss measured between keypoints lifted to their mean depth
    (`image_plane_points`); with the separation weight set to 0 it replaces the paper's camera-space separation.
  silhouette_dilated: the silhouette loss against the object's mask grown by one pixel (`dilated_silhouette_loss`);
    with the silhouette weight set to 0 it replaces the paper's silhouette term, and follows its warm-up.
The lateral anchor, tried here first, is now the library's (`keypointnet_tf.losses.lateral_anchor_loss`,
`--preset=cpu_lateral`). Such runs are reported as "KeypointNet (variant: ...)" with the terms and weights listed.
"""

import tensorflow as tf

from keypointnet_tf import geometry
from keypointnet_tf import losses


def triangulate_midpoint(uv_a, uv_b, mvi_a, mv_b, focal, min_det=1e-4):
  """Triangulates points seen at `uv_a` in camera a and `uv_b` in camera b (midpoint of the closest approach).

  Each NDC point defines a ray from its camera centre, direction unproject((u, v, -1)). The point returned lies
  halfway between the closest points of the two rays; it depends on the cameras' relative pose
  T = mv_b @ mvi_a only, not on any predicted depth.

  Args:
    uv_a, uv_b: [B, K, 2] float. NDC coordinates (v up) in cameras a and b.
    mvi_a, mv_b: [B, 4, 4] float. Camera a's inverse model-view matrix and camera b's model-view matrix.
    focal: float, [] or [B]. NDC focal length.
    min_det: float. Lower bound on the 2x2 normal equations' determinant (sin^2 of the angle between the rays
      for unit directions), which keeps nearly parallel rays finite.
  Returns:
    [B, K, 3] float. The points in camera b space.
  """
  uv_a = tf.convert_to_tensor(uv_a)
  uv_b = tf.cast(uv_b, uv_a.dtype)
  transform = tf.matmul(tf.cast(mv_b, uv_a.dtype), tf.cast(mvi_a, uv_a.dtype))  # [B, 4, 4] camera a -> camera b

  def direction(uv):
    depth = -tf.ones_like(uv[..., :1])  # camera z of a point one unit in front of the camera
    return geometry.unproject(tf.concat([uv, depth], axis=-1), focal)  # [B, K, 3], that point on the ray

  d_b = direction(uv_b)
  e = tf.einsum("bij,bkj->bki", transform[:, :3, :3], direction(uv_a))  # [B, K, 3] ray a's direction in b
  c = transform[:, tf.newaxis, :3, 3]  # [B, 1, 3] camera a's centre in b
  ee = tf.reduce_sum(e * e, -1)
  ed = tf.reduce_sum(e * d_b, -1)
  dd = tf.reduce_sum(d_b * d_b, -1)
  ce = tf.reduce_sum(c * e, -1)
  cd = tf.reduce_sum(c * d_b, -1)
  det = tf.maximum(ee * dd - ed * ed, min_det)
  s = (ed * cd - ce * dd) / det  # [B, K] position along ray a
  t = (ee * cd - ed * ce) / det  # [B, K] position along ray b
  return 0.5 * (c + s[..., tf.newaxis] * e + t[..., tf.newaxis] * d_b)


def triangulation_loss(uv0, uv1, mv0, mvi0, mv1, mvi1, focal):
  """Depth-free multi-view consistency (not in the paper): reprojection error of the triangulated keypoints.

  Each keypoint's two image positions are triangulated with the known relative pose
  (`triangulate_midpoint`) and the point is projected back into both views. The error is zero exactly
  when the two positions are images of one 3D point (they satisfy the epipolar constraint), whatever depth the
  network predicts; the paper's consistency loss lifts each keypoint with its predicted depth instead, so a
  keypoint that follows a part in both images still costs as much as its depth is wrong. Uses only the relative
  pose, like the paper's consistency loss.

  Args:
    uv0, uv1: [B, K, 2] float. Predicted keypoints (NDC) in views 0 and 1.
    mv0, mvi0, mv1, mvi1: [B, 4, 4] float. Object-to-camera matrices and their inverses.
    focal: float, [] or [B]. NDC focal length.
  Returns:
    [] float. Sum over the two views of mean_b sum_i (1/K) |error_i|^2, in NDC^2 (the consistency loss's
    normalisation).
  """
  xyz1 = triangulate_midpoint(uv0, uv1, mvi0, mv1, focal)  # [B, K, 3] camera 1
  xyz0 = geometry.transform_points(mv0, geometry.transform_points(mvi1, xyz1))  # [B, K, 3] camera 0
  return tf.add_n([tf.reduce_mean(tf.reduce_sum(tf.square(geometry.project(xyz, focal)[..., :2] - uv), axis=-1))
                   for xyz, uv in ((xyz0, uv0), (xyz1, uv1))])


def image_plane_points(uv, z, focal):
  """Keypoints lifted to their mean depth: where they would be if all lay in one plane facing the camera.

  Args:
    uv: [B, K, 2] float. NDC positions.
    z: [B, K] float. Predicted camera z; only its per-example mean is used, without gradient.
    focal: float, [] or [B]. NDC focal length.
  Returns:
    [B, K, 3] float. Camera-space points whose pairwise distances are the image distances in object units at
    the keypoints' depth.
  """
  depth = tf.stop_gradient(tf.reduce_mean(z, axis=1, keepdims=True))  # [B, 1]
  return geometry.unproject(tf.concat([uv, tf.broadcast_to(depth, tf.shape(z))[..., tf.newaxis]], -1), focal)


def dilated_silhouette_loss(prob, mask, pixels=1):
  """The silhouette loss against the mask grown by `pixels` (a square neighbourhood): heatmap mass within `pixels`
  of the object counts as on it.

  The paper's silhouette loss charges a sharp heatmap centred on the object's outline (a wing tip, a nose) for the
  half of its mass that falls outside: at 32 px about 0.1-0.3 per keypoint and view on planes, against about 0.001
  where the keypoints settle, short of the tips (reproduction/trials.md). Growing the mask by one pixel removes most
  of that charge while still keeping the heatmaps on or next to the object.

  Args:
    prob: [B, K, H, W] float. Spatial-softmax heatmaps.
    mask: [B, H, W] float or bool. 1 on the object.
    pixels: int >= 0. How far the mask grows (0: the paper's silhouette loss).
  Returns:
    [] float. losses.silhouette_loss(prob, grown mask).
  """
  return losses.silhouette_loss(prob, grown_mask(mask, pixels))


def grown_mask(mask, pixels):
  """mask [B, H, W] (float or bool) grown by `pixels` in a square neighbourhood, as [B, H, W] float32."""
  mask = tf.cast(mask, tf.float32)[..., tf.newaxis]
  return tf.nn.max_pool2d(mask, 2 * pixels + 1, 1, "SAME")[..., 0] if pixels else mask[..., 0]


def _triangulation_term(outputs0, outputs1, batch, loss_config):
  del loss_config
  return triangulation_loss(outputs0["uv"], outputs1["uv"], batch["mv0"], batch["mvi0"], batch["mv1"], batch["mvi1"],
                            batch["focal"])


def _image_separation_term(outputs0, outputs1, batch, loss_config):
  return tf.add_n([losses.separation_loss(image_plane_points(tf.cast(out["uv"], tf.float32),
                                                             tf.cast(out["z"], tf.float32), batch["focal"]),
                                          loss_config.separation_delta) for out in (outputs0, outputs1)])


def _dilated_silhouette_term(outputs0, outputs1, batch, loss_config):
  del loss_config
  return tf.add_n([dilated_silhouette_loss(out["prob"], batch[image][..., 3] > 0)
                   for out, image in ((outputs0, "image0"), (outputs1, "image1"))])


losses.register_term("triangulation", _triangulation_term)
losses.register_term("image_separation", _image_separation_term)
losses.register_term("silhouette_dilated", _dilated_silhouette_term, schedule="silhouette_warmup")
