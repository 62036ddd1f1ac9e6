"""The research package: its loss variants (registered by name), old runs' and trial commands' compatibility."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from keypointnet_research import cpu_trial
from keypointnet_research import losses as research_losses
from keypointnet_tf import config
from keypointnet_tf import geometry
from keypointnet_tf import losses
from test_losses import FOCAL, _batch_of, _outputs_of, _random_cameras, _views_of  # pylint: disable=g-bad-import-order


def _numpy_triangulation_loss(uv0, uv1, mv0, mv1):
  """Midpoint triangulation by least squares in object space, then reprojection error (loops, float64)."""
  total = np.zeros(2)
  batch, num_kp = uv0.shape[:2]
  for b in range(batch):
    rays = []
    for uv, mv in ((uv0[b], mv0[b]), (uv1[b], mv1[b])):
      inverse = np.linalg.inv(mv)
      centre = inverse[:3, 3]
      directions = [inverse[:3, :3] @ np.array([u / FOCAL, v / FOCAL, -1.0]) for u, v in uv]
      rays.append((centre, directions))
    for k in range(num_kp):
      (c0, d0), (c1, d1) = (rays[0][0], rays[0][1][k]), (rays[1][0], rays[1][1][k])
      (s, t), *_ = np.linalg.lstsq(np.stack([d0, -d1], axis=1), c1 - c0, rcond=None)
      point = 0.5 * (c0 + s * d0 + c1 + t * d1)  # object space
      for view, (uv, mv) in enumerate(((uv0, mv0), (uv1, mv1))):
        cam = mv[b, :3, :3] @ point + mv[b, :3, 3]
        total[view] += np.sum((np.array([-FOCAL * cam[0] / cam[2], -FOCAL * cam[1] / cam[2]]) - uv[b, k]) ** 2)
  return float(total.sum() / (batch * num_kp))


def test_triangulation_loss_matches_numpy_and_ignores_depth():
  rng = np.random.default_rng(5)
  mv0, mvi0, mv1, mvi1 = _random_cameras(rng, 4)
  points = rng.uniform(-1, 1, size=(4, 6, 3))
  uvz0, uvz1 = _views_of(points, mv0), _views_of(points, mv1)
  # Images of the same 3D points: zero, and the triangulated points are those points (in camera 1).
  exact = research_losses.triangulation_loss(uvz0[..., :2], uvz1[..., :2], mv0, mvi0, mv1, mvi1, FOCAL).numpy()
  assert exact < 1e-9
  triangulated = research_losses.triangulate_midpoint(uvz0[..., :2].astype(np.float64), uvz1[..., :2], mvi0, mv1, FOCAL)
  np.testing.assert_allclose(triangulated.numpy(), np.einsum("bij,bkj->bki", mv1[:, :3, :3], points)
                             + mv1[:, None, :3, 3], atol=1e-6)
  # Perturbed positions: the NumPy least-squares midpoint gives the same loss.
  uv0 = uvz0[..., :2] + rng.normal(scale=0.05, size=uvz0[..., :2].shape)
  uv1 = uvz1[..., :2] + rng.normal(scale=0.05, size=uvz1[..., :2].shape)
  value = research_losses.triangulation_loss(uv0, uv1, mv0, mvi0, mv1, mvi1, FOCAL).numpy()
  assert value > 1e-4
  np.testing.assert_allclose(value, _numpy_triangulation_loss(uv0, uv1, mv0, mv1), rtol=1e-6)


def test_total_loss_adds_the_registered_research_terms_with_their_weights():
  rng = np.random.default_rng(6)
  mv0, mvi0, mv1, mvi1 = _random_cameras(rng, 2)
  points = rng.uniform(-1, 1, size=(2, 4, 3))
  batch = _batch_of(mv0, mvi0, mv1, mvi1)
  shifted = _outputs_of(points, mv1)
  shifted["uv"] = shifted["uv"] + 0.1
  outputs = (_outputs_of(points, mv0), shifted)
  without = losses.total_loss(*outputs, batch, config.LossConfig(pose_noise_stddev=0.0))
  with_terms = losses.total_loss(*outputs, batch, config.LossConfig(
      pose_noise_stddev=0.0, weights=config.LossWeights(separation=0.0),
      extra_terms=(("triangulation", 2.0), ("image_separation", 1.0))))
  assert with_terms["triangulation"] > 0
  # The image-plane separation replaces the camera-space one (weight 0): same delta, points lifted to mean depth.
  expected_sep = sum(losses.separation_loss(research_losses.image_plane_points(o["uv"], o["z"], FOCAL), 0.05)
                     for o in outputs)
  np.testing.assert_allclose(with_terms["image_separation"], expected_sep, rtol=1e-6)
  np.testing.assert_allclose(
      with_terms["total"], without["total"] - without["separation"] + 2.0 * with_terms["triangulation"] +
      with_terms["image_separation"], rtol=1e-5)


def _numpy_dilated_silhouette(prob, mask, pixels):
  """-log heatmap mass on the mask grown by `pixels` (square neighbourhood), by explicit loops."""
  grown = np.zeros_like(mask, bool)
  b, h, w = mask.shape
  for i in range(h):
    for j in range(w):
      grown[:, i, j] = mask[:, max(i - pixels, 0):i + pixels + 1, max(j - pixels, 0):j + pixels + 1].any(axis=(1, 2))
  return np.mean(-np.log(np.sum(prob * grown[:, None], axis=(2, 3)) + 1e-12))


def test_dilated_silhouette_counts_mass_next_to_the_object():
  rng = np.random.default_rng(7)
  mask = np.zeros((2, 12, 12), bool)
  mask[:, 3:8, 2:9] = True  # a block
  mask[1, 5, 9:11] = True  # and a thin "wing" on the second example
  prob = rng.uniform(size=(2, 3, 12, 12)) ** 8
  prob /= prob.sum(axis=(2, 3), keepdims=True)
  for pixels in (0, 1, 2):
    np.testing.assert_allclose(research_losses.dilated_silhouette_loss(prob, mask, pixels),
                               _numpy_dilated_silhouette(prob, mask, pixels), rtol=1e-5)
  np.testing.assert_allclose(research_losses.dilated_silhouette_loss(prob, mask, 0),
                             losses.silhouette_loss(prob, mask), rtol=1e-6)
  # A heatmap one pixel past the wing's tip pays the paper's loss in full and nothing with the grown mask; one
  # inside the block pays nothing either way.
  tip = np.zeros((1, 2, 12, 12), np.float32)
  tip[0, 0, 5, 11] = 1.0
  tip[0, 1, 5, 5] = 1.0
  assert losses.silhouette_loss(tip, mask[1:]).numpy() > 10
  assert research_losses.dilated_silhouette_loss(tip, mask[1:]).numpy() == pytest.approx(0.0, abs=1e-6)


def test_the_dilated_silhouette_follows_the_silhouette_warm_up():
  rng = np.random.default_rng(8)
  mv0, mvi0, mv1, mvi1 = _random_cameras(rng, 2)
  points = rng.uniform(-1, 1, size=(2, 4, 3))
  batch = _batch_of(mv0, mvi0, mv1, mvi1)
  mask = np.zeros((2, 8, 8, 4), np.float32)
  mask[:, 2:6, 2:6] = 1.0  # the uniform heatmaps have a quarter of their mass on the object
  batch["image0"] = batch["image1"] = tf.constant(mask)
  outputs = (_outputs_of(points, mv0), _outputs_of(points, mv1))
  variant = config.LossConfig(pose_noise_stddev=0.0, weights=config.LossWeights(silhouette=0.0),
                              extra_terms=(("silhouette_dilated", 1.0),))
  plain = config.LossConfig(pose_noise_stddev=0.0)
  for scale in (0.0, 0.5, 1.0):
    ours = losses.total_loss(*outputs, batch, variant, silhouette_scale=scale)
    paper = losses.total_loss(*outputs, batch, plain, silhouette_scale=scale)
    # Grown by one pixel, the 4 x 4 block covers 36 of 64 pixels: -log(36/64) per view against -log(16/64).
    np.testing.assert_allclose(ours["silhouette_dilated"], -2 * np.log(36 / 64), rtol=1e-5)
    np.testing.assert_allclose(ours["total"] - paper["total"],
                               scale * (ours["silhouette_dilated"] - paper["silhouette"]), rtol=1e-4, atol=1e-6)
  named = config.LossConfig(weights=config.LossWeights(silhouette=0.0), extra_terms=(("silhouette_dilated", 1.0),))
  assert config.method_name(config.TrainConfig(loss=named)) == (
      "KeypointNet (variant: silhouette 0, silhouette_dilated 1)")


def test_runs_written_with_the_old_research_fields_still_load():
  # config.json of a run from before the research variants left the core: same terms, now by name.
  old = config.to_dict(config.TrainConfig())
  del old["loss"]["extra_terms"]
  old["loss"]["separation_in_image"] = True
  old["loss"]["weights"]["triangulation"] = 1.5
  loaded = config.from_dict(old)
  assert loaded.loss.extra_terms == (("triangulation", 1.5), ("image_separation", 1.0))
  assert loaded.loss.weights.separation == 0.0
  assert config.method_name(loaded) == ("KeypointNet (variant: separation 0, triangulation 1.5, "
                                        "image_separation 1)")
  plain = config.to_dict(config.TrainConfig())
  del plain["loss"]["extra_terms"]
  plain["loss"]["separation_in_image"] = False
  plain["loss"]["weights"]["triangulation"] = 0.0
  assert config.from_dict(plain) == config.TrainConfig()  # the shipped models' config.json files


def test_trial_commands_logged_with_the_old_fields_train_the_same_terms():
  base = cpu_trial.BASES["label_free_x10"]("planes")
  tri = cpu_trial.merge(base, cpu_trial.legacy_overrides({"loss": {"weights": {"anchor": 0.0, "triangulation": 1.0}}}))
  assert tri.loss.extra_terms == (("triangulation", 1.0),)
  assert config.method_name(tri) == "KeypointNet (variant: triangulation 1)"
  sep = cpu_trial.merge(base, cpu_trial.legacy_overrides({"loss": {"separation_in_image": True}}))
  assert sep.loss.extra_terms == (("image_separation", 1.0),) and sep.loss.weights.separation == 0.0
  same = cpu_trial.merge(base, cpu_trial.legacy_overrides({"seed": 1, "loss": {"silhouette_warmup_steps": 4000}}))
  assert same.loss.silhouette_warmup_steps == 4000 and same.seed == 1 and same.loss.extra_terms == ()


def test_trial_bases_do_not_follow_the_library_presets():
  # The logged commands must train what they trained when they were run: the bases are written out, so the planes
  # preset's 12,000 steps and warm-up (2026-12-06) do not reach them.
  for category in ("planes", "cars", "chairs"):
    base = cpu_trial.BASES["label_free_x10"](category)
    assert (base.steps, base.batch_size, base.dataset_config) == (8000, 32, f"{category}_small_x10")
    assert base.loss == config.LossConfig() and config.method_name(base) == "KeypointNet"
    anchored = cpu_trial.BASES["cpu"](category)
    assert (anchored.steps, anchored.batch_size, anchored.anchor_steps) == (8000, 8, 4000)
    assert anchored.loss == config.LossConfig(weights=config.LossWeights(anchor=1.0))
  assert config.cpu_preset("planes").steps == 12000  # while the library's preset has moved on


def test_a_resumed_trial_does_not_evaluate_later_weights_under_a_passed_milestone():
  # A stand-in for training.train with Trainer.run's contract: from the stored step, train to min(until, steps);
  # a run already at or past `until` returns its own step. Resumed at 17,571, milestones 5,000-15,000 are skipped
  # (evaluating there would log step 17,571's weights as 5,000) and 20,000 and 25,000 are trained and yielded.
  stored = {"step": 17571}

  def train(config, until, build_data):
    del build_data
    stored["step"] = max(stored["step"], min(until, config.steps))
    return {"step": stored["step"], "status": "done"}

  base = dataclasses.replace(cpu_trial.BASES["label_free_x10"]("planes"), steps=25000)
  legs = list(cpu_trial.legs(base, [5000, 10000, 15000, 20000, 25000], train=train))
  assert [step for step, _, _ in legs] == [20000, 25000]
  assert all(result["step"] == step for step, result, _ in legs)
  # A run stopped exactly at a milestone (killed during its evaluation) is evaluated there when rerun.
  assert [step for step, _, _ in cpu_trial.legs(base, [25000], train=train)] == [25000]


def test_image_plane_separation_ignores_depth_spread():
  # Ten keypoints on one image point, spread 0.3 units apart along the viewing ray: camera-space separation is
  # satisfied (0.09 > 0.05), image-plane separation charges every pair the full delta.
  uv = np.zeros((1, 10, 2), np.float32)
  z = (-30.0 + 0.3 * np.arange(10, dtype=np.float32))[None]
  camera = geometry.unproject(np.concatenate([uv, z[..., None]], -1), FOCAL)
  assert losses.separation_loss(camera, 0.05).numpy() == pytest.approx(0.05 * 10 / (2 * 10))  # diagonal only
  flat = research_losses.image_plane_points(uv, z, FOCAL)
  assert losses.separation_loss(flat, 0.05).numpy() == pytest.approx(0.05 * 100 / (2 * 10))
  # Image distances become object units at the mean depth: 0.1 NDC apart at depth 28.65 is 0.1 * 28.65 / f.
  uv2 = np.array([[[0.0, 0.0], [0.1, 0.0]]], np.float32)
  points = research_losses.image_plane_points(uv2, np.array([[-28.0, -29.3]], np.float32), FOCAL).numpy()
  assert np.linalg.norm(points[0, 0] - points[0, 1]) == pytest.approx(0.1 * 28.65 / FOCAL, rel=1e-5)
  assert np.allclose(points[..., 2], -28.65)


def test_trial_table_rows_show_the_das_halves_where_recorded():
  from keypointnet_research import trial_table  # pylint: disable=g-import-not-at-top
  record = {"name": "t_seed0", "category": "planes", "preset": "label_free_x10", "step": 12000, "mean": 10.74,
            "median": 8.26, "3d_se": 0.1534, "das": 0.7, "das_forward": 0.6403, "das_backward": 0.7597,
            "near_part": 0.3453, "under_30": 0.969, "over_90": 0.003, "flag_accuracy": 0.984,
            "train_seconds_this_leg": 600.0, "overrides": {"seed": 0, "steps": 12000}}
  older = {k: v for k, v in record.items() if k not in ("das_forward", "das_backward", "flag_accuracy")}
  header, rule, row, old_row = trial_table.rows([record, older])
  assert header.count("|") == rule.count("|") == row.count("|") == old_row.count("|")
  cells = [cell.strip() for cell in row.split("|")[1:-1]]
  columns = [cell.strip() for cell in header.split("|")[1:-1]]
  assert dict(zip(columns, cells))["DAS (forward / backward)"] == "0.700 (0.64 / 0.76)"
  assert cells[:9] == ["t_seed0", "KeypointNet", "planes", "12,000", "384k", "10.7", "8.3", "0.153",
                       "0.700 (0.64 / 0.76)"]
  assert dict(zip(columns, [c.strip() for c in old_row.split("|")[1:-1]]))["DAS (forward / backward)"] == "0.700"
