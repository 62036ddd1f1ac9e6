"""Training runs on disk: their config.json and checkpoints, and loading a trained model from them.

A run directory (tools/train.py --model_dir) holds `config.json` (the resolved `config.TrainConfig`),
`checkpoints/` (tf.train.CheckpointManager) and TensorBoard logs. Evaluation, export, prediction and the frozen
orientation network of the paper's rows b/c all load runs through `load_trained_model`, which refuses a checkpoint
that does not hold every weight of the run's model.
"""

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import time

import tensorflow as tf

from keypointnet_tf import config as config_lib
from keypointnet_tf import input_pipeline
from keypointnet_tf import model as model_lib

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
# Models shipped with the package, one run-like folder per name (config.json, checkpoints/ with the model's
# weights only, pretrained.json with where it came from and its measured numbers); see write_pretrained.
PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")
PRETRAINED_INFO = "pretrained.json"


class RunError(RuntimeError):
  """A run that cannot be loaded, started or continued, with a message that says what to do."""


def load_config(model_dir):
  """The resolved TrainConfig saved beside a run's checkpoints."""
  path = os.path.join(model_dir, CONFIG_FILE)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path} not found: {model_dir} is not a training run directory.")
  with tf.io.gfile.GFile(path) as f:
    return config_lib.from_dict(json.load(f))


def write_or_check_config(config, write_dir):
  """Writes config.json for a new run; for an existing one, refuses conflicting settings (config.resume_conflicts).

  Args:
    config: the resolved TrainConfig.
    write_dir: where this process writes (the run directory, or a non-chief worker's own folder).
  """
  path = os.path.join(write_dir, CONFIG_FILE)
  current = config_lib.to_dict(config)
  has_checkpoint = tf.train.latest_checkpoint(checkpoint_dir(write_dir)) is not None
  if has_checkpoint and tf.io.gfile.exists(path):  # a run that never saved can be restarted with any settings
    with tf.io.gfile.GFile(path) as f:
      conflicts = config_lib.resume_conflicts(json.load(f), config)
    if conflicts:
      lines = "\n".join(f"  {key}: saved {old!r}, now {new!r}" for key, (old, new) in sorted(conflicts.items()))
      raise RunError(
          f"{config.model_dir} holds a run with different settings:\n{lines}\n"
          "Resume with the saved settings (drop the conflicting flags) or choose another --model_dir.")
  tf.io.gfile.makedirs(write_dir)
  tmp = path + ".tmp"
  with tf.io.gfile.GFile(tmp, "w") as f:
    json.dump(current, f, indent=2, sort_keys=True)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def checkpoint_dir(model_dir):
  return os.path.join(model_dir, CHECKPOINT_DIR)


def restore_all(checkpoint, path, what):
  """Restores `checkpoint` from `path` and checks that every object it tracks was found there.

  Args:
    checkpoint: tf.train.Checkpoint whose objects (model, optimizer, ...) already have their variables.
    path: checkpoint prefix.
    what: str naming the run, for the error message.
  Returns:
    the restore status (expect_partial() already called: values in the file that `checkpoint` does not track,
    e.g. an optimizer's when only the model is loaded, are fine).
  Raises:
    RunError: a variable of `checkpoint` is missing from the file or has another shape.
  """
  try:
    status = checkpoint.restore(path)
    status.assert_existing_objects_matched()
  except (AssertionError, ValueError, tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
    detail = str(e).strip().split(" Showing ")[0].splitlines()[0][:400]  # not the variables' values
    raise RunError(f"{what}: the checkpoint {path} does not hold every weight of this run's model (it was written "
                   f"by another model or configuration, or is damaged), so nothing was loaded from it:\n  {detail}\n"
                   "Check that config.json belongs to these checkpoints, or train the run again.") from e
  return status.expect_partial()


def checked_checkpoint(model_dir, checkpoint=None):
  """The checkpoint prefix to load: `checkpoint` if given and present, else the run's latest.

  Args:
    model_dir: run directory.
    checkpoint: optional checkpoint prefix (e.g. <model_dir>/milestones/ckpt-5000) or one of its files.
  Returns:
    str, a prefix whose ".index" file exists.
  Raises:
    FileNotFoundError: the given prefix has no ".index" file, or the run has no checkpoint.
  """
  if checkpoint:
    checkpoint = re.sub(r"\.(index|data-\d+-of-\d+)$", "", checkpoint)  # a file of the checkpoint: its prefix
    if not tf.io.gfile.exists(checkpoint + ".index"):
      raise FileNotFoundError(f"No checkpoint {checkpoint} ({checkpoint}.index does not exist): pass a checkpoint "
                              "prefix such as RUN/checkpoints/ckpt-5000 or RUN/milestones/ckpt-5000.")
    return checkpoint
  latest = tf.train.latest_checkpoint(checkpoint_dir(model_dir))
  if latest is None:
    raise FileNotFoundError(f"No checkpoint in {checkpoint_dir(model_dir)}: train first (tools/train.py).")
  return latest


def checkpoint_step(checkpoint):
  """The step a checkpoint prefix was saved at: 5000 for ".../ckpt-5000"."""
  return int(checkpoint.rsplit("-", 1)[1])


def load_trained_model(model_dir, checkpoint=None):
  """KeypointNet of a training run, with the latest (or the given) checkpoint's weights, all of them.

  Args:
    model_dir: run directory.
    checkpoint: optional checkpoint prefix; default the latest in <model_dir>/checkpoints.
  Returns:
    (model, TrainConfig).
  Raises:
    FileNotFoundError: no config.json or no checkpoint.
    RunError: the checkpoint lacks some of the model's weights or has other shapes (see restore_all).
  """
  run_config = load_config(model_dir)
  net = model_lib.build_model(run_config.model, image_size=run_config.image_size)
  checkpoint = checked_checkpoint(model_dir, checkpoint)
  restore_all(tf.train.Checkpoint(model=net), checkpoint, f"run {model_dir}")
  return net, run_config


def load_frozen_orientation_network(net, run_dir):
  """Copies a trained run's orientation network into `net` and freezes it (the paper's "pretrained O-Net").

  Raises:
    RunError: the run is missing or its orientation network has another size.
  """
  try:
    other, _ = load_trained_model(run_dir)
  except FileNotFoundError as e:
    raise RunError(f"orientation_from={run_dir}: {e}") from e
  if other.num_filters != net.num_filters:
    raise RunError(f"orientation_from={run_dir}: its num_filters={other.num_filters} differs from "
                   f"this run's {net.num_filters}; the orientation networks must have the same size.")
  for mine, theirs in ((net.orientation_backbone, other.orientation_backbone),
                       (net.orientation_head, other.orientation_head)):
    mine.set_weights(theirs.get_weights())
    mine.trainable = False


def pretrained_models():
  """Names of the models shipped in PRETRAINED_DIR (e.g. ["cars", "chairs", "planes"])."""
  if not os.path.isdir(PRETRAINED_DIR):
    return []
  return sorted(name for name in os.listdir(PRETRAINED_DIR)
                if os.path.exists(os.path.join(PRETRAINED_DIR, name, PRETRAINED_INFO)))


def pretrained_dir(name):
  """The run directory of shipped model `name`, loadable like any run (load_trained_model).

  Raises:
    RunError: no shipped model of that name (the message lists the ones there are).
  """
  if name not in pretrained_models():
    raise RunError(f"No shipped model {name!r}; shipped: {pretrained_models() or 'none'} (in {PRETRAINED_DIR}).")
  return os.path.join(PRETRAINED_DIR, name)


def chosen_run(model_dir=None, pretrained=None):
  """The run directory a tool was given: --model_dir, or --model naming a shipped model (exactly one of them).

  Raises:
    RunError: neither or both given, or no shipped model of that name.
  """
  if bool(model_dir) == bool(pretrained):
    raise RunError("Give exactly one of --model_dir (a training run) and --model (a shipped model: "
                   f"{', '.join(pretrained_models()) or 'none'}).")
  return model_dir or pretrained_dir(pretrained)


def write_pretrained(model_dir, target, info, checkpoint=None):
  """Writes a trained run's model as a shipped model: config.json, the weights alone, pretrained.json.

  The optimizer's state is left out (a third of a training checkpoint's size). Written to a temporary folder first
  and then moved into place, so an interrupted call leaves no half-written model.

  Args:
    model_dir: the training run.
    target: folder to create (e.g. PRETRAINED_DIR/planes); an existing one is replaced.
    info: JSON-ready dict stored as pretrained.json (source run, step, measured numbers, command).
    checkpoint: optional checkpoint prefix of the run to ship (default: its latest), e.g. a milestone.
  Returns:
    the size of the written files in bytes.
  """
  checkpoint = checked_checkpoint(model_dir, checkpoint)
  net, run_config = load_trained_model(model_dir, checkpoint)
  step = checkpoint_step(checkpoint)
  tmp = target.rstrip("/") + ".tmp"
  if tf.io.gfile.exists(tmp):
    tf.io.gfile.rmtree(tmp)
  manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=net), checkpoint_dir(tmp), max_to_keep=1)
  manager.save(checkpoint_number=step)
  config = dataclasses.replace(run_config, model_dir="", data_dir="")
  with tf.io.gfile.GFile(os.path.join(tmp, CONFIG_FILE), "w") as f:
    json.dump(config_lib.to_dict(config), f, indent=2, sort_keys=True)
  with tf.io.gfile.GFile(os.path.join(tmp, PRETRAINED_INFO), "w") as f:
    json.dump({"step": step, **info}, f, indent=2, sort_keys=True)
  if tf.io.gfile.exists(target):
    tf.io.gfile.rmtree(target)
  tf.io.gfile.rename(tmp, target)
  return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(target) for name in names)


def dataset_source(config, build=None):
  """The directory input_pipeline.make_dataset reads for a run: the released TFRecords or the built TFDS config.

  Args:
    config: a resolved TrainConfig (dataset_config filled in).
    build: optional callable (data_dir, dataset_config) that builds a missing shapenet_pairs config. The library
      never imports the dataset builder (it starts renderer processes); the tools pass
      the dataset package's shapenet_pairs.build.build_config.
  Raises:
    RunError: released_dir is not a folder of the paper's TFRecords.
    FileNotFoundError: the TFDS config is not built and `build` is None (the message has the build command).
  """
  if config.released_dir:
    if not input_pipeline.is_released_dir(config.released_dir):
      raise RunError(f"released_dir={config.released_dir} has no projection.txt and *.tfrecord shards.")
    return config.released_dir
  data_dir = config.data_dir or os.path.expanduser(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))
  try:
    return input_pipeline.find_tfds_dir(data_dir, config.dataset_config)
  except FileNotFoundError:
    if build is None:
      raise
  # Several processes may start on one empty data directory (the workers of a cluster on shared storage, or two
  # runs on one machine): one of them builds while the others wait for it, so nothing is rendered twice and no
  # process reads a half-written data set. The lock is the operating system's, released if its holder dies.
  with _build_lock(data_dir, config.dataset_config):
    try:
      return input_pipeline.find_tfds_dir(data_dir, config.dataset_config)  # built while we waited
    except FileNotFoundError:
      pass
    print(f"Building the shapenet_pairs/{config.dataset_config} data set in {data_dir} (first run only)...",
          flush=True)
    build(data_dir, config.dataset_config)
    return input_pipeline.find_tfds_dir(data_dir, config.dataset_config)


def ordered_split(config, split="test", batch_size=32, build=None):
  """Every pair of one split of a run's data once, in file order, at the run's image size (for evaluation and
  diagnostics). Batches as input_pipeline.make_dataset's: image0/1 [B, S, S, 4], mv0/1, mvi0/1 [B, 4, 4], ...

  Args:
    config: a resolved TrainConfig; build: as for dataset_source.
  """
  return input_pipeline.make_dataset(dataset_source(config, build=build), split, batch_size,
                                     image_size=config.image_size, shuffle=False, repeat=False, deterministic=True,
                                     drop_remainder=False)


@contextlib.contextmanager
def _build_lock(data_dir, dataset_config, poll_secs=2.0):
  """Holds an exclusive lock on <data_dir>/shapenet_pairs/.<config>.lock, saying so while another process has it.

  A data directory on a remote file system (gs://...) gets no lock: build it once before starting the workers.
  """
  if "://" in data_dir:
    yield
    return
  folder = os.path.join(data_dir, "shapenet_pairs")
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, f".{dataset_config}.lock"), "a") as lock:
    waited = False
    while True:
      try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
      except BlockingIOError:
        if not waited:
          print(f"Waiting for another process that is building shapenet_pairs/{dataset_config} in {data_dir}...",
                flush=True)
          waited = True
        time.sleep(poll_secs)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
