"""Training: one tf.function train step over both views, checkpoints and resume, TensorBoard, tf.distribute.

`train(config)` is the whole job; tools/train.py only turns flags into a `config.TrainConfig`.
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
import numpy as np
import tensorflow as tf

from keypointnet_tf import config as config_lib
from keypointnet_tf import geometry
from keypointnet_tf import input_pipeline
from keypointnet_tf import losses
from keypointnet_tf import model as model_lib
from keypointnet_tf import visualization

CONFIG_FILE = "config.json"
# Fields that may differ between a run and its resumption (they do not change what is being trained).
RESUMABLE_FIELDS = ("steps", "model_dir", "data_dir", "log_every", "image_summary_every", "checkpoint_every",
                     "checkpoint_every_secs", "keep_checkpoints", "strategy", "jit_compile", "released_dir")
# ModelConfig fields that choose how the same network is computed (model.DILATED_CONV_IMPLS), not what is trained.
IMPLEMENTATION_FIELDS = ("dilated_conv", "fused_batch_norm")


def training_settings(config_dict, ignore=RESUMABLE_FIELDS):
  """A config dict without the fields in `ignore` and without the model's implementation fields.

  Two runs whose training_settings are equal train the same network on the same data with the same recipe.
  """
  settings = {k: v for k, v in config_dict.items() if k not in ignore}
  if isinstance(settings.get("model"), dict):
    settings["model"] = {k: v for k, v in settings["model"].items() if k not in IMPLEMENTATION_FIELDS}
  return settings


class TrainingError(RuntimeError):
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


def resolve(config):
  """Fills in derived defaults (model_dir, dataset_config) and validates the config."""
  if config.category not in ("cars", "planes", "chairs"):
    raise ValueError(f"category must be cars, planes or chairs. Received: category={config.category!r}")
  for name in ("steps", "batch_size", "image_size", "log_every", "checkpoint_every"):
    if getattr(config, name) < 1:
      raise ValueError(f"{name} must be positive. Received: {name}={getattr(config, name)}")
  if not config.learning_rate > 0:
    raise ValueError(f"learning_rate must be positive. Received: learning_rate={config.learning_rate}")
  if config.loss.weights.anchor and not config.supervised:
    if config.anchor_steps < 1:
      raise ValueError("The anchor loss (anchor weight > 0) needs anchor_steps >= 1, the step where its weight "
                       f"has decayed to 0. Received: anchor_steps={config.anchor_steps}")
    if config.model.num_keypoints < 2:
      raise ValueError("The anchor loss ties keypoints 0 and 1 to the orientation targets, so it needs "
                       f"num_keypoints >= 2. Received: num_keypoints={config.model.num_keypoints}; set the "
                       "anchor weight to 0 instead.")
  return dataclasses.replace(
      config,
      model_dir=config.model_dir or os.path.join("runs", config.category),
      dataset_config=config.dataset_config or config.category)


def config_to_dict(config):
  return dataclasses.asdict(config)


def config_from_dict(values):
  values = dict(values)
  values["model"] = config_lib.ModelConfig(**values["model"])
  loss = dict(values["loss"])
  loss["weights"] = config_lib.LossWeights(**loss["weights"])
  values["loss"] = config_lib.LossConfig(**loss)
  return config_lib.TrainConfig(**values)


def load_config(model_dir):
  """The resolved TrainConfig saved beside a run's checkpoints."""
  path = os.path.join(model_dir, CONFIG_FILE)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path} not found: {model_dir} is not a training run directory.")
  with tf.io.gfile.GFile(path) as f:
    return config_from_dict(json.load(f))


def _write_or_check_config(config):
  """Writes config.json for a new run; for an existing one, refuses conflicting settings."""
  path = os.path.join(config.model_dir, CONFIG_FILE)
  current = config_to_dict(config)
  has_checkpoint = tf.train.latest_checkpoint(os.path.join(config.model_dir, "checkpoints")) is not None
  if has_checkpoint and tf.io.gfile.exists(path):  # a run that never saved can be restarted with any settings
    with tf.io.gfile.GFile(path) as f:
      saved = config_to_dict(config_from_dict(json.load(f)))  # fields added since then get their defaults
    mine, theirs = training_settings(json.loads(json.dumps(current))), training_settings(saved)
    conflicts = {key: (theirs.get(key), value) for key, value in mine.items() if theirs.get(key) != value}
    if conflicts:
      lines = "\n".join(f"  {key}: saved {old!r}, now {new!r}" for key, (old, new) in sorted(conflicts.items()))
      raise TrainingError(
          f"{config.model_dir} holds a run with different settings:\n{lines}\n"
          "Resume with the saved settings (drop the conflicting flags) or choose another --model_dir.")
  tf.io.gfile.makedirs(config.model_dir)
  tmp = path + ".tmp"
  with tf.io.gfile.GFile(tmp, "w") as f:
    json.dump(current, f, indent=2, sort_keys=True)
  tf.io.gfile.rename(tmp, path, overwrite=True)


# ------------------------------------------------------------------------------------------------------------
# Pieces of the train step.
# ------------------------------------------------------------------------------------------------------------


def supervised_targets(batch, view):
  """Ground-truth (u, v, z) of the object-space keypoints in one view: [B, K, 3], and their mask [B, K]."""
  xyz = geometry.transform_points(batch["mv" + view], batch["keypoints"])  # [B, K, 3] camera space
  return geometry.project(xyz, batch["focal"]), tf.cast(batch["keypoint_valid"], tf.float32)


def supervised_loss(outputs, targets, mask):
  """Mean squared error of (u, v, z) over valid keypoints: [] float32."""
  error = tf.reduce_sum(tf.square(outputs["uvz"] - targets), axis=-1)  # [B, K]
  return tf.reduce_sum(error * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


def compute_losses(net, batch, config, generator, mix, training=True, step=0):
  """Runs both views and returns the loss dict (see losses.total_loss; supervised adds "supervised").

  Args:
    net: KeypointNet.
    batch: a batch from input_pipeline.make_dataset.
    config: TrainConfig.
    generator: tf.random.Generator for the pose noise.
    mix: [] float32 orientation flag mix (1: ground truth, 0: predicted).
    training: batch-norm mode.
    step: int or [] tensor, the global step (for the anchor loss's decay).
  """
  flag_weight = tf.ones([]) if config.supervised else mix
  outputs = [net(batch["image" + v], batch["orientation_flag" + v], flag_weight, training=training)
             for v in ("0", "1")]
  focal = batch["focal"]
  xyz = [geometry.unproject(out["uvz"], focal) for out in outputs]
  terms = {}
  if config.supervised:
    targets = [supervised_targets(batch, v) for v in ("0", "1")]
    terms["supervised"] = tf.add_n([supervised_loss(out, t, m) for out, (t, m) in zip(outputs, targets)])
    terms["orientation"] = tf.add_n([losses.orientation_loss(out["orientation"], batch["mv" + v], focal)
                                     for out, v in zip(outputs, ("0", "1"))])
    terms["total"] = terms["supervised"] + config.loss.weights.orientation * terms["orientation"]
  else:
    terms = losses.total_loss(outputs[0], outputs[1], batch, config.loss, generator,
                              anchor_scale=anchor_scale(step, config.anchor_steps))
  # Logged only: the noise-free angular error of this batch, in degrees, and orientation-flag accuracy.
  estimate = geometry.estimate_rotation(xyz[0], xyz[1])
  terms["angular_error_deg"] = losses.angle_degrees(tf.reduce_mean(
      geometry.angular_distance(estimate, batch["relative_rotation"])))
  terms["orientation_accuracy"] = tf.reduce_mean(tf.concat([
      tf.cast(tf.equal(out["predicted_orientation_flag"], batch["orientation_flag" + v]), tf.float32)
      for out, v in zip(outputs, ("0", "1"))], axis=0))
  return terms, outputs


def make_strategy(name):
  """tf.distribute strategy by name: auto, default, mirrored, multi_worker."""
  gpus = tf.config.list_logical_devices("GPU")
  if name == "auto":
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
  if name == "multi_worker":
    if "TF_CONFIG" not in os.environ:
      raise TrainingError("strategy=multi_worker needs the TF_CONFIG environment variable (cluster and task).")
    return tf.distribute.MultiWorkerMirroredStrategy()
  raise ValueError(f"strategy must be auto, default, mirrored or multi_worker. Received: strategy={name!r}")


def build_train_step(net, optimizer, strategy, config, generator, step_var, non_finite_steps):
  """Returns a tf.function: distributed batch -> dict of replica-averaged metrics.

  Per replica: loss on the local batch (normalised by its own shape), gradient of loss / num_replicas,
  all-reduced (sum) so every replica holds the gradient of the global mean loss; clipped by global norm;
  replaced by zeros when the loss or any gradient is not finite (counted in `non_finite_steps`; the host then
  stops the run). Keras's optimizer sums gradients across replicas again, so it receives the global
  gradient / num_replicas.
  """
  num_replicas = strategy.num_replicas_in_sync
  variables = net.trainable_variables

  def replica_step(batch):
    mix = flag_mix(step_var, config.anneal_start, config.anneal_end)
    with tf.GradientTape() as tape:
      terms, _ = compute_losses(net, batch, config, generator, mix, step=step_var)
      scaled = terms["total"] / num_replicas
    grads = tape.gradient(scaled, variables)
    context = tf.distribute.get_replica_context()
    if num_replicas > 1:
      grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
    finite = tf.logical_and(tf.math.is_finite(terms["total"]),
                            tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads]))
    if num_replicas > 1:
      finite = context.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32)) < 0.5
    clipped, global_norm = tf.clip_by_global_norm(grads, config.clip_norm)
    # No tf.cond around apply_gradients (MirroredStrategy forbids merge_call inside control flow): a
    # non-finite step applies zero gradients, is counted in non_finite_steps, and the host stops the run
    # before it saves anything.
    safe = [tf.where(finite, g, tf.zeros_like(g)) / num_replicas for g in clipped]
    optimizer.apply_gradients(zip(safe, variables))
    terms["gradient_norm"] = global_norm
    terms["finite"] = tf.cast(finite, tf.float32)
    terms["flag_mix"] = mix
    return terms

  @tf.function(jit_compile=config.jit_compile)
  def step_fn(batch):
    per_replica = strategy.run(replica_step, args=(batch,))
    metrics = {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in per_replica.items()}
    step_var.assign_add(1)
    non_finite_steps.assign_add(tf.cast(metrics["finite"] < 1.0, tf.int64))
    return metrics

  return step_fn


def _load_frozen_orientation_network(net, run_dir):
  """Copies a trained run's orientation network into `net` and freezes it (the paper's "pretrained O-Net")."""
  try:
    other, _ = load_trained_model(run_dir)
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


def load_trained_model(model_dir, checkpoint=None):
  """KeypointNet of a training run, with the latest (or the given) checkpoint's weights.

  Returns:
    (model, TrainConfig).
  """
  run_config = load_config(model_dir)
  net = model_lib.build_model(run_config.model, image_size=32)
  checkpoint = checkpoint or tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
  if checkpoint is None:
    raise FileNotFoundError(f"No checkpoint in {model_dir}/checkpoints: train first (tools/train.py).")
  tf.train.Checkpoint(model=net).restore(checkpoint).expect_partial()
  return net, run_config


# ------------------------------------------------------------------------------------------------------------
# Data source.
# ------------------------------------------------------------------------------------------------------------


def dataset_source(config, build_if_missing=True):
  """The directory make_dataset reads: the released TFRecords, or the built TFDS config (built if missing)."""
  if config.released_dir:
    if not input_pipeline.is_released_dir(config.released_dir):
      raise TrainingError(f"released_dir={config.released_dir} has no projection.txt and *.tfrecord shards.")
    return config.released_dir
  data_dir = config.data_dir or os.path.expanduser(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))
  try:
    return input_pipeline.find_tfds_dir(data_dir, config.dataset_config)
  except FileNotFoundError:
    if not build_if_missing:
      raise
  logging.info("shapenet_pairs/%s is not built in %s: building it now.", config.dataset_config, data_dir)
  print(f"Building the shapenet_pairs/{config.dataset_config} data set in {data_dir} (first run only)...",
        flush=True)
  # The builder lives in the datasets/ package (installed as keypointnet_datasets); imported only here.
  from keypointnet_datasets.shapenet_pairs import shapenet_pairs_dataset_builder  # pylint: disable=g-import-not-at-top
  builder = shapenet_pairs_dataset_builder.Builder(config=config.dataset_config, data_dir=data_dir)
  builder.download_and_prepare()
  return input_pipeline.find_tfds_dir(data_dir, config.dataset_config)


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
# The run.
# ------------------------------------------------------------------------------------------------------------


def train(config, dataset=None):
  """Trains (or resumes) a run and returns its final metrics.

  Args:
    config: TrainConfig.
    dataset: optional tf.data.Dataset of batches (input_pipeline format) used instead of the configured source
      (tests use this). Its batch size must be batch_size * replicas.
  Returns:
    dict: "step" (last step reached), "status" ("done", "interrupted" or "non_finite"), and the last logged
    metrics as Python floats.
  """
  config = resolve(config)
  if config.mixed_precision:
    # bfloat16 needs no loss scaling (float16 would, and its scaled gradients would defeat the clipping).
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
  strategy = make_strategy(config.strategy)
  global_batch = config.batch_size * strategy.num_replicas_in_sync
  if dataset is None:
    source = dataset_source(config)
    dataset = input_pipeline.make_dataset(source, "train", global_batch, image_size=config.image_size,
                                          shuffle_buffer=config.shuffle_buffer, seed=config.seed)
  if config.supervised:
    data_keypoints = dataset.element_spec["keypoints"].shape[-2]
    if data_keypoints == 0:
      raise TrainingError("--supervised needs ground-truth keypoints, and this data has none (ShapeNet and the "
                          "released TFRecords carry no keypoints); train on the procedural data set.")
    if data_keypoints is not None and data_keypoints != config.model.num_keypoints:
      raise TrainingError(f"--supervised regresses the data's {data_keypoints} ground-truth keypoints, but "
                          f"num_keypoints={config.model.num_keypoints}: pass --num_keypoints={data_keypoints}.")
  # The step needs only numeric tensors (a string model_id would also stop XLA compiling it).
  dataset = dataset.map(lambda batch: {k: v for k, v in batch.items() if k != "model_id"})
  _write_or_check_config(config)
  keras.utils.set_random_seed(config.seed)
  with strategy.scope():
    net = model_lib.build_model(config.model, image_size=config.image_size)
    if config.orientation_from:
      _load_frozen_orientation_network(net, config.orientation_from)
    schedule = config.learning_rate
    if config.warmup_steps:
      schedule = keras.optimizers.schedules.PolynomialDecay(
          config.learning_rate * 1e-2, config.warmup_steps, config.learning_rate, power=1.0)
    optimizer = keras.optimizers.Adam(learning_rate=schedule, epsilon=1e-8)
    optimizer.build(net.trainable_variables)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    non_finite_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="non_finite_steps")
    generator = tf.random.Generator.from_seed(config.seed)
  checkpoint = tf.train.Checkpoint(model=net, optimizer=optimizer, step=step_var, generator=generator)
  manager = tf.train.CheckpointManager(checkpoint, os.path.join(config.model_dir, "checkpoints"),
                                       max_to_keep=config.keep_checkpoints)
  if manager.latest_checkpoint:
    checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    logging.info("Resumed from %s at step %d.", manager.latest_checkpoint, int(step_var.numpy()))
    print(f"Resuming from {manager.latest_checkpoint} (step {int(step_var.numpy())}).", flush=True)
  start = int(step_var.numpy())
  if start >= config.steps:
    print(f"{config.model_dir} already reached step {start} >= steps={config.steps}; nothing to do.")
    return {"step": start, "status": "done"}

  step_fn = build_train_step(net, optimizer, strategy, config, generator, step_var, non_finite_steps)
  iterator = iter(strategy.experimental_distribute_dataset(dataset))
  writer = tf.summary.create_file_writer(os.path.join(config.model_dir, "train"))
  fixed_batch = None
  stop = {"signal": None}

  def on_signal(signum, _):
    stop["signal"] = signum

  previous_handlers = {}
  for signum in (signal.SIGINT, signal.SIGTERM):
    try:
      previous_handlers[signum] = signal.signal(signum, on_signal)
    except ValueError:  # not in the main thread
      pass
  progress = _Progress(config.steps, start)
  status, metrics, last_save = "done", {}, time.time()
  window_start, window_steps = time.time(), 0
  try:
    step = start
    while step < config.steps:
      batch = next(iterator)
      if fixed_batch is None:
        fixed_batch = batch if strategy.num_replicas_in_sync == 1 else None
      out = step_fn(batch)
      step += 1
      window_steps += 1
      log_now = step % config.log_every == 0 or step == config.steps or stop["signal"]
      save_now = step % config.checkpoint_every == 0 or time.time() - last_save > config.checkpoint_every_secs
      if (log_now or save_now) and int(non_finite_steps.numpy()) > 0:
        status = "non_finite"
        message = (f"Non-finite loss or gradient by step {step}: training stopped without saving. The last good "
                   f"checkpoint is {manager.latest_checkpoint}. Lower --learning_rate or check the data, then "
                   "resume from it.")
        logging.error(message)
        print(message, file=sys.stderr, flush=True)
        break
      if log_now:
        metrics = {k: float(v.numpy()) for k, v in out.items()}
        elapsed = time.time() - window_start
        metrics["pairs_per_second"] = window_steps * global_batch / max(elapsed, 1e-9)
        metrics["seconds_per_step"] = elapsed / max(window_steps, 1)
        metrics["learning_rate"] = float(optimizer.learning_rate.numpy()) if hasattr(
            optimizer.learning_rate, "numpy") else float(config.learning_rate)
        window_start, window_steps = time.time(), 0
        with writer.as_default(step=step):
          for name, value in metrics.items():
            if name != "finite":
              tf.summary.scalar(name, value)
        progress.update(step, metrics, final=step == config.steps)
      if fixed_batch is not None and (step % config.image_summary_every == 0 or step == config.steps):
        with writer.as_default(step=step):
          _image_summaries(net, fixed_batch)
      if stop["signal"]:
        status = "interrupted"
        break
      if save_now:
        manager.save(checkpoint_number=step)
        last_save = time.time()
    if status != "non_finite":
      manager.save(checkpoint_number=int(step_var.numpy()))
      if status == "interrupted":
        print(f"\nInterrupted at step {int(step_var.numpy())}; checkpoint saved to {manager.latest_checkpoint}. "
              "Run the same command again to resume.", flush=True)
  finally:
    writer.flush()
    for signum, handler in previous_handlers.items():
      signal.signal(signum, handler)
  return {"step": int(step_var.numpy()), "status": status, **metrics}


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
