"""tf.distribute plumbing: strategies by name, the chief, where each worker writes, data per worker, resume step.

One device, several GPUs (MirroredStrategy) and several machines (MultiWorkerMirroredStrategy from TF_CONFIG) run
the same train step (training.build_train_step); this module holds what differs between them, so `training` reads
as the method's loop. Multi-worker rules: the strategy is created before anything else starts TensorFlow's
runtime; only the chief writes the run (checkpoints, config, summaries), the other workers keep their own
resumption checkpoints; every worker reads its own share of the data; a restarted cluster resumes from one step.
"""

import json
import os
import subprocess
import sys

import tensorflow as tf

from keypointnet_tf import input_pipeline
from keypointnet_tf import runs


def make_strategy(name, worker_timeout_secs=300.0):
  """tf.distribute strategy by name: auto, default, mirrored, multi_worker.

  Call it before anything else touches TensorFlow's runtime (listing devices, creating tensors): a multi-worker
  strategy configures the collective ops at start-up and fails otherwise. "auto" looks at the physical devices
  only, which does not start the runtime.
  Args:
    name: str.
    worker_timeout_secs: float. multi_worker only: when the other workers have not joined within this time the
      process prints which workers were expected (TF_CONFIG) and is killed instead of waiting forever.
  """
  if name == "auto":
    gpus = tf.config.list_physical_devices("GPU")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
  if name == "multi_worker":
    return _multi_worker_strategy(worker_timeout_secs)
  raise ValueError(f"strategy must be auto, default, mirrored or multi_worker. Received: strategy={name!r}")


def _multi_worker_strategy(timeout_secs):
  """MultiWorkerMirroredStrategy from TF_CONFIG, or a clear exit when the cluster does not assemble in time."""
  if "TF_CONFIG" not in os.environ:
    raise runs.RunError("strategy=multi_worker needs the TF_CONFIG environment variable (cluster and task); see "
                        "docs/training.md, 'Several GPUs and several machines'.")
  try:
    tf_config = json.loads(os.environ["TF_CONFIG"])
    cluster, task = tf_config["cluster"], tf_config["task"]
    addresses = [address for job in ("chief", "worker") for address in cluster.get(job, [])]
    me = cluster[task["type"]][task["index"]]
  except (ValueError, KeyError, IndexError, TypeError) as e:
    raise runs.RunError(f"TF_CONFIG is not a valid cluster description ({e!r}). Expected e.g. "
                        '{"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]}, '
                        '"task": {"type": "worker", "index": 0}}') from e
  others = [a for a in addresses if a != me]
  message = (f"error: multi-worker training: the other workers ({', '.join(others)}) did not join this one ({me}) "
             f"within {timeout_secs:g} s, so it was stopped. Start the same command on every machine of "
             "TF_CONFIG's cluster with its own task index, check that the addresses and ports are reachable from "
             "here, or raise --worker_timeout_secs.")
  # The strategy's start-up blocks inside TensorFlow holding the GIL, so a Python thread cannot time it out; a
  # small watchdog process does, and goes away quietly when the strategy is up (or this process ends).
  watchdog = subprocess.Popen([sys.executable, "-m", "keypointnet_tf.watchdog", str(os.getpid()),
                               str(timeout_secs), message], stdin=subprocess.PIPE)
  try:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
  finally:
    watchdog.stdin.close()
    watchdog.wait()
  return strategy


# What a collective op raises when another worker has gone away (process killed, machine down, network cut).
PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
               tf.errors.DeadlineExceededError, tf.errors.InternalError)


def is_multi_worker(strategy):
  return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def lost_peer_message(strategy, error, last_checkpoint):
  """What a worker says when a collective op failed because another worker went away."""
  resolver = strategy.cluster_resolver
  cluster = resolver.cluster_spec().as_dict()
  me = cluster[resolver.task_type][resolver.task_id]
  peers = [address for job in ("chief", "worker") for address in cluster.get(job, []) if address != me]
  reason = (error.message or str(error)).strip().splitlines()[0][:300]
  return (f"Multi-worker training stopped: this worker ({me}) lost contact with the other workers "
          f"({', '.join(peers)}); one of them has probably stopped or become unreachable ({type(error).__name__}: "
          f"{reason}). The last checkpoint of the run is {last_checkpoint}. Start every worker again with the same "
          "command to resume from it.")


def is_chief(strategy):
  """True for the process that writes the run's checkpoints, config and summaries (the only one off multi-worker)."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return True
  if resolver.task_type == "chief":
    return True
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def write_dir(model_dir, strategy):
  """Where this process writes: the run directory on the chief, <model_dir>/workers/<task>-<id> elsewhere.

  Every multi-worker process saves its checkpoints (saving is collective), each in its own folder, so that a
  restarted cluster resumes on machines with or without a shared file system; only the chief's are the run's.
  """
  if is_chief(strategy):
    return model_dir
  resolver = strategy.cluster_resolver
  return os.path.join(model_dir, "workers", f"{resolver.task_type}-{resolver.task_id}")


def distribute_batches(strategy, dataset, global_batch):
  """A given dataset of global batches, each worker taking its rows of every batch (tests feed data this way).

  Worker w of W keeps rows [w * G / W, (w + 1) * G / W) of each global batch of G, split into per-replica batches
  in order, so that the replicas together see exactly the global batch a single process would.
  """
  def per_worker(context):
    per_worker_batch = global_batch // context.num_input_pipelines
    first = context.input_pipeline_id * per_worker_batch
    local = dataset.map(lambda batch: {k: v[first:first + per_worker_batch] for k, v in batch.items()})
    per_replica = context.get_per_replica_batch_size(global_batch)
    return local.unbatch().batch(per_replica, drop_remainder=True)

  return strategy.distribute_datasets_from_function(per_worker)


def distribute_source(strategy, config, source, global_batch):
  """The configured data, read as one input pipeline per worker (each its own shards) with per-replica batches."""
  def per_worker(context):
    return numeric(input_pipeline.make_dataset(
        source, "train", context.get_per_replica_batch_size(global_batch), image_size=config.image_size,
        shuffle_buffer=config.shuffle_buffer, seed=config.seed, input_context=context))

  return strategy.distribute_datasets_from_function(per_worker)


def numeric(dataset):
  """The step needs only numeric tensors (a string model_id would also stop XLA compiling it)."""
  return dataset.map(lambda batch: {k: v for k, v in batch.items() if k != "model_id"})


def agree_on_step(strategy, checkpoint, manager, step_var, model_dir):
  """Multi-worker: makes every worker resume from the same step; returns the checkpoint restored (or None).

  Workers save their checkpoints one by one, so a cluster stopped between two saves restarts with different latest
  steps, and its workers would go on from different weights without a word. The workers compare their restored
  steps (all-gather); when they differ, each restores its checkpoint of the smallest step, which all of them keep
  (keep_checkpoints > 1), or the run stops with a message naming the steps.
  """
  if not is_multi_worker(strategy):
    return manager.latest_checkpoint

  @tf.function
  def gather():
    def replica_fn():
      mine = tf.reshape(tf.cast(step_var, tf.float32), [1])  # exact below 2**24 steps
      return tf.distribute.get_replica_context().all_gather(mine, axis=0)
    return strategy.experimental_local_results(strategy.run(replica_fn))[0]

  steps = sorted({int(s) for s in gather().numpy()})
  if len(steps) == 1:
    return manager.latest_checkpoint
  target = steps[0]
  # The checkpoint files on disk (the manager's list can be shorter when its state file was rewritten).
  mine = {int(path[:-len(".index")].rsplit("-", 1)[1]): path[:-len(".index")]
          for path in tf.io.gfile.glob(os.path.join(manager.directory, "ckpt-*.index"))}
  if target and target not in mine:
    raise runs.RunError(f"{model_dir}: the workers' latest checkpoints are at different steps {steps} (the cluster "
                        f"stopped between two saves) and this worker has no checkpoint of step {target} to agree on "
                        f"(it keeps {sorted(mine)}). Copy the chief's checkpoint of one common step to every "
                        "worker's checkpoint folder, or start a new --model_dir.")
  if target:
    runs.restore_all(checkpoint, mine[target], f"run {model_dir}")
  else:  # some worker has no checkpoint: everyone starts afresh from the broadcast initial values
    raise runs.RunError(f"{model_dir}: some workers have checkpoints (steps {steps[1:]}) and others none. Start "
                        "every worker with the same run folder contents, or start a new --model_dir.")
  print(f"The workers' latest checkpoints were at steps {steps}; all resume from step {target}.", flush=True)
  return mine[target]
