"""Configuration objects holding the released code's defaults.

Every default here is the value used by the released TF1 code (research/keypointnet/main.py); deviations are
listed in docs/deviations.md. The objects are frozen dataclasses: derive variants with
`dataclasses.replace`, never by mutation.
"""

import dataclasses
import json
import os
import re

from keypointnet_tf import geometry


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Network size."""

  num_keypoints: int = 10  # N, keypoints predicted per image (code: --num_kp).
  num_filters: int = 64  # Channels of every keypoint-network conv; the orientation net uses half.
  camera_distance: float = geometry.PAPER_CAMERA_DISTANCE  # Fixed depth bias: z_map = -camera_distance + conv_z.
  batch_norm_momentum: float = 0.999  # slim.batch_norm decay.
  sync_batch_norm: bool = False  # Batch statistics across replicas (the released code: per replica).
  # How the dilated convolutions are computed (model.DILATED_CONV_IMPLS): same network and weights, any speed.
  dilated_conv: str = "auto"
  fused_batch_norm: bool = True  # TensorFlow's fused batch-norm kernel (same results as the Keras layer).


@dataclasses.dataclass(frozen=True)
class LossWeights:
  """Weights of the six loss terms (main.py: loss_pose etc.)."""

  pose: float = 0.2  # Angular relative-pose loss through the SVD.
  consistency: float = 1.0  # Multi-view reprojection consistency.
  separation: float = 1.0  # Hinge on squared keypoint distances.
  silhouette: float = 1.0  # -log probability mass on the object mask.
  orientation: float = 1.0  # MSE of the orientation network's +-x axis ends.
  variance: float = 0.5  # Spread of each keypoint's heatmap ("part of silhouette loss").
  # Not in the paper (0 there): the anchored preset's warm-up anchor, see `losses.anchor_loss`. Its weight decays
  # linearly to 0 at TrainConfig.anchor_steps.
  anchor: float = 0.0


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Everything `losses.total_loss` needs besides tensors."""

  weights: LossWeights = LossWeights()
  separation_delta: float = 0.05  # Threshold on the *squared* distance (min distance ~0.224 units).
  pose_noise_stddev: float = 0.1  # Gaussian noise (object units) added to both keypoint sets.
  # Not in the paper (empty there): ((name, weight), ...) of loss terms registered with `losses.register_term`
  # (the research variants of keypointnet_research.losses), each added to the total with its weight.
  extra_terms: tuple = ()
  # Not in the paper (0 there): the silhouette and variance weights rise linearly from 0 at step 0 to their full
  # value at this step, so the pose and consistency losses act alone at first (reproduction/trials.md, the
  # silhouette warm-up trials). 0: full weights from the start.
  silhouette_warmup_steps: int = 0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A training run. Defaults are the paper's GPU recipe (released code: main.py flags and hparams)."""

  category: str = "planes"  # cars, planes or chairs.
  data_dir: str = ""  # TFDS data directory; "" means TFDS's default (~/tensorflow_datasets).
  dataset_config: str = ""  # shapenet_pairs config to train on; "" means the category's full config.
  released_dir: str = ""  # A folder of the paper's released TFRecords; used instead of TFDS when set.
  model_dir: str = ""  # Checkpoints, TensorBoard logs and config.json; "" means runs/<category>.
  steps: int = 200_000  # Total optimizer steps.
  batch_size: int = 8  # View pairs per replica (the paper: 8 x 32 replicas).
  learning_rate: float = 1e-3  # Adam (beta1 0.9, beta2 0.999, epsilon 1e-8 as TF1).
  warmup_steps: int = 0  # Linear learning-rate warm-up (0: constant rate, as the paper).
  # Not in the paper (0 there: a constant rate): the rate falls linearly to 0 over this last fraction of the run,
  # from learning_rate at step (1 - lr_decay_fraction) * steps to 0 at `steps` (reproduction/trials.md).
  lr_decay_fraction: float = 0.0
  clip_norm: float = 5.0  # Global-norm gradient clipping.
  # With several replicas: clip each replica's gradient before they are averaged (True, the released code:
  # clip_gradients_by_norm wraps SyncReplicasOptimizer), or clip the averaged gradient (False). One replica: equal.
  clip_per_replica: bool = True
  image_size: int = 128  # Images are resized to this side before the network.
  # NDC focal length of the training data's camera, recorded when the run starts (exported models unproject with
  # it). 0: not recorded (runs from before it was, which used the paper's 5 degree camera).
  focal: float = 0.0
  model: ModelConfig = ModelConfig()
  loss: LossConfig = LossConfig()
  anneal_start: int = 30_000  # Orientation flag: ground truth until here, then linearly annealed...
  anneal_end: int = 60_000  # ...to the predicted flag here (round() makes it a switch at the midpoint).
  anchor_steps: int = 0  # The anchor loss weight decays linearly from weights.anchor to 0 at this step.
  supervised: bool = False  # Regress ground-truth keypoints (L2) instead of the unsupervised losses.
  orientation_from: str = ""  # model_dir of a trained run whose orientation network is loaded and frozen.
  strategy: str = "auto"  # auto (mirrored on >1 GPU), default (one device), mirrored, multi_worker.
  mixed_precision: bool = False  # mixed_bfloat16 compute (GPU); heads, losses and the SVD stay float32.
  jit_compile: bool = False  # XLA-compile the train step.
  seed: int = 0  # Model initialisation, data order and pose noise.
  shuffle_buffer: int = 4096  # Encoded examples in the shuffle buffer.
  log_every: int = 50  # Steps between scalar summaries / log lines (summaries every 50 in the code).
  image_summary_every: int = 1000  # Steps between keypoint pictures in TensorBoard.
  checkpoint_every: int = 1000  # Steps between checkpoints (also saved on SIGINT/SIGTERM and at the end).
  checkpoint_every_secs: float = 600.0  # ...and at least this often in seconds (the code: 600 s).
  keep_checkpoints: int = 3  # Checkpoints kept by the CheckpointManager.
  # Validation during training: every this many steps (0: never) the validation split's angular error (predicted
  # flag, no noise) and DAS go to TensorBoard, and the best checkpoint by the median error is kept in best/.
  validate_every: int = 5000
  validate_pairs: int = 320  # Validation pairs evaluated each time (at most the split's size).
  # multi_worker: seconds to wait for every worker to join before failing with a message (never a hang).
  worker_timeout_secs: float = 300.0


CATEGORIES = ("cars", "planes", "chairs")  # The paper's categories, with procedural data and ShapeNet synsets.
_CATEGORY_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def check_category(category):
  """Raises ValueError unless `category` is a usable name: one of CATEGORIES, or the label of a data set built from
  the user's meshes (lower-case letters, digits, "_" and "-")."""
  if not isinstance(category, str) or not _CATEGORY_NAME.match(category):
    raise ValueError(f"category must be one of {CATEGORIES} or the name of a data set built from your own meshes "
                     f"(lower-case letters, digits, _ and -). Received: category={category!r}")


def category_of(dataset_config):
  """The category of a shapenet_pairs config name: "planes" for planes_small_x10, the name itself otherwise.

  A data set built from the user's meshes (`mesh_dir`) is its own category: `category_of("mugs") == "mugs"`.
  """
  for category in CATEGORIES:
    if dataset_config == category or dataset_config.startswith(category + "_"):
      return category
  return dataset_config


# Categories whose presets train on procedural generator 2 (its cars have fronts and backs that differ, as real
# cars do; on generator 1 every method flips about 15% of the car pairs). Their generator-1 data keeps its names.
GENERATOR_2 = ("cars",)


def _data(category, size=""):
  """A preset's data set: <category><size> (size "" or "_small_x10"), with "_gen2" for GENERATOR_2 categories;
  for a category of the user's own meshes, the data set of that name."""
  if category not in CATEGORIES:
    return category
  return f"{category}{size}" + ("_gen2" if category in GENERATOR_2 else "")


def _small_data(category):
  """The CPU presets' data: <category>_small_x10 (cars: from generator 2), or the user's data set of that name."""
  return _data(category, "_small_x10")


# What the recipe study adopted per category on top of the CPU preset (reproduction/trials.md, 2026-12-03 to -06):
# planes train 12,000 steps with the silhouette warm-up over the first 4,000. The warm-up gave better test medians
# and DAS than the paper's schedule in every seed at 8,000 steps, and five seeds at 12,000 were all out of chance
# (medians 6.1-8.3, DAS 0.63-0.73). On generator-2 cars it put the keypoints on the plane of symmetry (DAS 0.62
# against 0.79) and on chairs it changed nothing beyond a seed's spread, so they keep the paper's schedule.
# `--silhouette_warmup_steps=0 --steps=8000` trains the paper's schedule on planes.
CPU_RECIPES = {"planes": {"steps": 12000, "silhouette_warmup_steps": 4000}}


def cpu_preset(category="planes"):
  """A label-free run sized for a 2-core CPU (docs/training.md "Presets", the default without a GPU).

  The paper's network, six losses, weights, pose noise and separation threshold on a smaller problem: the
  `<category>_small_x10` data (2,000 training objects, 64 px renders; cars from generator 2; for another category,
  the data set of that name built from the user's meshes) resized to 32 px, 16 filters, batch-norm
  momentum 0.99 (so inference statistics settle within the run), Adam 1e-3, 32 view pairs per step for 8,000
  steps, and the orientation flag annealed from the ground truth to the predicted one over steps 3k-6k. No keypoint
  labels and no absolute pose: the keypoint network sees the image and the flag; the orientation targets train the
  orientation network only, as in the paper. Reported as "KeypointNet".

  Planes add what the recipe study adopted (CPU_RECIPES): 12,000 steps, the silhouette and variance weights rising
  from 0 over the first 4,000 (not in the paper; reported as "KeypointNet (variant: silhouette_warmup_steps
  4000)"). Still label-free: the warm-up only reorders when the paper's own losses act.
  """
  config = TrainConfig(
      category=category,
      dataset_config=_small_data(category),
      steps=8000,
      batch_size=32,
      learning_rate=1e-3,
      image_size=32,
      model=ModelConfig(num_keypoints=10, num_filters=16, batch_norm_momentum=0.99),
      anneal_start=3000,
      anneal_end=6000,
      log_every=50,
      image_summary_every=1000,
      checkpoint_every=500,
      validate_every=1000,
  )
  recipe = dict(CPU_RECIPES.get(category, {}))
  return _with_schedules(dataclasses.replace(config, steps=recipe.pop("steps", config.steps)), **recipe)


def cpu_anchor_preset(category="planes"):
  """`cpu_preset` plus the warm-up anchor: "KeypointNet + axis-anchor warm-up", not label-free.

  One addition that is not in the paper: `losses.anchor_loss` (weight 1, decaying linearly to 0 at step 4,000)
  ties keypoints 0 and 1 to the projections of the object's +-x axis ends, two landmarks from the absolute pose.
  The anchor is the only difference from `cpu_preset` (planes keep its silhouette warm-up and 12,000 steps).
  Kept as an option and as the anchored control of the reproduction (`reproduction.method_configs`).
  """
  cpu = cpu_preset(category)
  return dataclasses.replace(cpu, loss=dataclasses.replace(cpu.loss, weights=dataclasses.replace(
      cpu.loss.weights, anchor=1.0)), anchor_steps=4000)


# The lateral anchor's weight in `cpu_lateral_preset`, and the silhouette warm-up it decays over where the
# category's CPU recipe has none (reproduction/trials.md, 2026-12-07: chosen before its first run, not tuned).
LATERAL_ANCHOR_WEIGHT = 10.0
LATERAL_WARMUP_STEPS = 4000


def cpu_lateral_preset(category="planes"):
  """`cpu_preset` plus the lateral anchor: not label-free, reported with "lateral_anchor 10" among its variants.

  One addition that is not in the paper: `losses.lateral_anchor_loss` (weight 10, decaying linearly to 0 over the
  silhouette warm-up) pulls keypoints 0-5 to alternate sides of the object's plane of mirror symmetry, at least
  0.15 object units from it, where label-free runs gather most of their keypoints. It reads the object frame from
  the known pose and assumes the category's mirror plane (X-Y), so it is a named variant, never plain "KeypointNet".
  Planes keep their recipe's 12,000 steps and 4,000-step warm-up; other categories get a warm-up of
  LATERAL_WARMUP_STEPS (the anchor acts during a warm-up only) at their recipe's length. Its gain is measured on
  planes (five seeds); on generator-2 cars two seeds split, on chairs one seed lost DAS (docs/research.md).
  """
  cpu = cpu_preset(category)
  loss = cpu.loss
  if not loss.silhouette_warmup_steps:
    loss = dataclasses.replace(loss, silhouette_warmup_steps=LATERAL_WARMUP_STEPS)
  return dataclasses.replace(cpu, loss=dataclasses.replace(
      loss, extra_terms=loss.extra_terms + (("lateral_anchor", LATERAL_ANCHOR_WEIGHT),)))


# Step numbers that a run's length scales (silhouette_warmup_steps is LossConfig's, the others TrainConfig's).
SCHEDULE_FIELDS = ("anneal_start", "anneal_end", "anchor_steps", "silhouette_warmup_steps")


def _schedule(config, name):
  return config.loss.silhouette_warmup_steps if name == "silhouette_warmup_steps" else getattr(config, name)


def _with_schedules(config, **values):
  """dataclasses.replace for schedule fields, silhouette_warmup_steps going into the loss config."""
  if "silhouette_warmup_steps" in values:
    config = dataclasses.replace(config, loss=dataclasses.replace(
        config.loss, silhouette_warmup_steps=values.pop("silhouette_warmup_steps")))
  return dataclasses.replace(config, **values)


def fit_schedules(config, steps, explicit=()):
  """`config` with `steps` total steps and its schedules ending within them.

  The orientation flag's anneal must end (the predicted flag is what evaluation uses), the anchor must decay to 0
  (else the run ends with two supervised landmarks) and the silhouette warm-up must reach the full weights before
  the last step. When they already do, only `steps` changes. Otherwise the schedule fields not named in `explicit`
  are scaled by steps / config.steps (so `--steps=2000` with the anchored CPU preset anneals the flag over steps
  750-1500 and ends the anchor at 1,000), and an explicit one that still ends after the last step is refused.
  Supervised runs use the ground-truth flag and no anchor, so their schedules are left alone.

  Args:
    config: TrainConfig.
    steps: int, the run's total steps.
    explicit: names of SCHEDULE_FIELDS the user set (kept as given).
  Returns:
    TrainConfig.
  Raises:
    ValueError: an explicit schedule ends after `steps`, with what to pass instead.
  """
  def ends(c):
    return {"anneal_end": c.anneal_end, "anchor_steps": c.anchor_steps if c.loss.weights.anchor else 0,
            "silhouette_warmup_steps": c.loss.silhouette_warmup_steps}

  if config.supervised or all(end <= steps for end in ends(config).values()):
    return dataclasses.replace(config, steps=steps)
  scale = steps / config.steps
  values = {name: max(1, round(_schedule(config, name) * scale)) if _schedule(config, name) else 0
            for name in SCHEDULE_FIELDS if name not in explicit}
  fitted = _with_schedules(dataclasses.replace(config, steps=steps), **values)
  late = [f"{name}={end}" for name, end in ends(fitted).items() if name in explicit and end > steps]
  if late:
    raise ValueError(f"{', '.join(late)} ends after the last step ({steps}): the run would finish before the "
                     "orientation flag is annealed to the predicted one (what evaluation uses), before the anchor "
                     "has decayed or before the silhouette warm-up reaches the full weights. Pass values <= "
                     f"{steps}, or leave them out to scale the preset's schedules.")
  if fitted.anneal_start > fitted.anneal_end:
    raise ValueError(f"anneal_start={fitted.anneal_start} is after anneal_end={fitted.anneal_end}.")
  return fitted


def plan_run(config, steps, explicit=(), saved=None):
  """The config a run trains with: a new run's schedules fitted to `steps` (fit_schedules); a resumed run keeps
  the schedules it was started with (`saved`, its TrainConfig), except those the user set (`explicit`)."""
  if saved is None:
    return fit_schedules(config, steps, explicit)
  kept = {name: _schedule(saved, name) for name in SCHEDULE_FIELDS if name not in explicit}
  return _with_schedules(dataclasses.replace(config, steps=steps), **kept)


PRESETS = ("auto", "cpu", "cpu_anchor", "cpu_lateral", "paper")


def preset(name, category, gpu_visible):
  """The TrainConfig a tool's --preset names, and its label for start-up lines.

  Args:
    name: one of PRESETS. "auto" is the paper's recipe when a GPU is visible, else the CPU preset.
    category: str.
    gpu_visible: bool.
  Returns:
    (TrainConfig, str).
  """
  if name not in PRESETS:
    raise ValueError(f"preset must be one of {PRESETS}. Received: {name!r}")
  if name == "cpu_anchor":
    return cpu_anchor_preset(category), "CPU preset + axis-anchor warm-up"
  if name == "cpu_lateral":
    return cpu_lateral_preset(category), "CPU preset + lateral anchor"
  if name == "cpu" or (name == "auto" and not gpu_visible):
    return cpu_preset(category), "CPU preset"
  return TrainConfig(category=category, dataset_config=_data(category)), "paper recipe"


ANCHOR_METHOD = "KeypointNet + axis-anchor warm-up"  # Reported name of runs trained with the anchor loss.


def method_name(config):
  """The name a run is reported under; the paper's method name only for the paper's losses.

  "KeypointNet" for the paper's six losses with the released code's weights, noise and separation threshold (at
  any size and budget: the budget goes beside the name). "KeypointNet + axis-anchor warm-up" when the warm-up
  anchor is on: during the warm-up keypoints 0 and 1 are pulled to the projections of the object's +-x axis ends,
  two landmarks from the absolute pose, so such a run is not label-free in the paper's sense. "supervised
  baseline" for the supervised regression. Any other difference in the loss configuration is listed after the name
  ("(variant: separation_delta 0.2)"), and a frozen pretrained orientation network adds "with pretrained O-Net"
  (the paper's rows b and c).

  Args:
    config: TrainConfig.
  Returns:
    str.
  """
  paper = LossConfig()
  if config.supervised:
    name = "supervised baseline"
  else:
    name = ANCHOR_METHOD if config.loss.weights.anchor else "KeypointNet"
    changes = [f"{field.name} {getattr(config.loss.weights, field.name):g}"
               for field in dataclasses.fields(LossWeights) if field.name != "anchor"
               and getattr(config.loss.weights, field.name) != getattr(paper.weights, field.name)]
    for field in dataclasses.fields(LossConfig):
      value = getattr(config.loss, field.name)
      if field.name not in ("weights", "extra_terms") and value != getattr(paper, field.name):
        changes.append(field.name if isinstance(value, bool) else f"{field.name} {value:g}")
    changes += [f"{name} {weight:g}" for name, weight in config.loss.extra_terms]
    if config.lr_decay_fraction:
      changes.append(f"lr_decay_fraction {config.lr_decay_fraction:g}")
    if changes:
      name += f" (variant: {', '.join(changes)})"
  if config.orientation_from:
    name += " with pretrained O-Net"
  return name


def method_base(name):
  """The method a reported name is a variant of: `name` without its "(variant: ...)" list.

  "KeypointNet (variant: silhouette_warmup_steps 4000) with pretrained O-Net" -> "KeypointNet with pretrained
  O-Net"; names without a variant come back unchanged. Tables that place a row by its method (Table 1's rows a-d)
  use it, so a preset with a named variant still fills its method's row and keeps its full name there.
  """
  return re.sub(r" \(variant: [^)]*\)", "", name)


# ------------------------------------------------------------------------------------------------------------
# Validation, serialisation and the resume rule: the one place that decides them.
# ------------------------------------------------------------------------------------------------------------

# Fields that may differ between a run and its resumption (they do not change what is being trained).
RESUMABLE_FIELDS = ("steps", "model_dir", "data_dir", "focal", "log_every", "image_summary_every", "checkpoint_every",
                    "checkpoint_every_secs", "keep_checkpoints", "strategy", "jit_compile", "released_dir",
                    "validate_every", "validate_pairs", "worker_timeout_secs")
# ModelConfig fields that choose how the same network is computed (model.DILATED_CONV_IMPLS), not what is trained.
IMPLEMENTATION_FIELDS = ("dilated_conv", "fused_batch_norm")


def resolve(config):
  """`config` with its derived defaults filled in (model_dir, dataset_config), after validating it.

  Raises:
    ValueError: a setting out of range, with the value received.
  """
  check_category(config.category)
  for name in ("steps", "batch_size", "image_size", "log_every", "checkpoint_every", "validate_pairs"):
    if getattr(config, name) < 1:
      raise ValueError(f"{name} must be positive. Received: {name}={getattr(config, name)}")
  if not config.learning_rate > 0:
    raise ValueError(f"learning_rate must be positive. Received: learning_rate={config.learning_rate}")
  if not 0 <= config.lr_decay_fraction <= 1:
    raise ValueError("lr_decay_fraction must be in [0, 1] (0: a constant rate, as the paper). Received: "
                     f"lr_decay_fraction={config.lr_decay_fraction}")
  if config.loss.silhouette_warmup_steps < 0:
    raise ValueError("silhouette_warmup_steps must be 0 (no warm-up) or positive. Received: "
                     f"silhouette_warmup_steps={config.loss.silhouette_warmup_steps}")
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


def to_dict(config):
  """TrainConfig -> JSON-ready dict (nested dicts for the model and loss), as config.json stores it."""
  return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(values):
  """Inverse of to_dict. Fields missing from `values` (added since it was written) get their defaults, and the
  research variants that used to be fields become the same terms by name (LossConfig.extra_terms)."""
  values = dict(values)
  values["model"] = ModelConfig(**values["model"])
  loss = dict(values["loss"])
  weights = dict(loss["weights"])
  extra = [tuple(term) for term in loss.get("extra_terms", ())]
  triangulation = weights.pop("triangulation", 0.0)
  if triangulation:
    extra.append(("triangulation", triangulation))
  if loss.pop("separation_in_image", False):
    extra.append(("image_separation", weights["separation"]))
    weights["separation"] = 0.0
  loss["weights"] = LossWeights(**weights)
  loss["extra_terms"] = tuple(extra)
  values["loss"] = LossConfig(**loss)
  return TrainConfig(**values)


def settings(config, ignore=RESUMABLE_FIELDS):
  """What a run trains, as a dict: `config` (a TrainConfig or a config.json dict) without the fields in `ignore`
  and the model's implementation fields. Equal settings train the same network on the same data the same way."""
  values = to_dict(config if isinstance(config, TrainConfig) else from_dict(config))
  values = {k: v for k, v in values.items() if k not in ignore}
  values["model"] = {k: v for k, v in values["model"].items() if k not in IMPLEMENTATION_FIELDS}
  return values


def resume_conflicts(saved, config):
  """{field: (saved value, new value)} for each setting a resumption may not change (empty: it may resume).

  Args:
    saved: the run's config.json dict (or a TrainConfig).
    config: the TrainConfig it would resume with.
  """
  theirs, mine = settings(saved), settings(config)
  return {key: (theirs.get(key), value) for key, value in mine.items() if theirs.get(key) != value}


def same_training(a, b, compare_steps=True):
  """Whether two configs (TrainConfigs or config.json dicts) train the same thing: equal settings, and with
  `compare_steps` the same number of steps (a stored result of another length is another result)."""
  ignore = [name for name in RESUMABLE_FIELDS if not (compare_steps and name == "steps")]
  return settings(a, ignore) == settings(b, ignore)


def with_anchor(config, weight=1.0):
  """`config` with the axis-anchor warm-up (not in the paper) at `weight`; a config without an anchor schedule
  gets one that decays to 0 at half its steps."""
  anchor_steps = config.anchor_steps or max(config.steps // 2, 1)
  return dataclasses.replace(config, anchor_steps=anchor_steps,
                             loss=dataclasses.replace(config.loss, weights=dataclasses.replace(config.loss.weights,
                                                                                               anchor=weight)))


def focal_of(config):
  """The NDC focal length a run was trained with: the recorded one, else the paper's 5 degree camera's."""
  return config.focal or geometry.focal_from_fov(geometry.PAPER_FOV_DEGREES)
