"""Training: one tf.function train step over both views, checkpoints and resume, TensorBoard, tf.distribute.

`train(config)` is the whole job, in two parts a reader can take one at a time: `set_up` (strategy, data, model,
optimizer, restore; returns a `Trainer`) and `Trainer.run` (the loop: steps, logs, validation, checkpoints,
signals and non-finite steps). tools/train.py only turns flags into a `config.TrainConfig`.
"""

import dataclasses
import json
import math
import os
import signal
import sys
import time

from absl import logging
import keras
import tensorflow as tf

from keypointnet_tf import config as config_lib
from keypointnet_tf import distribute
from keypointnet_tf import evaluation
from keypointnet_tf import geometry
from keypointnet_tf import input_pipeline
from keypointnet_tf import losses
from keypointnet_tf import model as model_lib
from keypointnet_tf import runs
from keypointnet_tf import visualization

class TrainingError(runs.RunError):
  """A run that cannot start or continue, with a message that says what to do."""


# ------------------------------------------------------------------------------------------------------------
# Schedules and config files.
# ------------------------------------------------------------------------------------------------------------


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


def _write_or_check_config(config, write_dir):
  """Writes config.json for a new run; for an existing one, refuses conflicting settings.

  Args:
    config: the resolved TrainConfig.
    write_dir: where this process writes (the run directory, or a non-chief worker's own folder).
  """
  path = os.path.join(write_dir, runs.CONFIG_FILE)
  current = config_lib.to_dict(config)
  has_checkpoint = tf.train.latest_checkpoint(runs.checkpoint_dir(write_dir)) is not None
  if has_checkpoint and tf.io.gfile.exists(path):  # a run that never saved can be restarted with any settings
    with tf.io.gfile.GFile(path) as f:
      conflicts = config_lib.resume_conflicts(json.load(f), config)
    if conflicts:
      lines = "\n".join(f"  {key}: saved {old!r}, now {new!r}" for key, (old, new) in sorted(conflicts.items()))
      raise TrainingError(
          f"{config.model_dir} holds a run with different settings:\n{lines}\n"
          "Resume with the saved settings (drop the conflicting flags) or choose another --model_dir.")
  tf.io.gfile.makedirs(write_dir)
  tmp = path + ".tmp"
  with tf.io.gfile.GFile(tmp, "w") as f:
    json.dump(current, f, indent=2, sort_keys=True)
  tf.io.gfile.rename(tmp, path, overwrite=True)


# ------------------------------------------------------------------------------------------------------------
# Pieces of the train step.
# ------------------------------------------------------------------------------------------------------------


def compute_losses(net, batch, config, generator, mix, training=True, step=0):
  """Runs both views and returns the loss dict (see losses.total_loss; supervised adds "supervised").

  Args:
    net: KeypointNet.
    batch: a batch from input_pipeline.make_dataset.
    config: TrainConfig.
    generator: tf.random.Generator for the pose noise.
    mix: [] float32 orientation flag mix (1: ground truth, 0: predicted).
    training: batch-norm mode.
    step: int or [] tensor, the global step (for the anchor decay and the silhouette warm-up).
  """
  flag_weight = tf.ones([]) if config.supervised else mix
  outputs = [net(batch["image" + v], batch["orientation_flag" + v], flag_weight, training=training)
             for v in ("0", "1")]
  focal = batch["focal"]
  xyz = [geometry.unproject(out["uvz"], focal) for out in outputs]
  terms = {}
  if config.supervised:
    terms["supervised"] = tf.add_n([
        losses.supervised_loss(out["uvz"], batch["mv" + v], batch["keypoints"], batch["keypoint_valid"], focal)
        for out, v in zip(outputs, ("0", "1"))])
    terms["orientation"] = tf.add_n([losses.orientation_loss(out["orientation"], batch["mv" + v], focal)
                                     for out, v in zip(outputs, ("0", "1"))])
    terms["total"] = terms["supervised"] + config.loss.weights.orientation * terms["orientation"]
  else:
    terms = losses.total_loss(outputs[0], outputs[1], batch, config.loss, generator,
                              anchor_scale=anchor_scale(step, config.anchor_steps),
                              silhouette_scale=silhouette_scale(step, config.loss.silhouette_warmup_steps))
  # Logged only: the noise-free angular error of this batch, in degrees, and orientation-flag accuracy.
  estimate = geometry.estimate_rotation(xyz[0], xyz[1])
  terms["angular_error_deg"] = losses.angle_degrees(tf.reduce_mean(
      geometry.angular_distance(estimate, batch["relative_rotation"])))
  terms["orientation_accuracy"] = tf.reduce_mean(tf.concat([
      tf.cast(tf.equal(out["predicted_orientation_flag"], batch["orientation_flag" + v]), tf.float32)
      for out, v in zip(outputs, ("0", "1"))], axis=0))
  return terms, outputs


def build_train_step(net, optimizer, strategy, config, generator, step_var, non_finite_steps,
                     restore_non_finite=True):
  """Returns a tf.function: distributed batch -> dict of replica-averaged metrics.

  Per replica: the loss on the local batch (normalised by its own shape) and its gradient. With
  config.clip_per_replica (the released code) each replica's gradient is clipped by global norm and the clipped
  gradients are averaged across replicas; otherwise the gradients are averaged and the average is clipped. Both
  agree with one replica. Keras's optimizer sums gradients across replicas again, so it receives the combined
  gradient / num_replicas.
  Non-finite steps: when the loss or any gradient on any replica is not finite, the step changes nothing: every
  model variable (weights and batch-norm statistics) and every optimizer variable (moments, iteration count) is
  put back to its value before the step, which is counted in `non_finite_steps` (the host then stops the run).
  restore_non_finite=False leaves out that snapshot and restore (bench/train_step.py --guard times its cost): a
  non-finite step then applies zero gradients, which still moves the weights through Adam's moments.
  """
  num_replicas = strategy.num_replicas_in_sync
  variables = net.trainable_variables
  guarded = list(net.variables) + list(optimizer.variables)

  def mean_over_replicas(context, grads):
    if num_replicas == 1:
      return grads
    return context.all_reduce(tf.distribute.ReduceOp.SUM, [g / num_replicas for g in grads])

  def replica_step(batch):
    mix = flag_mix(step_var, config.anneal_start, config.anneal_end)
    with tf.GradientTape() as tape:
      terms, _ = compute_losses(net, batch, config, generator, mix, step=step_var)
    grads = tape.gradient(terms["total"], variables)
    context = tf.distribute.get_replica_context()
    finite = tf.logical_and(tf.math.is_finite(terms["total"]),
                            tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads]))
    if num_replicas > 1:
      finite = context.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32)) < 0.5
    if config.clip_per_replica:
      clipped, global_norm = tf.clip_by_global_norm(grads, config.clip_norm)
      clipped = mean_over_replicas(context, clipped)
    else:
      clipped, global_norm = tf.clip_by_global_norm(mean_over_replicas(context, grads), config.clip_norm)
    # Zeros keep NaNs out of the update; the values are put back after it (MirroredStrategy forbids a tf.cond
    # around apply_gradients, whose merge_call cannot sit inside control flow).
    safe = [tf.where(finite, g, tf.zeros_like(g)) / num_replicas for g in clipped]
    optimizer.apply_gradients(zip(safe, variables))
    terms["gradient_norm"] = global_norm
    terms["finite"] = tf.cast(finite, tf.float32)
    terms["flag_mix"] = mix
    return terms

  @tf.function(jit_compile=config.jit_compile)
  def step_fn(batch):
    before = [tf.identity(v) for v in guarded] if restore_non_finite else []
    per_replica = strategy.run(replica_step, args=(batch,))
    metrics = {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in per_replica.items()}
    finite = metrics["finite"] >= 1.0

    def put_back():
      for variable, value in zip(guarded, before):
        variable.assign(value)
      return tf.constant(True)

    if restore_non_finite:
      tf.cond(finite, lambda: tf.constant(True), put_back)
    step_var.assign_add(1)
    non_finite_steps.assign_add(tf.cast(tf.logical_not(finite), tf.int64))
    return metrics

  return step_fn


def _load_frozen_orientation_network(net, run_dir):
  """Copies a trained run's orientation network into `net` and freezes it (the paper's "pretrained O-Net")."""
  try:
    other, _ = runs.load_trained_model(run_dir)
  except FileNotFoundError as e:
    raise TrainingError(f"orientation_from={run_dir}: {e}") from e
  if other.num_filters != net.num_filters:
    raise TrainingError(f"orientation_from={run_dir}: its num_filters={other.num_filters} differs from "
                        f"this run's {net.num_filters}; the orientation networks must have the same size.")
  for mine, theirs in ((net.orientation_backbone, other.orientation_backbone),
                       (net.orientation_head, other.orientation_head)):
    mine.set_weights(theirs.get_weights())
    mine.trainable = False
  logging.info("Loaded and froze the orientation network of %s.", run_dir)


# ------------------------------------------------------------------------------------------------------------
# Data.
# ------------------------------------------------------------------------------------------------------------


def _data_fault(error, source, manager):
  """TrainingError for a record that cannot be read or decoded, naming the shard (found by a scan) and the last
  good checkpoint."""
  where = ""
  if source:
    found = input_pipeline.find_unreadable_record(source, "train")
    where = (f" The first unreadable record is #{found[1]} of shard {found[0]} ({found[2]})." if found else
             f" A scan of {source} found no unreadable train record (the fault may be transient).")
  return TrainingError(
      f"Training stopped: a training record cannot be read or decoded ({input_pipeline.error_text(error)})."
      f"{where} Nothing was saved after the fault: the last good checkpoint is {manager.latest_checkpoint}. "
      "Rebuild the data set (tfds build ... --overwrite) or remove the shard, then run the same command to "
      "resume.")


# ------------------------------------------------------------------------------------------------------------
# Validation.
# ------------------------------------------------------------------------------------------------------------

BEST_DIR = "best"
BEST_FILE = "best.json"


def validate(predict, dataset, max_pairs):
  """The evaluation protocol on validation batches: dict with mean, median, ..., das (when the data has parts).

  Args:
    predict: images [B, H, W, 4] -> dict with "uvz" (the model in inference mode, predicted flag).
    dataset: finite dataset of validation batches.
    max_pairs: int, pairs evaluated at most.
  """
  row = evaluation.evaluate(predict, dataset, max_pairs=max_pairs)
  row.pop("errors")
  return row


def _validation_dataset(config, source):
  """Finite validation batches of the configured data, or None (with a log line) when it has no such split."""
  try:
    return input_pipeline.make_dataset(source, "validation", 32, image_size=config.image_size, shuffle=False,
                                       repeat=False, deterministic=True, drop_remainder=False)
  except (ValueError, FileNotFoundError) as e:
    logging.warning("No validation during training: %s", e)
    return None


# ------------------------------------------------------------------------------------------------------------
# Progress display.
# ------------------------------------------------------------------------------------------------------------


class _Progress:
  """A one-line progress bar on a terminal; plain log lines otherwise (CI logs stay readable)."""

  def __init__(self, total, start, stream=sys.stderr):
    self.total, self.start_step, self.stream = total, start, stream
    self.start_time = time.time()
    self.tty = stream.isatty()

  def update(self, step, metrics, final=False):
    elapsed = time.time() - self.start_time
    done = step - self.start_step
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (self.total - step) / rate if rate > 0 else float("inf")
    eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
    text = (f"step {step}/{self.total}  loss {metrics['total']:.4f}  angle {metrics['angular_error_deg']:.1f} deg"
            f"  {rate:.2f} steps/s  ETA {eta_text}")
    if self.tty:
      width = 24
      filled = int(width * step / self.total)
      self.stream.write(f"\r[{'=' * filled}{'.' * (width - filled)}] {text}\033[K")
      if final:
        self.stream.write("\n")
      self.stream.flush()
    else:
      print(text, file=self.stream, flush=True)


# ------------------------------------------------------------------------------------------------------------
# The run: setting up, then running.
# ------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Trainer:
  """Everything a run needs, made by `set_up`; `run()` trains to config.steps."""

  config: config_lib.TrainConfig
  strategy: tf.distribute.Strategy
  net: model_lib.KeypointNet
  optimizer: keras.optimizers.Optimizer
  step_var: tf.Variable
  non_finite_steps: tf.Variable
  checkpoint: tf.train.Checkpoint
  manager: tf.train.CheckpointManager
  best_manager: tf.train.CheckpointManager
  step_fn: object  # the tf.function from build_train_step
  dataset: object  # distributed dataset of training batches
  validation_dataset: object  # finite dataset of validation batches, or None
  source: str  # the data folder ("" when the dataset was given)
  write_dir: str  # this process's folder (the run directory on the chief)
  chief: bool
  _predict: object = None  # the model in inference mode as a tf.function, made on the first validation

  @property
  def step(self):
    return int(self.step_var.numpy())

  def run(self, until=None):
    """Trains from the restored step to config.steps. Returns the dict described in `train`.

    Args:
      until: optional step at which to stop early, with a checkpoint (as after Ctrl-C, but with status "done");
        the schedules still follow config.steps, so a run trained in legs equals one trained at once.
    """
    config = self.config
    start = self.step
    end = config.steps if until is None else min(until, config.steps)
    if start >= end:
      print(f"{config.model_dir} already reached step {start} >= {end}; nothing to do.")
      return {"step": start, "status": "done"}
    global_batch = config.batch_size * self.strategy.num_replicas_in_sync
    writer = (tf.summary.create_file_writer(os.path.join(config.model_dir, "train")) if self.chief
              else tf.summary.create_noop_writer())
    stop = {"signal": None}
    previous_handlers = _catch_signals(stop)
    progress = _Progress(config.steps, start) if self.chief else None
    status, metrics, last_save, fixed_batch = "done", {}, time.time(), None
    window_start, window_steps = time.time(), 0
    iterator = iter(self.dataset)
    try:
      step = start
      while step < end:
        try:
          batch = next(iterator)
        except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
          raise _data_fault(e, self.source, self.manager) from None
        if fixed_batch is None and self.strategy.num_replicas_in_sync == 1:
          fixed_batch = batch
        out = self.step_fn(batch)
        step += 1
        window_steps += 1
        log_now = step % config.log_every == 0 or step == end or stop["signal"]
        save_now = step % config.checkpoint_every == 0 or time.time() - last_save > config.checkpoint_every_secs
        validate_now = bool(config.validate_every) and (step % config.validate_every == 0 or step == end)
        if (log_now or save_now or validate_now) and int(self.non_finite_steps.numpy()) > 0:
          status = "non_finite"
          message = (f"Non-finite loss or gradient by step {step}: that step changed no weight or optimizer state, "
                     f"and training stopped without saving. The last checkpoint is {self.manager.latest_checkpoint}. "
                     "Lower --learning_rate or check the data, then run the same command to resume from it.")
          logging.error(message)
          print(message, file=sys.stderr, flush=True)
          break
        if log_now:
          metrics = {k: float(v.numpy()) for k, v in out.items()}
          elapsed = time.time() - window_start
          metrics["pairs_per_second"] = window_steps * global_batch / max(elapsed, 1e-9)
          metrics["seconds_per_step"] = elapsed / max(window_steps, 1)
          metrics["learning_rate"] = float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))
          window_start, window_steps = time.time(), 0
          with writer.as_default(step=step):
            for name, value in metrics.items():
              if name != "finite":
                tf.summary.scalar(name, value)
          if progress:
            progress.update(step, metrics, final=step == end)
        if fixed_batch is not None and self.chief and (step % config.image_summary_every == 0 or step == end):
          with writer.as_default(step=step):
            _image_summaries(self.net, fixed_batch)
        if validate_now and self.validation_dataset is not None:
          self._validate(step, writer)
        if stop["signal"]:
          status = "interrupted"
          break
        if save_now:
          self.manager.save(checkpoint_number=step)
          last_save = time.time()
      if status != "non_finite":
        self.manager.save(checkpoint_number=self.step)
        if status == "interrupted":
          print(f"\nInterrupted at step {self.step}; checkpoint saved to {self.manager.latest_checkpoint}. "
                "Run the same command again to resume.", flush=True)
    finally:
      writer.flush()
      for signum, handler in previous_handlers.items():
        signal.signal(signum, handler)
    return {"step": self.step, "status": status, **metrics}

  def _validate(self, step, writer):
    """Validation metrics to TensorBoard; a checkpoint in best/ when the median error is the lowest so far."""
    if self._predict is None:
      self._predict = tf.function(lambda images: self.net(images, training=False), reduce_retracing=True)
    row = validate(self._predict, self.validation_dataset, self.config.validate_pairs)
    with writer.as_default(step=step):
      for name in ("mean", "median", "under_30", "over_90", "das", "near_part"):
        if name in row and math.isfinite(row[name]):
          tf.summary.scalar(f"validation/{name}", row[name])
    best_file = os.path.join(self.write_dir, BEST_DIR, BEST_FILE)
    best = None
    if tf.io.gfile.exists(best_file):
      with tf.io.gfile.GFile(best_file) as f:
        best = json.load(f)
    if best is None or row["median"] < best["median"]:
      self.best_manager.save(checkpoint_number=step)
      tmp = best_file + ".tmp"
      with tf.io.gfile.GFile(tmp, "w") as f:
        json.dump({"step": step, **{k: v for k, v in row.items() if isinstance(v, (int, float))}}, f, indent=2)
      tf.io.gfile.rename(tmp, best_file, overwrite=True)
    if self.chief:
      print(f"validation at step {step}: median {row['median']:.1f} deg, mean {row['mean']:.1f}"
            + (f", DAS {row['das']:.3f}" if math.isfinite(row.get("das", float("nan"))) else "")
            + f" (best median so far {min(row['median'], best['median']) if best else row['median']:.1f})",
            file=sys.stderr, flush=True)


def _catch_signals(stop):
  """SIGINT / SIGTERM set stop["signal"] (the loop then saves and returns); returns the previous handlers."""
  def on_signal(signum, _):
    stop["signal"] = signum

  previous = {}
  for signum in (signal.SIGINT, signal.SIGTERM):
    try:
      previous[signum] = signal.signal(signum, on_signal)
    except ValueError:  # not in the main thread
      pass
  return previous


def set_up(config, dataset=None, validation_dataset=None, build_data=None):
  """Creates the strategy, data, model, optimizer and checkpoint of a run and restores its last checkpoint.

  Args:
    config: TrainConfig.
    dataset: optional tf.data.Dataset of training batches (input_pipeline format) used instead of the configured
      source (tests use this), or a function of no arguments that returns one (needed for multi_worker: building
      a dataset starts TensorFlow's runtime, which must wait until the strategy exists). Its batches are global:
      batch_size * replicas pairs, split between workers.
    validation_dataset: optional finite dataset of validation batches (default: the source's validation split
      when config.validate_every > 0 and no `dataset` is given).
    build_data: optional callable (data_dir, dataset_config) that builds missing data (see runs.dataset_source).
  Returns:
    Trainer.
  Raises:
    TrainingError: bad settings, a conflicting earlier run, or a checkpoint that does not match the model.
  """
  config = config_lib.resolve(config)
  # First: a multi-worker strategy must exist before anything starts TensorFlow's runtime.
  strategy = distribute.make_strategy(config.strategy, config.worker_timeout_secs)
  if config.mixed_precision:
    # bfloat16 needs no loss scaling (float16 would, and its scaled gradients would defeat the clipping).
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
  chief = distribute.is_chief(strategy)
  own_dir = distribute.write_dir(config.model_dir, strategy)
  global_batch = config.batch_size * strategy.num_replicas_in_sync
  source = ""
  if dataset is None:
    source = runs.dataset_source(config, build=build_data)
    # Recorded in config.json, so that an exported model unprojects with the camera it was trained on.
    config = dataclasses.replace(config, focal=config.focal or input_pipeline.focal_of_source(source))
    spec = input_pipeline.make_dataset(source, "train", None, shuffle=False, repeat=False).element_spec
    distributed = distribute.distribute_source(strategy, config, source, global_batch)
    if validation_dataset is None and config.validate_every:
      validation_dataset = _validation_dataset(config, source)
  else:
    dataset = dataset() if callable(dataset) else dataset
    spec = dataset.element_spec
    distributed = distribute.distribute_batches(strategy, distribute.numeric(dataset), global_batch)
  if config.supervised:
    data_keypoints = spec["keypoints"].shape[-2]
    if data_keypoints == 0:
      raise TrainingError("--supervised needs ground-truth keypoints, and this data has none (ShapeNet and the "
                          "released TFRecords carry no keypoints); train on the procedural data set.")
    if data_keypoints is not None and data_keypoints != config.model.num_keypoints:
      raise TrainingError(f"--supervised regresses the data's {data_keypoints} ground-truth keypoints, but "
                          f"num_keypoints={config.model.num_keypoints}: pass --num_keypoints={data_keypoints}.")
  _write_or_check_config(config, own_dir)
  keras.utils.set_random_seed(config.seed)
  with strategy.scope():
    net = model_lib.build_model(config.model, image_size=config.image_size)
    if config.orientation_from:
      _load_frozen_orientation_network(net, config.orientation_from)
    schedule = (LearningRate(config) if config.warmup_steps or config.lr_decay_fraction
                else config.learning_rate)
    optimizer = keras.optimizers.Adam(learning_rate=schedule, epsilon=1e-8)
    optimizer.build(net.trainable_variables)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    non_finite_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="non_finite_steps")
    generator = tf.random.Generator.from_seed(config.seed)
  checkpoint = tf.train.Checkpoint(model=net, optimizer=optimizer, step=step_var, generator=generator)
  manager = tf.train.CheckpointManager(checkpoint, runs.checkpoint_dir(own_dir), max_to_keep=config.keep_checkpoints)
  best_manager = tf.train.CheckpointManager(checkpoint, os.path.join(own_dir, BEST_DIR), max_to_keep=1)
  if manager.latest_checkpoint:
    runs.restore_all(checkpoint, manager.latest_checkpoint, f"run {config.model_dir}")
  restored = distribute.agree_on_step(strategy, checkpoint, manager, step_var, config.model_dir)
  if restored:
    logging.info("Resumed from %s at step %d.", restored, int(step_var.numpy()))
    if chief:
      print(f"Resuming from {restored} (step {int(step_var.numpy())}).", flush=True)
  step_fn = build_train_step(net, optimizer, strategy, config, generator, step_var, non_finite_steps)
  return Trainer(config=config, strategy=strategy, net=net, optimizer=optimizer, step_var=step_var,
                 non_finite_steps=non_finite_steps, checkpoint=checkpoint, manager=manager,
                 best_manager=best_manager, step_fn=step_fn, dataset=distributed,
                 validation_dataset=validation_dataset, source=source, write_dir=own_dir, chief=chief)


def train(config, dataset=None, validation_dataset=None, build_data=None, until=None):
  """Trains (or resumes) a run and returns its final metrics: `set_up(...).run(until)`.

  Args: see set_up and Trainer.run.
  Returns:
    dict: "step" (last step reached), "status" ("done", "interrupted" or "non_finite"), and the last logged
    metrics as Python floats.
  """
  return set_up(config, dataset, validation_dataset, build_data).run(until)


def _image_summaries(net, batch, max_images=4):
  """Both views with keypoints drawn (fixed colour per index) and the summed heatmaps."""
  for view in ("0", "1"):
    images = batch["image" + view][:max_images]
    out = net(images, training=False)
    drawn = visualization.draw_keypoints_batch(images.numpy(), out["uv"].numpy())
    tf.summary.image(f"keypoints/view{view}", drawn, max_outputs=max_images)
    heat = tf.reduce_sum(out["prob"], axis=1)  # [B, H, W]
    heat = heat / tf.maximum(tf.reduce_max(heat, axis=[1, 2], keepdims=True), 1e-12)
    tf.summary.image(f"heatmaps/view{view}", heat[..., tf.newaxis], max_outputs=max_images)
