"""Evaluation protocol (docs/evaluation.md): angular error of the relative rotation and 3D-SE.

For every test pair: predict keypoints in both views with the *predicted* orientation flag, unproject them to
camera space, estimate R with uniform-weight Procrustes and no noise (optionally with noise, for parity with
public runs of the released code), and measure the geodesic angle to the true relative rotation. 3D-SE maps each
view's keypoints to the object frame with the ground-truth inverse model-view matrix, takes each keypoint's
root-mean-square distance to its mean over all test views of the same object, and averages over keypoints and
objects (object units; the longest side of an object is 2).

Where the data carries ground-truth keypoints (the procedural data), two semantic scores are added
(docs/evaluation.md): the dual alignment score (DAS) and the share of predicted keypoints that lie
within `PART_RADIUS` object units of some ground-truth part.
"""

import collections
import dataclasses
import os

import numpy as np
import tensorflow as tf

from keypointnet_tf import config as config_lib
from keypointnet_tf import geometry
from keypointnet_tf import input_pipeline
from keypointnet_tf import losses
from keypointnet_tf import runs


def pair_angular_errors(xyz0, xyz1, rotation, noise_stddev=0.0, generator=None):
  """Per-pair angular error in degrees.

  Args:
    xyz0, xyz1: [B, K, 3] float. Predicted keypoints in camera 0 / camera 1 space.
    rotation: [B, 3, 3] float. True rotation from camera 0 to camera 1.
    noise_stddev: float. Optional Gaussian noise added to both sets (the released code's metric used 0.1).
    generator: tf.random.Generator, required when noise_stddev > 0.
  Returns:
    [B] float64 numpy array of degrees.
  """
  xyz0, xyz1 = losses.add_pose_noise(tf.convert_to_tensor(xyz0, tf.float32), xyz1, noise_stddev, generator)
  angle = geometry.angular_distance(geometry.estimate_rotation(xyz0, xyz1), tf.cast(rotation, tf.float32))
  return np.degrees(angle.numpy().astype(np.float64))


NO_OBJECT_IDS = ("3D-SE not computed: the data does not say which object each view shows (the paper's released "
                 "shards hold about 40 objects each, and their job.txt, which lists them, is missing), and pooling "
                 "views of different objects would give a wrong number. Put the released job.txt beside the shards.")


def standard_error_3d(object_ids, xyz_object):
  """3D-SE: mean over objects and keypoints of the RMS distance of a keypoint to its per-object mean.

  Args:
    object_ids: [N] hashable, the object of each view.
    xyz_object: [N, K, 3] float. Predicted keypoints of each view mapped to the object frame.
  Returns:
    float (object units). Objects seen in a single view contribute 0.
  Raises:
    ValueError: some view has no object id (input_pipeline.UNKNOWN_MODEL_ID): its views cannot be grouped.
  """
  if any(object_id in ("", b"") for object_id in object_ids):
    raise ValueError(NO_OBJECT_IDS)
  groups = collections.defaultdict(list)
  for object_id, points in zip(object_ids, np.asarray(xyz_object, np.float64)):
    groups[object_id].append(points)
  per_object = []
  for views in groups.values():
    views = np.stack(views)  # [V, K, 3]
    spread = np.sqrt(np.mean(np.sum((views - views.mean(axis=0)) ** 2, axis=-1), axis=0))  # [K]
    per_object.append(spread.mean())
  return float(np.mean(per_object))


PART_RADIUS = 0.25  # Object units: a predicted keypoint this close to a ground-truth part is "on a part".


def _part_distances(predicted, ground_truth, valid, caller):
  """(distance [V', K, P] from each predicted keypoint to each part, inf where the part is missing; valid [V', P];
  predicted [V', K, 3]) over the V' views whose object has some valid part; None when there is none."""
  predicted = np.asarray(predicted, np.float64)
  ground_truth = np.asarray(ground_truth, np.float64)
  valid = np.asarray(valid, bool)
  if predicted.ndim != 3 or ground_truth.ndim != 3 or predicted.shape[0] != ground_truth.shape[0] or (
      valid.shape != ground_truth.shape[:2]):
    raise ValueError(f"{caller}: expected predicted [V, K, 3], ground_truth [V, P, 3], valid [V, P]. "
                     f"Received: {predicted.shape}, {ground_truth.shape}, {valid.shape}")
  keep = valid.any(axis=1)
  if not keep.any():
    return None
  predicted, ground_truth, valid = predicted[keep], ground_truth[keep], valid[keep]
  distance = np.linalg.norm(predicted[:, :, None] - ground_truth[:, None], axis=-1)
  return np.where(valid[:, None, :], distance, np.inf), valid, predicted


def semantic_scores(predicted, ground_truth, valid, radius=PART_RADIUS):
  """Dual alignment score (PAPER.md section C) and the share of predicted keypoints near a ground-truth part.

  Per view, in the object frame, no distance threshold for DAS:
  forward: for predicted keypoint k, the id of the nearest valid ground-truth part in each view; the share of
  views whose id equals k's most common id; averaged over k. Backward: for ground-truth part p, the index of the
  nearest predicted keypoint in each view where p is valid; the share of those views whose index equals p's most
  common index; averaged over the parts that are valid in some view. DAS is the mean of the two. Keypoints in one
  cluster score well forward and badly backward. `keypoint_parts` spells both halves out per keypoint and part.

  Args:
    predicted: [V, K, 3] float. Predicted keypoints of V views mapped to the object frame.
    ground_truth: [V, P, 3] float. Ground-truth parts of each view's object, in the object frame.
    valid: [V, P] bool. Which parts exist on each view's object.
    radius: float. Distance (object units) under which a predicted keypoint counts as on a part.
  Returns:
    dict: "das", "das_forward", "das_backward" in [0, 1] and "near_part", the share of the V x K predicted
    keypoints within `radius` of a valid part; all nan when no view has a valid part.
  """
  found = keypoint_parts(predicted, ground_truth, valid, radius, caller="semantic_scores")
  if found is None:
    return {"das": float("nan"), "das_forward": float("nan"), "das_backward": float("nan"),
            "near_part": float("nan")}
  forward = float(np.mean([k["share"] for k in found["keypoints"]]))
  backward = float(np.mean([p["share"] for p in found["parts"] if p["keypoint"] is not None]))
  # Every keypoint is judged in the same views, so the mean of the per-keypoint shares is the share of all V x K.
  near = float(np.mean([k["near"] for k in found["keypoints"]]))
  return {"das": (forward + backward) / 2, "das_forward": forward, "das_backward": backward, "near_part": near}


def keypoint_parts(predicted, ground_truth, valid, radius=PART_RADIUS, caller="keypoint_parts", mirror=None):
  """Which part each predicted keypoint tracks, and which keypoint tracks each part: DAS's two halves in full.

  Args: as semantic_scores, and
    mirror: optional [P] int, each part's mirror image across the object's symmetry plane (itself for a part on
      it; procedural.mirror_parts). Then each keypoint also gets "share_mirrored": its share with every part and
      its mirror image counted as one part (a keypoint on the plane between two mirror parts scores about 0.5 in
      "share" however steadily it sits there, and near 1 here).
  Returns:
    dict, or None when no view has a valid part:
      "keypoints": K dicts: "part" (index of the part nearest to keypoint k in most views), "share" (the share of
        views where it is that part: k's forward score), "median_distance" (median over views of the distance to
        the nearest part, object units), "near" (share of views within `radius` of a part), "mean" (the mean
        position over views, [3], object frame).
      "parts": P dicts: "keypoint" (index of the keypoint nearest to part p in most views where p exists, or None
        when p exists in none) and "share" (p's backward score; nan when p exists in none).
    The mean of the keypoints' shares is semantic_scores' das_forward, that of the existing parts' das_backward.
  """
  found = _part_distances(predicted, ground_truth, valid, caller)
  if found is None:
    return None
  distance, valid, predicted = found
  nearest_part = distance.argmin(axis=2)  # [V, K]
  closest = distance.min(axis=2)  # [V, K]
  keypoints = []
  pair = None if mirror is None else np.minimum(np.arange(distance.shape[2]), np.asarray(mirror))[nearest_part]
  for k in range(distance.shape[1]):
    counts = np.bincount(nearest_part[:, k], minlength=distance.shape[2])
    keypoints.append({"part": int(counts.argmax()), "share": float(counts.max() / counts.sum()),
                      "median_distance": float(np.median(closest[:, k])),
                      "near": float(np.mean(closest[:, k] < radius)),
                      "mean": predicted[:, k].mean(axis=0).tolist()})
    if pair is not None:
      keypoints[-1]["share_mirrored"] = float(np.bincount(pair[:, k]).max() / len(pair))
  nearest_keypoint = distance.argmin(axis=1)  # [V, P]
  parts = []
  for p in range(distance.shape[2]):
    if not valid[:, p].any():
      parts.append({"keypoint": None, "share": float("nan")})
      continue
    counts = np.bincount(nearest_keypoint[valid[:, p], p], minlength=distance.shape[1])
    parts.append({"keypoint": int(counts.argmax()), "share": float(counts.max() / counts.sum())})
  return {"keypoints": keypoints, "parts": parts}


def keypoint_parts_table(found, part_names=None):
  """keypoint_parts() as two Markdown tables: each keypoint's part, and each part's keypoint.

  Args:
    found: keypoint_parts() result.
    part_names: optional P names of the ground-truth parts (the procedural categories' names come with the dataset
      package, `procedural.KEYPOINT_NAMES`); default "part p".
  Returns:
    str, Markdown.
  """
  names = list(part_names) if part_names is not None else [f"part {p}" for p in range(len(found["parts"]))]
  if len(names) != len(found["parts"]):
    raise ValueError(f"keypoint_parts_table: {len(names)} part names for {len(found['parts'])} parts")
  lines = ["| keypoint | nearest part in most views | share of views | median distance | within "
           f"{PART_RADIUS} | mean position (object frame) |", "|---|---|---|---|---|---|"]
  for k, kp in enumerate(found["keypoints"]):
    mean = ", ".join(f"{v:.2f}" for v in kp["mean"])
    lines.append(f"| {k} | {names[kp['part']]} | {kp['share']:.0%} | {kp['median_distance']:.2f} | "
                 f"{kp['near']:.0%} | ({mean}) |")
  lines += ["", "| part | nearest keypoint in most views | share of views |", "|---|---|---|"]
  for name, part in zip(names, found["parts"]):
    lines.append(f"| {name} | — | — |" if part["keypoint"] is None else
                 f"| {name} | {part['keypoint']} | {part['share']:.0%} |")
  return "\n".join(lines) + "\n"


def summarize(errors_deg, standard_error=float("nan")):
  """Table row numbers from per-pair errors: mean, median, shares under 5/10/15/30 and above 90 degrees."""
  errors = np.asarray(errors_deg, np.float64)
  row = {"pairs": int(errors.size), "mean": float(errors.mean()), "median": float(np.median(errors)),
         "3d_se": float(standard_error)}
  for threshold in (5, 10, 15, 30):
    row[f"under_{threshold}"] = float(np.mean(errors < threshold))
  row["over_90"] = float(np.mean(errors > 90))
  return row


def evaluate(predict_fn, dataset, noise_stddev=0.0, seed=0, max_pairs=None):
  """Runs the protocol over a finite dataset of batches.

  Args:
    predict_fn: callable images [B, H, W, 4] -> dict with "uvz" [B, K, 3] (predicted orientation flag).
    dataset: finite tf.data.Dataset of batches from input_pipeline.make_dataset (repeat=False).
    noise_stddev: float. Noise in the metric (0 for the clean protocol).
    seed: int. Seed of that noise.
    max_pairs: optional int. Stop after this many pairs.
  Returns:
    dict: summarize() of all pairs, plus "errors" (the per-pair degrees) and, when the data has ground-truth
    keypoints, semantic_scores() and "keypoint_parts" (keypoint_parts()) over all views; "flag_accuracy" (share of
    views whose predicted orientation flag equals the ground-truth one) when predict_fn returns
    "predicted_orientation_flag". When the data has no object ids, "3d_se" is nan and "3d_se_note" says why.
  """
  generator = tf.random.Generator.from_seed(seed)
  errors, ids, points, parts, parts_valid, flags_right = [], [], [], [], [], []
  for batch in dataset:
    focal = batch["focal"]
    xyz = []
    for view in ("0", "1"):
      out = predict_fn(batch["image" + view])
      if "predicted_orientation_flag" in out:
        flags_right.append(np.equal(np.asarray(out["predicted_orientation_flag"]),
                                    batch["orientation_flag" + view].numpy()))
      camera = geometry.unproject(out["uvz"], focal)  # [B, K, 3]
      xyz.append(camera)
      points.append(geometry.transform_points(batch["mvi" + view], camera).numpy())
      ids.extend(batch["model_id"].numpy().tolist())
      if "keypoints" in batch:
        parts.append(batch["keypoints"].numpy())
        parts_valid.append(batch["keypoint_valid"].numpy())
    errors.append(pair_angular_errors(xyz[0], xyz[1], batch["relative_rotation"], noise_stddev, generator))
    if max_pairs is not None and sum(len(e) for e in errors) >= max_pairs:
      break
  errors = np.concatenate(errors)[:max_pairs]
  try:
    standard_error = standard_error_3d(ids, np.concatenate(points))
    note = None
  except ValueError as e:  # no object ids: refused, not pooled
    standard_error, note = float("nan"), str(e)
  row = summarize(errors, standard_error)
  if note:
    row["3d_se_note"] = note
  if parts and parts[0].shape[1]:  # ground-truth keypoints present (procedural data)
    views = np.concatenate(points), np.concatenate(parts), np.concatenate(parts_valid)
    row.update(semantic_scores(*views))
    row["keypoint_parts"] = keypoint_parts(*views)
  if flags_right:
    row["flag_accuracy"] = float(np.mean(np.concatenate(flags_right)))
  row["errors"] = errors
  return row



def evaluate_run(model_dir, split="test", noise_stddev=0.0, max_pairs=None, data_dir=None, released_dir=None,
                 batch_size=32, build_data=None, dataset_config=None, checkpoint=None):
  """Evaluates a training run's latest (or given) checkpoint on a split of its data (or of another data set).

  Args:
    dataset_config: optional shapenet_pairs config to evaluate on instead of the run's own (e.g. the same
      objects rendered with random appearance); images are resized to the run's size.
    build_data: optional callable that builds missing data (runs.dataset_source).
    checkpoint: optional checkpoint prefix of the run (default: its latest).
  Returns:
    (row from evaluate(), category).
  """
  net, config = runs.load_trained_model(model_dir, checkpoint)
  overrides = {k: v for k, v in (("data_dir", data_dir), ("released_dir", released_dir),
                                  ("dataset_config", dataset_config)) if v}
  config = dataclasses.replace(config, **overrides)
  dataset = runs.ordered_split(config, split, batch_size, build=build_data)
  predict = tf.function(lambda images: net(images, training=False), reduce_retracing=True)
  return evaluate(predict, dataset, noise_stddev=noise_stddev, max_pairs=max_pairs), config.category


def is_saved_model(path):
  return tf.io.gfile.exists(os.path.join(path, "saved_model.pb"))


def evaluate_saved_model(path, source, split="test", noise_stddev=0.0, max_pairs=None, batch_size=32):
  """Evaluates an exported SavedModel (tools/export.py) through its predict_images signature.

  Args:
    path: SavedModel directory.
    source: data directory for input_pipeline.make_dataset (built TFDS version dir or released TFRecords).
  Returns:
    row from evaluate().
  """
  signature = tf.saved_model.load(path).signatures["predict_images"]
  dataset = input_pipeline.make_dataset(source, split, batch_size, shuffle=False, repeat=False,
                                        deterministic=True, drop_remainder=False)

  def predict(images):
    out = signature(images=images)
    return {"uvz": tf.concat([out["uv"], out["z"][..., tf.newaxis]], axis=-1)}

  return evaluate(predict, dataset, noise_stddev=noise_stddev, max_pairs=max_pairs)


# The paper's Table 1 (ShapeNet; mean / median angular error in degrees, 3D-SE), for reference beside ours.
PAPER_TABLE = {
    "a) supervised": {"cars": (16.268, 5.583, 0.240), "planes": (18.350, 7.168, 0.233),
                      "chairs": (21.882, 8.771, 0.269)},
    "b) supervised with pretrained O-Net": {"cars": (13.961, 4.475, 0.197), "planes": (17.800, 6.802, 0.230),
                                            "chairs": (20.502, 8.261, 0.248)},
    "c) KeypointNet with pretrained O-Net": {"cars": (13.500, 4.418, 0.165), "planes": (18.561, 6.407, 0.223),
                                             "chairs": (14.238, 5.607, 0.203)},
    "d) KeypointNet": {"cars": (11.310, 3.372, 0.171), "planes": (17.330, 5.721, 0.230),
                       "chairs": (14.572, 5.420, 0.196)},
}
CATEGORIES = config_lib.CATEGORIES


def _fmt(value, spec):
  return "—" if value is None or (isinstance(value, float) and np.isnan(value)) else format(value, spec)


def paper_table():
  """The paper's Table 1 (ShapeNet) as Markdown: mean / median angular error (degrees) and 3D-SE per category."""
  header = "| paper method | " + " | ".join(f"{c} mean | {c} median | {c} 3D-SE" for c in CATEGORIES) + " |"
  lines = [header, "|---|" + "---|" * (3 * len(CATEGORIES))]
  for name, by_category in PAPER_TABLE.items():
    lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for c in CATEGORIES for v in by_category[c]) + " |")
  return "\n".join(lines) + "\n"


def markdown_table(results, include_paper=True, rounded=False):
  """Our rows in the layout of the paper's Table 1, a table of error shares and semantic scores, and (apart, never
  mixed with ours) the paper's own table.

  Args:
    results: list of (method name, {category: summarize() row}).
    include_paper: bool. Add the paper's Table 1 as a separate table after ours.
    rounded: bool. Degrees to one decimal, 3D-SE and DAS to two, shares of pairs to whole percent (a report's
      reading precision; the flag accuracy keeps tenths); else three decimals and tenths of a percent.
  Returns:
    str, Markdown.
  """
  angle, score, share = (".1f", ".2f", ".0%") if rounded else (".3f", ".3f", ".1%")
  # The paper's three categories first, then any other (a data set built from the user's meshes).
  categories = list(CATEGORIES) + sorted({c for _, by_category in results for c in by_category} - set(CATEGORIES))
  header = "| method | " + " | ".join(f"{c} mean | {c} median | {c} 3D-SE" for c in categories) + " |"
  lines = [header, "|---|" + "---|" * (3 * len(categories))]
  for name, by_category in results:
    values = []
    for c in categories:
      row = by_category.get(c)
      values += [(None, angle), (None, angle), (None, score)] if row is None else [
          (row["mean"], angle), (row["median"], angle), (row["3d_se"], score)]
    lines.append(f"| {name} | " + " | ".join(_fmt(v, spec) for v, spec in values) + " |")
  lines += ["", "| method | category | pairs | < 5 deg | < 10 deg | < 15 deg | < 30 deg | > 90 deg (flips) | DAS | "
            "keypoints near a part | flag accuracy |", "|---|---|---|---|---|---|---|---|---|---|---|"]
  for name, by_category in results:
    for c in categories:
      if c in by_category:
        r = by_category[c]
        shares = " | ".join(format(r[k], share) for k in ("under_5", "under_10", "under_15", "under_30", "over_90"))
        lines.append(f"| {name} | {c} | {r['pairs']} | {shares} | {_fmt(r.get('das'), score)} | "
                     f"{_fmt(r.get('near_part'), share)} | {_fmt(r.get('flag_accuracy'), '.1%')} |")
  if include_paper:
    lines += ["", "The paper's Table 1, for reference (ShapeNet, 128 px, 64 filters, 200,000 steps x 256 pairs = 51M "
              "pairs; not comparable number for number with rows trained on other data or budgets):", "",
              paper_table()]
  return "\n".join(lines) + "\n"
