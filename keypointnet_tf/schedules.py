"""Schedules by training step: the orientation flag's anneal, the anchor's decay, the silhouette warm-up and the
learning rate. Pure functions of the step (and the config), so a run trained in legs equals one trained at once.
"""

import keras
import tensorflow as tf


def flag_mix(step, anneal_start, anneal_end):
  """Weight of the ground-truth orientation flag at `step` (the code's linear anneal).

  clip((end - step) / (end - start), 0, 1): 1 until `anneal_start`, 0 from `anneal_end`. The model rounds
  mix * gt + (1 - mix) * predicted, so in effect the flag switches at the midpoint where they disagree.
  """
  step = tf.cast(step, tf.float32)
  span = max(float(anneal_end - anneal_start), 1e-6)
  return tf.clip_by_value((float(anneal_end) - step) / span, 0.0, 1.0)


def anchor_scale(step, anchor_steps):
  """Factor on the anchor loss weight at `step`: 1 at step 0, falling linearly to 0 at `anchor_steps`."""
  return tf.clip_by_value(1.0 - tf.cast(step, tf.float32) / float(max(anchor_steps, 1)), 0.0, 1.0)


def silhouette_scale(step, warmup_steps):
  """Factor on the silhouette and variance weights at `step`: rising linearly from 0 at step 0 to 1 at
  `warmup_steps`, then 1; always 1 when `warmup_steps` is 0 (the paper)."""
  if not warmup_steps:
    return tf.ones([])
  return tf.clip_by_value(tf.cast(step, tf.float32) / float(warmup_steps), 0.0, 1.0)


def learning_rate_factor(step, warmup_steps, decay_fraction, steps):
  """Factor on the learning rate at `step` (a float32 scalar tensor).

  The warm-up rises linearly from 0.01 at step 0 to 1 at `warmup_steps` (0: none). The decay (not in the paper;
  `decay_fraction` 0: none) falls linearly from 1 at step (1 - decay_fraction) * steps to 0 at `steps`.
  """
  step = tf.cast(step, tf.float32)
  factor = tf.ones([])
  if warmup_steps:
    factor = 0.01 + 0.99 * tf.minimum(step / float(warmup_steps), 1.0)
  if decay_fraction:
    span = max(decay_fraction * steps, 1.0)
    factor *= tf.clip_by_value((float(steps) - step) / span, 0.0, 1.0)
  return factor


class LearningRate(keras.optimizers.schedules.LearningRateSchedule):
  """The run's learning rate by optimizer step: `learning_rate * learning_rate_factor(...)` (config.TrainConfig)."""

  def __init__(self, config):
    self.rate, self.steps = config.learning_rate, config.steps
    self.warmup_steps, self.decay_fraction = config.warmup_steps, config.lr_decay_fraction

  def __call__(self, step):
    return self.rate * learning_rate_factor(step, self.warmup_steps, self.decay_fraction, self.steps)

  def get_config(self):
    return {"rate": self.rate, "steps": self.steps, "warmup_steps": self.warmup_steps,
            "decay_fraction": self.decay_fraction}
