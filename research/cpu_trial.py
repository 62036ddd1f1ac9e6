"""One CPU trial: a trial base with overrides, trained, then evaluated on the test split (the research protocol).

Run it as `python bench/cpu_trial.py` (the command the trial log records) or `python -m keypointnet_research.cpu_trial`.

The protocol (fixed for every trial in `reproduction/trials.md`): planes_small, the test split's 320 pairs, the
predicted orientation flag, no pose noise; mean / median angular error, 3D-SE, DAS and the share of keypoints near a
ground-truth part. Examples:
  python bench/cpu_trial.py --name=paper_losses --overrides='{"loss": {"weights": {"anchor": 0.0}}}'
  python bench/cpu_trial.py --name=long --overrides='{"steps": 50000, "loss": {"weights": {"anchor": 0.0}}}' \
      --eval_at=5000,8000,10000,15000,20000,25000,30000,35000,40000,45000,50000
  python bench/cpu_trial.py --name=label_free_seed1 --preset=cpu_label_free --overrides='{"seed": 1}'
--overrides is JSON merged field by field into the --preset's config for --category (nested for "model" and
"loss"). --preset names one of BASES, the configurations the trial log's records start from. They are frozen
here, not taken from the library's presets, so every logged command still trains what it trained when it was run
after the presets change: cpu is the anchored CPU preset of the first sessions (planes_small, 8 pairs per step),
cpu_label_free the same without the anchor for 20,000 steps, label_free_x10 the CPU preset since 2026-11-25
(`config.cpu_preset`: 2,000 training objects, 32 pairs per step, 8,000 steps).
--eval_at trains to each step in turn (the run resumes between them; every schedule, the learning-rate decay
included, follows the config's steps, so the legs train what one uninterrupted run trains), evaluates there and
keeps a copy of that checkpoint in <run>/milestones/; the final step (config steps) is always evaluated. A rerun
resumes and skips the milestones the run had already passed (their evaluations are in --results from the leg that
reached them). Every evaluation is appended as one JSON line to --results (with the trial's name, step, overrides,
training seconds and the command), and printed.
A data set that is not built yet is built first, as tools/train.py does.
"""

import dataclasses
import glob
import json
import os
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from keypointnet_datasets.shapenet_pairs import build
from keypointnet_research import losses as research_losses  # pylint: disable=unused-import  (registers the terms)
from keypointnet_tf import config as config_lib
from keypointnet_tf import evaluation
from keypointnet_tf import training

_NAME = flags.DEFINE_string("name", "trial", "Trial name; the run goes to --runs_dir/<name>.")
_RUNS = flags.DEFINE_string("runs_dir", "/tmp/cpu_trials", "Where trial runs go.")
_CATEGORY = flags.DEFINE_enum("category", "planes", ["cars", "planes", "chairs"], "Category.")


def _anchored_v1(category):
  """The anchored CPU preset of the first sessions, written out (not derived from today's presets)."""
  return config_lib.TrainConfig(
      category=category, dataset_config=f"{category}_small", steps=8000, batch_size=8, learning_rate=1e-3,
      image_size=32, model=config_lib.ModelConfig(num_keypoints=10, num_filters=16, batch_norm_momentum=0.99),
      anneal_start=3000, anneal_end=6000, log_every=50, image_summary_every=1000, checkpoint_every=500,
      validate_every=1000, loss=config_lib.LossConfig(weights=config_lib.LossWeights(anchor=1.0)), anchor_steps=4000)


BASES = {
    "cpu": _anchored_v1,
    "cpu_label_free": lambda category: dataclasses.replace(
        _anchored_v1(category), steps=20_000, loss=config_lib.LossConfig(), anchor_steps=0),
    "label_free_x10": lambda category: dataclasses.replace(
        _anchored_v1(category), dataset_config=f"{category}_small_x10", batch_size=32,
        loss=config_lib.LossConfig(), anchor_steps=0),
}

_PRESET = flags.DEFINE_enum("preset", "cpu", list(BASES), "The trial base (BASES) the overrides apply to.")
_OVERRIDES = flags.DEFINE_string("overrides", "{}", "JSON merged into the preset.")
_DATA = flags.DEFINE_string("data_dir", "", "TFDS data dir.")
_EVAL_PAIRS = flags.DEFINE_integer("eval_pairs", None, "Test pairs to evaluate (default: the whole split).")
_EVAL_AT = flags.DEFINE_list("eval_at", [], "Steps at which to evaluate besides the last one.")
_RESULTS = flags.DEFINE_string("results", "", "JSON-lines file each evaluation is appended to.")


def legacy_overrides(overrides):
  """Overrides in the trial log's older spelling, rewritten for today's config (the logged commands still run).

  {"loss": {"weights": {"triangulation": W}}} and {"loss": {"separation_in_image": true}} named research loss
  variants that were config fields; they are now extra terms of keypointnet_research.losses.
  """
  loss = dict(overrides.get("loss", {}))
  weights = dict(loss.get("weights", {}))
  extra = list(loss.get("extra_terms", ()))
  if "triangulation" in weights:
    weight = weights.pop("triangulation")
    if weight:
      extra.append(("triangulation", weight))
  if loss.pop("separation_in_image", False):
    extra.append(("image_separation", weights.get("separation", config_lib.LossWeights().separation)))
    weights["separation"] = 0.0
  if weights or "weights" in loss:
    loss["weights"] = weights
  if extra:
    loss["extra_terms"] = tuple(tuple(term) for term in extra)
  return {**overrides, "loss": loss} if "loss" in overrides else overrides


def merge(obj, overrides):
  """dataclasses.replace, recursively for nested dataclasses; unknown fields raise a clear error."""
  fields = {f.name for f in dataclasses.fields(obj)}
  unknown = set(overrides) - fields
  if unknown:
    raise app.UsageError(f"Unknown {type(obj).__name__} field(s) {sorted(unknown)}; known: {sorted(fields)}")
  values = {}
  for key, value in overrides.items():
    current = getattr(obj, key)
    values[key] = merge(current, value) if dataclasses.is_dataclass(current) else value
  return dataclasses.replace(obj, **values)


def _keep_milestone(model_dir, step):
  """Copies the checkpoint of `step` to <model_dir>/milestones/ (the manager keeps only the last few)."""
  target = os.path.join(model_dir, "milestones")
  os.makedirs(target, exist_ok=True)
  for path in glob.glob(os.path.join(model_dir, "checkpoints", f"ckpt-{step}.*")):
    shutil.copy2(path, target)


def _rounded(value):
  """Floats at 4 decimals, inside dicts and lists too (the record's keypoint_parts)."""
  if isinstance(value, float):
    return round(value, 4)
  if isinstance(value, dict):
    return {k: _rounded(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_rounded(v) for v in value]
  return value


def legs(config, milestones, train=training.train):
  """Trains to each milestone in turn; yields (step, train result, seconds) for each one the run stands at.

  A milestone the run had already passed when it resumed is skipped with a message: its evaluation was logged by the
  leg that reached it, and evaluating the latest checkpoint there would record later weights under an earlier step.
  A run stopped at a milestone before its evaluation (the run stands exactly there) is evaluated.

  Args:
    config: the trial's TrainConfig.
    milestones: ascending steps.
    train: training.train or a stand-in with its signature (config, until=..., build_data=...).
  """
  for step in milestones:
    started = time.time()
    result = train(config, until=step, build_data=build.build_config)
    if result["status"] != "done":
      print("TRAIN", json.dumps(_rounded(result)))
      sys.exit(f"Trial {config.model_dir} stopped at step {result['step']} ({result['status']}).")
    if result["step"] > step:
      print(f"Skipping the evaluation at step {step}: the run resumed past it (at step {result['step']}).")
      continue
    yield step, result, round(time.time() - started, 1)


def main(argv):
  del argv
  overrides = json.loads(_OVERRIDES.value)
  config = merge(BASES[_PRESET.value](_CATEGORY.value), legacy_overrides(overrides))
  config = dataclasses.replace(config, model_dir=os.path.join(_RUNS.value, _NAME.value), data_dir=_DATA.value)
  milestones = sorted({int(s) for s in _EVAL_AT.value if int(s) < config.steps} | {config.steps})
  for step, result, train_seconds in legs(config, milestones):
    _keep_milestone(config.model_dir, step)
    row, _ = evaluation.evaluate_run(config.model_dir, "test", max_pairs=_EVAL_PAIRS.value,
                                     build_data=build.build_config)
    row.pop("errors")
    record = {"name": _NAME.value, "category": config.category, "step": step, "preset": _PRESET.value,
              "overrides": overrides,
              "train_seconds_this_leg": train_seconds, **_rounded(row),
              "command": " ".join(sys.argv)}
    print("TRAIN", json.dumps(_rounded(result)), flush=True)
    print("EVAL", json.dumps(record), flush=True)
    if _RESULTS.value:
      with open(_RESULTS.value, "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
  app.run(main)
