"""Training: one tf.function train step over both views, checkpoints and resume, TensorBoard, tf.distribute.

Read top to bottom: the step (`compute_losses`, `build_train_step`), then the run: `set_up` (strategy, data, model,
optimizer, restore; returns a `Trainer`) and `Trainer.run` (the loop: steps, logs, validation, checkpoints, signals
and non-finite steps); `train(config)` is both. Around it: `schedules` (the step-dependent weights and rate),
`distribute` (tf.distribute and multi-worker plumbing), `monitoring` (validation, progress, pictures), `runs` (the
run on disk) and `config` (every setting). tools/train.py only turns flags into a `config.TrainConfig`.
"""

import dataclasses
import os
import signal
import sys
import time

from absl import logging
import keras
import tensorflow as tf

from keypointnet_tf import config as config_lib
from keypointnet_tf import distribute
from keypointnet_tf import geometry
from keypointnet_tf import input_pipeline
from keypointnet_tf import losses
from keypointnet_tf import model as model_lib
from keypointnet_tf import monitoring
from keypointnet_tf import runs
from keypointnet_tf import schedules


class TrainingError(runs.RunError):
  """A run that cannot start or continue, with a message that says what to do."""


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
  if config.supervised:
    terms = losses.supervised_total(outputs[0], outputs[1], batch, config.loss.weights.orientation)
  else:
    terms = losses.total_loss(outputs[0], outputs[1], batch, config.loss, generator,
                              anchor_scale=schedules.anchor_scale(step, config.anchor_steps),
                              silhouette_scale=schedules.silhouette_scale(step, config.loss.silhouette_warmup_steps))
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
    mix = schedules.flag_mix(step_var, config.anneal_start, config.anneal_end)
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
    progress = monitoring.Progress(config.steps, start) if self.chief else None
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
            monitoring.image_summaries(self.net, fixed_batch)
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
    except distribute.PEER_ERRORS as e:
      if not distribute.is_multi_worker(self.strategy):
        raise
      raise TrainingError(distribute.lost_peer_message(self.strategy, e, self.manager.latest_checkpoint)) from None
    finally:
      writer.flush()
      for signum, handler in previous_handlers.items():
        signal.signal(signum, handler)
    return {"step": self.step, "status": status, **metrics}

  def _validate(self, step, writer):
    if self._predict is None:
      self._predict = tf.function(lambda images: self.net(images, training=False), reduce_retracing=True)
    monitoring.validate_and_keep_best(self._predict, self.validation_dataset, self.config.validate_pairs, step,
                                      writer, self.best_manager, self.write_dir, self.chief)


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
    ValueError: a setting out of range (config.resolve) or an extra loss term that cannot act in this run
      (losses.check_terms), before anything is built.
  """
  config = config_lib.resolve(config)
  if not config.supervised:  # the supervised loss has no extra terms
    losses.check_terms(config.loss)
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
    first = input_pipeline.first_example(source)
    data_keypoints = first["keypoints"].shape[0]
    # Recorded in config.json, so that an exported model unprojects with the camera it was trained on.
    config = dataclasses.replace(config, focal=config.focal or float(first["focal"]))
    distributed = distribute.distribute_source(strategy, config, source, global_batch)
    if validation_dataset is None and config.validate_every:
      validation_dataset = monitoring.validation_dataset(config, source)
  else:
    dataset = dataset() if callable(dataset) else dataset
    data_keypoints = dataset.element_spec["keypoints"].shape[-2]
    distributed = distribute.distribute_batches(strategy, distribute.numeric(dataset), global_batch)
  if config.supervised:
    if data_keypoints == 0:
      raise TrainingError("--supervised needs ground-truth keypoints, and this data has none (ShapeNet and the "
                          "released TFRecords carry no keypoints); train on the procedural data set.")
    if data_keypoints is not None and data_keypoints != config.model.num_keypoints:
      raise TrainingError(f"--supervised regresses the data's {data_keypoints} ground-truth keypoints, but "
                          f"num_keypoints={config.model.num_keypoints}: pass --num_keypoints={data_keypoints}.")
  runs.write_or_check_config(config, own_dir)
  keras.utils.set_random_seed(config.seed)
  with strategy.scope():
    net = model_lib.build_model(config.model, image_size=config.image_size)
    if config.orientation_from:
      runs.load_frozen_orientation_network(net, config.orientation_from)
    schedule = (schedules.LearningRate(config) if config.warmup_steps or config.lr_decay_fraction
                else config.learning_rate)
    optimizer = keras.optimizers.Adam(learning_rate=schedule, epsilon=1e-8)
    optimizer.build(net.trainable_variables)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    non_finite_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="non_finite_steps")
    generator = tf.random.Generator.from_seed(config.seed)
  checkpoint = tf.train.Checkpoint(model=net, optimizer=optimizer, step=step_var, generator=generator)
  manager = tf.train.CheckpointManager(checkpoint, runs.checkpoint_dir(own_dir), max_to_keep=config.keep_checkpoints)
  best_manager = tf.train.CheckpointManager(checkpoint, os.path.join(own_dir, monitoring.BEST_DIR), max_to_keep=1)
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
