"""schedules: the flag anneal, the anchor decay, the silhouette warm-up and the learning rate, by step."""

import dataclasses

import keras
import pytest
import tensorflow as tf

from keypointnet_tf import config as config_lib
from keypointnet_tf import schedules


def test_flag_mix_matches_released_schedule():
  # clip((end - step) / (end - start), 0, 1) with the code's 30k / 60k.
  for step, expected in [(0, 1.0), (30000, 1.0), (37500, 0.75), (45000, 0.5), (60000, 0.0), (90000, 0.0)]:
    assert schedules.flag_mix(step, 30000, 60000).numpy() == pytest.approx(expected)
  # With round(): ground truth until the midpoint, predicted from it on (where they disagree).
  for step, uses_truth in [(44999, True), (45000, False)]:
    mix = schedules.flag_mix(step, 30000, 60000)
    assert tf.round(mix * 1.0 + (1 - mix) * 0.0).numpy() == float(uses_truth)


def test_anchor_schedule_and_validation():
  assert [float(schedules.anchor_scale(s, 1000)) for s in (0, 250, 500, 1000, 5000)] == [1.0, 0.75, 0.5, 0.0, 0.0]
  anchored = dataclasses.replace(config_lib.cpu_anchor_preset("planes"), anchor_steps=0)
  with pytest.raises(ValueError, match="anchor_steps"):
    config_lib.resolve(anchored)
  one_keypoint = dataclasses.replace(config_lib.cpu_anchor_preset("planes"),
                                     model=config_lib.ModelConfig(num_keypoints=1))
  with pytest.raises(ValueError, match="num_keypoints >= 2"):
    config_lib.resolve(one_keypoint)
  assert config_lib.TrainConfig().loss.weights.anchor == 0.0  # the paper's recipe has no anchor


def test_silhouette_warmup_schedule_and_validation():
  assert [float(schedules.silhouette_scale(s, 1000)) for s in (0, 250, 1000, 5000)] == [0.0, 0.25, 1.0, 1.0]
  assert [float(schedules.silhouette_scale(s, 0)) for s in (0, 5000)] == [1.0, 1.0]  # the paper: no warm-up
  negative = dataclasses.replace(config_lib.cpu_preset("planes"),
                                 loss=config_lib.LossConfig(silhouette_warmup_steps=-1))
  with pytest.raises(ValueError, match="silhouette_warmup_steps must be 0"):
    config_lib.resolve(negative)
  assert config_lib.TrainConfig().loss.silhouette_warmup_steps == 0


def test_learning_rate_schedule_and_validation():
  def factors(steps, warmup, fraction, total):
    return [float(schedules.learning_rate_factor(s, warmup, fraction, total)) for s in steps]
  # Decay over the last quarter of 8,000 steps: 1 until step 6,000, then linearly to 0 at 8,000 (by hand).
  assert factors((0, 6000, 7000, 7500, 8000, 9000), 0, 0.25, 8000) == pytest.approx([1, 1, 0.5, 0.25, 0, 0])
  assert factors((0, 8000), 0, 0.0, 8000) == [1.0, 1.0]  # the paper: a constant rate
  # The warm-up is Keras's PolynomialDecay from 1% of the rate (what the project used before the decay existed).
  reference = keras.optimizers.schedules.PolynomialDecay(1e-5, 100, 1e-3, power=1.0)
  rate = schedules.LearningRate(dataclasses.replace(config_lib.TrainConfig(), warmup_steps=100, steps=1000))
  for step in (0, 10, 50, 100, 500):
    assert float(rate(step)) == pytest.approx(float(reference(step)), rel=1e-5)  # float32 rounding
  with pytest.raises(ValueError, match="lr_decay_fraction must be in"):
    config_lib.resolve(dataclasses.replace(config_lib.cpu_preset("chairs"), lr_decay_fraction=1.5))
  decayed = dataclasses.replace(config_lib.cpu_preset("chairs"), lr_decay_fraction=0.25)
  assert config_lib.method_name(decayed) == "KeypointNet (variant: lr_decay_fraction 0.25)"
