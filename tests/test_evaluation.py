"""Evaluation metrics against hand-computed cases."""

import math

import numpy as np
import pytest
import tensorflow as tf
from scipy.spatial.transform import Rotation

from keypointnet_tf import evaluation
import helpers  # pylint: disable=g-bad-import-order  (tests/helpers.py)


def test_known_rotations_give_known_errors():
  rng = np.random.default_rng(0)
  xyz0 = rng.normal(size=(3, 8, 3))
  truth = Rotation.random(3, random_state=1)
  offsets = Rotation.from_rotvec([[0, 0, math.radians(10)], [math.radians(45), 0, 0], [0, math.radians(170), 0]])
  predicted = offsets * truth  # the keypoints move as if the rotation were off by 10, 45, 170 degrees
  xyz1 = np.einsum("bij,bkj->bki", predicted.as_matrix(), xyz0) + 2.0
  errors = evaluation.pair_angular_errors(xyz0, xyz1, truth.as_matrix())
  np.testing.assert_allclose(errors, [10, 45, 170], atol=0.05)  # float32 SVD
  row = evaluation.summarize(errors)
  assert row["mean"] == pytest.approx(75, abs=0.05) and row["median"] == pytest.approx(45, abs=0.05)
  assert row["under_15"] == pytest.approx(1 / 3) and row["over_90"] == pytest.approx(1 / 3)


def test_standard_error_3d_hand_values():
  # Object a: keypoint 0 seen at x = 0 and x = 2 (RMS distance to the mean 1), keypoint 1 identical (0).
  # Object b: identical across views (0). Mean over keypoints then objects: (0.5 + 0) / 2.
  views = np.zeros((4, 2, 3))
  views[1, 0, 0] = 2.0
  assert evaluation.standard_error_3d(["a", "a", "b", "b"], views) == pytest.approx(0.25)
  assert evaluation.standard_error_3d(["a", "a"], np.ones((2, 5, 3))) == 0.0


def test_evaluate_with_exact_keypoints_gives_zero_error_and_zero_se():
  rng = np.random.default_rng(2)
  from keypointnet_tf import geometry  # pylint: disable=g-import-not-at-top
  points = rng.uniform(-1, 1, size=(6, 3))
  mv = helpers.random_cameras(rng, 8).astype(np.float32).reshape(2, 4, 4, 4)
  focal = np.float32(geometry.focal_from_fov(5.0))

  def uvz(m):
    cam = points[None] @ np.swapaxes(m[:, :3, :3], 1, 2) + m[:, None, :3, 3]
    return geometry.project_numpy(cam, focal).astype(np.float32)

  images = [np.full((4, 8, 8, 4), k, np.float32) for k in (0.0, 1.0)]  # the image tells the view
  truth = {0.0: uvz(mv[0]), 1.0: uvz(mv[1])}
  batch = {"image0": images[0], "image1": images[1], "mv0": mv[0], "mv1": mv[1],
           "mvi0": np.linalg.inv(mv[0]), "mvi1": np.linalg.inv(mv[1]), "focal": np.full([4], focal),
           "relative_rotation": geometry.relative_rotation(mv[0], mv[1]).numpy(),
           "model_id": np.array([b"x", b"y", b"x", b"y"]),
           "orientation_flag0": np.array([1, 0, 1, 1], np.float32),
           "orientation_flag1": np.array([0, 0, 1, 0], np.float32)}
  dataset = tf.data.Dataset.from_tensors(batch)
  row = evaluation.evaluate(lambda im: {"uvz": truth[float(im.numpy()[0, 0, 0, 0])]}, dataset)
  assert row["pairs"] == 4
  assert row["mean"] < 0.05 and row["3d_se"] < 1e-3
  assert "flag_accuracy" not in row  # the predictor gave no flag
  # Flag accuracy over both views: view 0 all right, view 1 wrong on one of four -> 7 / 8.
  flags = {0.0: np.array([1, 0, 1, 1], np.float32), 1.0: np.array([0, 1, 1, 0], np.float32)}
  row = evaluation.evaluate(lambda im: {"uvz": truth[float(im.numpy()[0, 0, 0, 0])],
                                        "predicted_orientation_flag": flags[float(im.numpy()[0, 0, 0, 0])]},
                            dataset)
  assert row["flag_accuracy"] == pytest.approx(7 / 8)


def test_semantic_scores_hand_values():
  # Parts A, B, C; two views. View 0 puts keypoint 0 on A and 1 on B, view 1 swaps them. Forward: each keypoint
  # names A once and B once (1/2). Backward: A's and B's nearest keypoint alternate (1/2 each); C is nearest to
  # keypoint 0 in view 0 and keypoint 1 in view 1 (1/2). Every prediction is within 0.25 of a part.
  parts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], float)
  predicted = np.array([[[0.1, 0, 0], [0.9, 0, 0]], [[0.9, 0.1, 0], [0.1, 0, 0]]])
  ground_truth = np.stack([parts, parts])
  scores = evaluation.semantic_scores(predicted, ground_truth, np.ones((2, 3), bool))
  assert scores == pytest.approx({"das": 0.5, "das_forward": 0.5, "das_backward": 0.5, "near_part": 1.0})
  # C missing from view 1's object: C is judged on view 0 alone (1), so backward = (1/2 + 1/2 + 1) / 3.
  valid = np.array([[True, True, True], [True, True, False]])
  scores = evaluation.semantic_scores(predicted, ground_truth, valid)
  assert scores["das_backward"] == pytest.approx(2 / 3) and scores["das_forward"] == pytest.approx(0.5)
  # Exact keypoints on the parts score 1; moving one keypoint 0.3 away from its part drops near_part to 5/6.
  exact = np.stack([parts, parts])
  assert evaluation.semantic_scores(exact, ground_truth, np.ones((2, 3), bool))["das"] == pytest.approx(1.0)
  exact[0, 2] += [0.3, 0, 0]
  assert evaluation.semantic_scores(exact, ground_truth, np.ones((2, 3), bool))["near_part"] == pytest.approx(5 / 6)


def test_semantic_scores_penalise_a_collapsed_cluster():
  # Ten keypoints jittered around the object centre in every view: the forward half stays high (every keypoint
  # names the part nearest the centre), the backward half falls (the nearest keypoint to a part is random).
  rng = np.random.default_rng(0)
  parts = rng.uniform(-1, 1, size=(9, 3))
  views = 200
  predicted = 0.02 * rng.normal(size=(views, 10, 3))
  scores = evaluation.semantic_scores(predicted, np.broadcast_to(parts, (views, 9, 3)), np.ones((views, 9), bool))
  assert scores["das_forward"] > 0.9 and scores["das_backward"] < 0.3 and scores["das"] < 0.65


def test_semantic_scores_reject_mismatched_shapes():
  with pytest.raises(ValueError, match=r"expected predicted \[V, K, 3\]"):
    evaluation.semantic_scores(np.zeros((2, 3, 3)), np.zeros((3, 4, 3)), np.ones((3, 4), bool))


def test_keypoint_parts_hand_values_and_agreement_with_das():
  # Parts A (0,0,0), B (1,0,0), C (0,1,0); three views. Keypoint 0 sits on A in views 0 and 1 and 0.5 past C in
  # view 2; keypoint 1 sits 0.1 from B in every view. A's nearest keypoint: 0, 0, then 1 (keypoint 1 at distance
  # ~0.9 beats keypoint 0 at ~1.58): 2/3. B: keypoint 1 always. C: keypoint 0 in view 2 (0.5), else keypoint 0
  # too (distance 1 against ~1.35): 1. C is missing from view 1's object.
  parts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], float)
  predicted = np.array([[[0, 0, 0], [0.9, 0, 0]], [[0, 0, 0], [0.9, 0, 0]], [[0, 1.5, 0], [0.9, 0, 0]]])
  valid = np.array([[True, True, True], [True, True, False], [True, True, True]])
  found = evaluation.keypoint_parts(predicted, np.stack([parts] * 3), valid)
  k0, k1 = found["keypoints"]
  assert (k0["part"], k1["part"]) == (0, 1)
  assert k0["share"] == pytest.approx(2 / 3) and k1["share"] == pytest.approx(1.0)
  assert k0["median_distance"] == pytest.approx(0.0) and k1["median_distance"] == pytest.approx(0.1)
  assert k0["near"] == pytest.approx(2 / 3) and k1["near"] == pytest.approx(1.0)
  np.testing.assert_allclose(k0["mean"], [0, 0.5, 0])
  assert [(p["keypoint"], round(p["share"], 6)) for p in found["parts"]] == [(0, round(2 / 3, 6)), (1, 1.0),
                                                                              (0, 1.0)]
  # DAS's halves are the means of these shares.
  scores = evaluation.semantic_scores(predicted, np.stack([parts] * 3), valid)
  assert scores["das_forward"] == pytest.approx((2 / 3 + 1) / 2)
  assert scores["das_backward"] == pytest.approx((2 / 3 + 1 + 1) / 3)
  # A part that no view's object has is reported as such and left out of the backward half.
  valid[:, 2] = False
  found = evaluation.keypoint_parts(predicted, np.stack([parts] * 3), valid)
  assert found["parts"][2]["keypoint"] is None and np.isnan(found["parts"][2]["share"])
  assert evaluation.semantic_scores(predicted, np.stack([parts] * 3), valid)["das_backward"] == pytest.approx(
      (2 / 3 + 1) / 2)
  assert evaluation.keypoint_parts(predicted, np.stack([parts] * 3), np.zeros((3, 3), bool)) is None


def test_keypoint_parts_with_mirror_parts_counts_a_part_and_its_mirror_as_one():
  # Left part L (0, 0, -1), right part R (0, 0, 1) (each other's mirror), nose N (2, 0, 0). Four views: keypoint 0
  # sits on the plane between L and R, a hair nearer R, L, R, L (share 1/2; as one part 1); keypoint 1 sits on N in
  # views 0-2 and nearest L in view 3 (share 3/4, also 3/4 as one part: N is its own mirror).
  parts = np.array([[0, 0, -1], [0, 0, 1], [2, 0, 0]], float)
  hair = [0.01, -0.01, 0.01, -0.01]
  predicted = np.array([[[0, 0, h], [2, 0, 0] if v < 3 else [0, 0, -0.9]] for v, h in enumerate(hair)])
  valid = np.ones((4, 3), bool)
  found = evaluation.keypoint_parts(predicted, np.stack([parts] * 4), valid, mirror=[1, 0, 2])
  k0, k1 = found["keypoints"]
  assert k0["share"] == pytest.approx(0.5) and k0["share_mirrored"] == pytest.approx(1.0)
  assert k1["share"] == pytest.approx(0.75) and k1["share_mirrored"] == pytest.approx(0.75)
  plain = evaluation.keypoint_parts(predicted, np.stack([parts] * 4), valid)
  assert "share_mirrored" not in plain["keypoints"][0]
  assert [{k: v for k, v in kp.items() if k != "share_mirrored"} for kp in found["keypoints"]] == plain["keypoints"]
