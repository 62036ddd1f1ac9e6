"""Trains KeypointNet (label-free), the anchored variants or the supervised baseline.

Data: shapenet_pairs or the paper's released TFRecords.

Examples:
  python tools/train.py --category=planes                 # CPU preset on a machine without a GPU
  python tools/train.py --category=planes --preset=cpu_anchor --model_dir=runs/planes_anchor
  python tools/train.py --category=planes --preset=cpu_lateral --model_dir=runs/planes_lateral
  python tools/train.py --category=cars --preset=paper    # the paper's recipe (GPU; 200k steps)
  python tools/train.py --category=planes --supervised --model_dir=runs/planes_supervised
  python tools/train.py --category=cars --released_dir=/data/cars_with_keypoints --preset=paper
  python tools/train.py --dataset_config=mugs             # a data set built from your own meshes (docs/dataset.md)

The data set is built first when it is missing. Rerunning the same command resumes from the last checkpoint;
Ctrl-C saves a checkpoint and stops. TensorBoard: tensorboard --logdir runs/
"""

import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import tensorflow as tf

from keypointnet_tf import config as config_lib
from keypointnet_tf import losses
from keypointnet_tf import runs
from keypointnet_tf import training
from keypointnet_datasets.shapenet_pairs import build

_PRESET = flags.DEFINE_enum("preset", "auto", list(config_lib.PRESETS),
                            "auto: the CPU preset (label-free) when no GPU is visible, else the paper's recipe. "
                            "cpu_anchor: the CPU preset plus the axis-anchor warm-up (not in the paper). "
                            "cpu_lateral: the CPU preset plus the lateral anchor (not in the paper).")
_CATEGORY = flags.DEFINE_string(
    "category", None, "Object category: cars, planes, chairs, or the name of a data set built from your own meshes "
    "(mesh_dir). Default: the --dataset_config's category, else planes.")
_INT_FLAGS = {name: flags.DEFINE_integer(name, None, help_text) for name, help_text in [
    ("steps", "Total training steps."), ("batch_size", "View pairs per replica."),
    ("num_keypoints", "Keypoints N."), ("num_filters", "Keypoint-network width."),
    ("image_size", "Image side fed to the network."), ("anneal_start", "Orientation-flag anneal start step."),
    ("anneal_end", "Orientation-flag anneal end step."), ("seed", "Random seed."),
    ("warmup_steps", "Learning-rate warm-up steps."), ("log_every", "Steps between logs."),
    ("checkpoint_every", "Steps between checkpoints."),
    ("validate_every", "Steps between validation-split evaluations (TensorBoard, best/ checkpoint); 0: never."),
    ("validate_pairs", "Validation pairs evaluated each time."),
    ("anchor_steps", "Step at which the anchor loss weight has decayed to 0 (default with an anchor: half the "
                     "steps)."),
    ("silhouette_warmup_steps", "Ramp the silhouette and variance weights from 0 to their values over this many "
                                "steps (not in the paper; default 0: full weights from the start; "
                                "reproduction/trials.md).")]}
_FLOAT_FLAGS = {name: flags.DEFINE_float(name, None, help_text) for name, help_text in [
    ("learning_rate", "Adam learning rate."),
    ("lr_decay_fraction", "Decay the learning rate linearly to 0 over this last fraction of the run (not in the "
                          "paper; default 0: constant)."),
    ("worker_timeout_secs", "multi_worker: seconds to wait for the other workers before exiting with a message."), ("noise", "Pose-loss noise stddev (object units)."),
    ("separation_delta", "Separation threshold on squared distance."),
    ("pose_weight", "Weight of the pose loss."), ("consistency_weight", "Weight of the consistency loss."),
    ("separation_weight", "Weight of the separation loss."), ("silhouette_weight", "Weight of the silhouette loss."),
    ("orientation_weight", "Weight of the orientation loss."), ("variance_weight", "Weight of the variance loss."),
    ("anchor_weight", "Initial weight of the warm-up anchor loss (not in the paper; cpu_anchor 1, other presets 0).")]}
_STR_FLAGS = {name: flags.DEFINE_string(name, None, help_text) for name, help_text in [
    ("data_dir", "TFDS data directory (default ~/tensorflow_datasets)."),
    ("dataset_config", "shapenet_pairs config (default: the preset's)."),
    ("released_dir", "Folder of the paper's released TFRecords (instead of TFDS)."),
    ("model_dir", "Run directory (default runs/<category>)."),
    ("orientation_from", "Run directory whose orientation network is loaded and frozen.")]}
_SUPERVISED = flags.DEFINE_bool("supervised", None, "Train the supervised baseline.")
_STRATEGY = flags.DEFINE_enum("strategy", None, ["auto", "default", "mirrored", "multi_worker"],
                              "tf.distribute strategy.")
_MIXED = flags.DEFINE_bool("mixed_precision", None, "mixed_bfloat16 compute.")
_JIT = flags.DEFINE_bool("jit_compile", None, "XLA-compile the train step.")
_DILATED = flags.DEFINE_enum("dilated_conv", None, ["auto", "keras", "native"],
                             "How the dilated convolutions are computed (same network; auto: the op's own dilations "
                             "on CPUs with oneDNN, the Keras layer on GPUs).")
_CLIP_PER_REPLICA = flags.DEFINE_bool(
    "clip_per_replica", None, "With several replicas: clip each replica's gradient to --clip_norm before averaging "
    "(the released code; default) or, with --noclip_per_replica, clip the averaged gradient.")
_FUSED_BN = flags.DEFINE_bool("fused_batch_norm", None, "Batch norm through TensorFlow's fused kernel (same results).")


def _config_from_flags():
  dataset_config = _STR_FLAGS["dataset_config"].value
  category = _CATEGORY.value or (config_lib.category_of(dataset_config) if dataset_config else "planes")
  config_lib.check_category(category)
  config, preset = config_lib.preset(_PRESET.value, category, bool(tf.config.list_physical_devices("GPU")))
  top = {name: flag.value for name, flag in {**_INT_FLAGS, **_STR_FLAGS}.items()
         if flag.value is not None and name not in ("num_keypoints", "num_filters", "steps", "silhouette_warmup_steps")}
  top.update({name: flag.value for name, flag in [("learning_rate", _FLOAT_FLAGS["learning_rate"]),
                                                   ("lr_decay_fraction", _FLOAT_FLAGS["lr_decay_fraction"]),
                                                   ("worker_timeout_secs", _FLOAT_FLAGS["worker_timeout_secs"]),
                                                   ("supervised", _SUPERVISED), ("strategy", _STRATEGY),
                                                   ("mixed_precision", _MIXED), ("jit_compile", _JIT),
                                                   ("clip_per_replica", _CLIP_PER_REPLICA)]
              if flag.value is not None})
  model = {name: _INT_FLAGS[name].value for name in ("num_keypoints", "num_filters")
           if _INT_FLAGS[name].value is not None}
  model.update({name: flag.value for name, flag in [("dilated_conv", _DILATED), ("fused_batch_norm", _FUSED_BN)]
                if flag.value is not None})
  loss = {key: _FLOAT_FLAGS[name].value for name, key in [("noise", "pose_noise_stddev"),
                                                          ("separation_delta", "separation_delta")]
          if _FLOAT_FLAGS[name].value is not None}
  if _INT_FLAGS["silhouette_warmup_steps"].value is not None:
    loss["silhouette_warmup_steps"] = _INT_FLAGS["silhouette_warmup_steps"].value
  weights = {name[:-len("_weight")]: flag.value for name, flag in _FLOAT_FLAGS.items()
             if name.endswith("_weight") and flag.value is not None}
  config = dataclasses.replace(
      config, **top, model=dataclasses.replace(config.model, **model),
      loss=dataclasses.replace(config.loss, **loss, weights=dataclasses.replace(config.loss.weights, **weights)))
  # Schedules scale with --steps when the preset's would not finish within them; a resumed run keeps its own.
  explicit = [name for name in config_lib.SCHEDULE_FIELDS if _INT_FLAGS[name].value is not None]
  if config.loss.weights.anchor and not config.anchor_steps:  # --anchor_weight on a preset without an anchor
    config = config_lib.with_anchor(config, config.loss.weights.anchor)
  saved = _saved_run(config_lib.resolve(config).model_dir)
  config = config_lib.plan_run(config, _INT_FLAGS["steps"].value or config.steps, explicit, saved)
  if not config.supervised:  # refused here, before the start line, rather than by training.train
    losses.check_terms(config.loss)
  return config, preset


def _saved_run(model_dir):
  """The TrainConfig of the run in model_dir when it has a checkpoint to resume from, else None."""
  if tf.train.latest_checkpoint(runs.checkpoint_dir(model_dir)) is None:
    return None
  try:
    return runs.load_config(model_dir)
  except FileNotFoundError:
    return None


def main(argv):
  del argv
  try:
    config, preset = _config_from_flags()
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"Training {config_lib.method_name(config)} on {config.category} with the {preset} ({config.steps} steps, "
        f"batch {config.batch_size}, {config.image_size} px, {config.model.num_filters} filters).", flush=True)
  lateral = dict(config.loss.extra_terms).get("lateral_anchor")
  if lateral and not config.supervised:
    print(f"Note: the lateral anchor (not in the paper) pulls keypoints 0-{losses.LATERAL_KEYPOINTS - 1} to "
          "alternate sides of the object's mirror plane until step "
          f"{config.loss.silhouette_warmup_steps:,} (weight {lateral:g} decaying to 0): it reads the object frame from "
          "the absolute pose. --preset=cpu trains without it.", flush=True)
  if config.loss.weights.anchor and not config.supervised:
    print("Note: the axis-anchor warm-up (not in the paper) pulls keypoints 0 and 1 to the projections of the "
          "object's +-x axis ends until step {:,}: two landmarks from the absolute pose. --anchor_weight=0 trains "
          "the paper's losses only.".format(config.anchor_steps), flush=True)
  try:
    result = training.train(config, build_data=build.build_config)
  except (runs.RunError, build.DataBuildError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"Finished: {result}")
  return 0 if result["status"] in ("done", "interrupted") else 1


if __name__ == "__main__":
  app.run(main)
