"""The reproduction driver: build, train the three methods and ablations with one budget, evaluate, report.

`reproduce(...)` runs one category end to end: "KeypointNet" (the paper's losses only, label-free),
"KeypointNet + axis-anchor warm-up" (the anchored preset's addition, not label-free) and the supervised baseline, all
with the same steps, pairs and network. `write_report(...)` turns every category's stored results into
`REPRODUCTION.md`: the paper's Table 1 and our rows as separate tables, the ablations, pictures and the commands.
Every stage resumes: a run that already reached its steps is only evaluated again, and a run whose directory is
gone (another machine) but whose result is stored with the same configuration is kept as stored, so an
interrupted reproduction continues where it stopped when the same command is run again.
"""

import dataclasses
import json
import os
import time

import numpy as np
import tensorflow as tf

from keypointnet_tf import config as config_lib
from keypointnet_tf import evaluation
from keypointnet_tf import input_pipeline
from keypointnet_tf import prediction
from keypointnet_tf import runs
from keypointnet_tf import training
from keypointnet_tf import visualization

RESULTS_FILE = "results.json"


def _weights(config, **weights):
  loss = config.loss
  return dataclasses.replace(config, loss=dataclasses.replace(loss, weights=dataclasses.replace(loss.weights,
                                                                                                **weights)))


def _num_keypoints(config, n):
  return dataclasses.replace(config, model=dataclasses.replace(config.model, num_keypoints=n))


# The paper's ablations: each maps the preset's unsupervised config to a variant. (The paper's losses without the
# anchor are not an ablation here: that is the "KeypointNet" row itself.)
ABLATIONS = {
    "no_consistency": lambda c: _weights(c, consistency=0.0),
    "no_pose": lambda c: _weights(c, pose=0.0),
    "no_silhouette": lambda c: _weights(c, silhouette=0.0, variance=0.0),
    "more_noise": lambda c: dataclasses.replace(c, loss=dataclasses.replace(
        c.loss, pose_noise_stddev=2 * c.loss.pose_noise_stddev or 0.1)),
    **{f"keypoints_{n}": (lambda c, n=n: _num_keypoints(c, n)) for n in (3, 5, 8, 10, 15, 20)},
}
ABLATION_DESCRIPTIONS = {
    "no_consistency": "consistency weight 0",
    "no_pose": "pose weight 0",
    "no_silhouette": "silhouette and variance weights 0",
    "more_noise": "twice the pose-loss noise",
    **{f"keypoints_{n}": f"N = {n} keypoints" for n in (3, 5, 8, 10, 15, 20)},
}


def check_ablations(names):
  unknown = [name for name in names if name not in ABLATIONS]
  if unknown:
    raise ValueError(f"Unknown ablation(s) {unknown}; choose from {sorted(ABLATIONS)}.")


def supervised_config(config):
  """The supervised baseline with the same budget: as many keypoints as the data's ground truth.

  Returns None when the data has no ground-truth keypoints (ShapeNet without annotations, the user's meshes).
  """
  source = runs.dataset_source(config)
  first = next(iter(input_pipeline.make_dataset(source, "train", None, shuffle=False, repeat=False)))
  num_keypoints = int(first["keypoints"].shape[0])
  if not num_keypoints:
    return None
  return dataclasses.replace(_num_keypoints(config, num_keypoints), supervised=True)


def method_configs(base_config, root):
  """The methods of a reproduction with one budget, keyed by `config.method_name`.

  Args:
    base_config: TrainConfig of the preset (with or without the anchor).
    root: folder of this category's runs.
  Returns:
    dict name -> TrainConfig: "KeypointNet" (the preset with the anchor weight 0: the paper's losses only), the
    anchored variant (the preset's anchor, or weight 1 decaying to 0 at half the steps when it has none) and the
    supervised baseline (left out when the data has no ground-truth keypoints to regress); then the paper's rows b
    and c, the supervised baseline and KeypointNet with the KeypointNet run's orientation network loaded and
    frozen ("with pretrained O-Net"; that run is trained first).
  """
  label_free = _weights(base_config, anchor=0.0)
  anchored = base_config
  if not base_config.loss.weights.anchor:
    anchored = config_lib.with_anchor(base_config)
  supervised = supervised_config(config_lib.resolve(base_config))
  onet = os.path.join(root, "keypointnet")  # its orientation network, trained by the orientation loss alone
  supervised_onet = supervised and dataclasses.replace(supervised, orientation_from=onet)
  label_free_onet = dataclasses.replace(label_free, orientation_from=onet)
  configs = {}
  for config, folder in ((label_free, "keypointnet"), (anchored, "keypointnet_anchor"), (supervised, "supervised"),
                         (supervised_onet, "supervised_onet"), (label_free_onet, "keypointnet_onet")):
    if config is None:
      continue
    configs[config_lib.method_name(config)] = dataclasses.replace(config, model_dir=os.path.join(root, folder))
  return configs


def _train_and_evaluate(config, max_pairs):
  start = time.time()
  result = training.train(config)
  if result["status"] != "done":
    raise training.TrainingError(f"{config.model_dir}: training stopped ({result['status']}); run the same "
                                 "command again to resume.")
  # A run that had already finished trains nothing now: its training time is the one stored earlier.
  seconds = round(time.time() - start, 1) if "pairs_per_second" in result else None
  row, _ = evaluation.evaluate_run(config.model_dir, "test", max_pairs=max_pairs)
  row.pop("errors")
  return {"model_dir": config.model_dir, "steps": config.steps, "train_seconds": seconds,
          "date": time.strftime("%Y-%m-%d"), "machine": _machine(), "config": config_lib.to_dict(config), **row}


def _machine():
  return f"{os.cpu_count()} CPUs, GPUs: {len(tf.config.list_physical_devices('GPU'))}"


def _pictures(run_dirs, config, path, num_examples=8, display_size=128):
  """Two rows of test views per run (the same views; view 0 above view 1), keypoints in fixed colours.

  The networks see the views at the run's image size; the keypoints (NDC, resolution-free) are drawn on the
  views resized to `display_size` so that they can be told apart.
  """
  source = runs.dataset_source(config)
  dataset = input_pipeline.make_dataset(source, "test", num_examples, shuffle=False, repeat=False,
                                        deterministic=True, drop_remainder=False)
  batch = next(iter(dataset))
  views = np.concatenate([batch["image0"].numpy(), batch["image1"].numpy()])
  rows = []
  for model_dir in run_dirs:
    net, _ = runs.load_trained_model(model_dir)
    pictures, _ = prediction.predict_pictures(lambda images: net(images, training=False), views,  # pylint: disable=cell-var-from-loop
                                              config.image_size, display_size)
    rows.append(pictures)
  sheet = visualization.contact_sheet(np.concatenate(rows), columns=len(views) // 2)
  prediction.save_picture(sheet, path)


# method_configs' run folders, in order; the last two are the paper's rows b and c (frozen pretrained O-Net).
METHOD_FOLDERS = ("keypointnet", "keypointnet_anchor", "supervised", "supervised_onet", "keypointnet_onet")
DEFAULT_METHODS = METHOD_FOLDERS[:3]
# The methods that `extra_seeds` repeats: the paper's rows d (KeypointNet) and a (the supervised baseline).
SEEDED_METHODS = ("keypointnet", "supervised")
SEED_SUFFIX = ", seed "


def seed_name(name, seed):
  """The row name of another seed of method `name`: "KeypointNet, seed 1"."""
  return f"{name}{SEED_SUFFIX}{seed}"


def split_seed(name):
  """The inverse of seed_name: "KeypointNet, seed 1" -> ("KeypointNet", 1); a name without a seed -> (name, -1)."""
  base, _, seed = name.partition(SEED_SUFFIX)
  return base, int(seed) if seed.isdigit() else -1


def seeded_configs(configs, seeds):
  """Other seeds of the KeypointNet and supervised rows among `configs` (name -> TrainConfig).

  Args:
    configs: dict name -> TrainConfig, as from method_configs.
    seeds: iterable of int, none equal to the configs' own seed.
  Returns:
    dict seed_name(name, s) -> the config with seed s, in <its folder>_seed<s>.
  Raises:
    ValueError: a seed repeats or equals the configs' own seed.
  """
  seeds = list(seeds)
  own = {config.seed for config in configs.values()}
  if len(set(seeds)) != len(seeds) or own & set(seeds):
    raise ValueError(f"extra seeds must differ from each other and from the runs' own seed {sorted(own)}. "
                     f"Received: {seeds}")
  return {seed_name(name, seed): dataclasses.replace(config, seed=seed, model_dir=f"{config.model_dir}_seed{seed}")
          for seed in seeds for name, config in configs.items()
          if os.path.basename(config.model_dir) in SEEDED_METHODS}


def _budget_key(config_dict):
  """What makes two runs' budgets the same: data, steps, pairs per step, image size and width (not N)."""
  c = config_lib.to_dict(config_lib.from_dict(config_dict))
  return (c["dataset_config"], c["released_dir"], c["steps"], c["batch_size"], c["image_size"],
          c["model"]["num_filters"])


def reproduce(base_config, output_dir, runs_dir, ablations=(), max_pairs=None, log=print, command="",
              build_data=None, methods=DEFAULT_METHODS, extra_seeds=()):
  """Runs one category: KeypointNet, the supervised baseline (same steps), ablations; stores the results.

  Args:
    base_config: TrainConfig of the unsupervised run (category, steps, preset); model_dir is ignored.
    output_dir: folder of the report (results.json and pictures are written there).
    runs_dir: folder of the training runs (<runs_dir>/<category>/<method>).
    ablations: names from ABLATIONS.
    max_pairs: evaluate at most this many test pairs (None: all).
    log: callable for progress messages.
    command: str, the command line that runs this (stored with each run it trains and with the category's results,
      for the report).
    build_data: optional callable that builds the category's data when it is missing (runs.dataset_source).
    methods: which methods to train now, by run folder (METHOD_FOLDERS); the others keep their stored
      results when those have this budget. Stored results of another budget (data, steps, pairs per step, size)
      are dropped, so a category's rows always share one budget.
    extra_seeds: other seeds of the KeypointNet and supervised rows among `methods` (SEEDED_METHODS), trained
      as rows "<method>, seed <s>" in <folder>_seed<s> (no pictures of their own).
  Returns:
    dict of this category's results, merged into <output_dir>/results.json (each row as soon as it is evaluated,
    so an interrupted call keeps its finished rows: called again without their runs, it keeps their results).
  """
  check_ablations(ablations)
  unknown = set(methods) - set(METHOD_FOLDERS)
  if unknown:
    raise ValueError(f"Unknown method(s) {sorted(unknown)}; choose from {METHOD_FOLDERS}.")
  runs.dataset_source(config_lib.resolve(base_config), build=build_data)  # the data, built once if missing
  category = base_config.category
  root = os.path.join(runs_dir, category)
  configs = method_configs(base_config, root)
  if "supervised baseline" not in configs and "supervised" in methods:
    log(f"[{category}] the data has no ground-truth keypoints: no supervised baseline")
  configs = {name: config for name, config in configs.items()
             if os.path.basename(config.model_dir) in methods}
  seeded = seeded_configs(configs, extra_seeds)
  onet = os.path.join(root, "keypointnet", "checkpoints")
  if ({"supervised_onet", "keypointnet_onet"} & set(methods) and "keypointnet" not in methods
      and tf.train.latest_checkpoint(onet) is None):
    raise ValueError(f"The pretrained-O-Net rows load the orientation network of {os.path.dirname(onet)}, which has "
                     "no checkpoint: add keypointnet to the methods (it is trained first).")
  for name in ablations:
    configs[f"ablation: {name}"] = dataclasses.replace(ABLATIONS[name](base_config),
                                                       model_dir=os.path.join(root, f"ablation_{name}"))
  configs.update(seeded)
  earlier = load_results(output_dir).get(category, {}).get("runs", {})
  # Rows b and c load the KeypointNet run's orientation network: a stored KeypointNet result whose run is not on
  # this machine cannot give it, so that run is trained again.
  needs_onet_run = (bool({"supervised_onet", "keypointnet_onet"} & set(methods))
                    and tf.train.latest_checkpoint(onet) is None)
  results = {}
  for name, config in configs.items():
    stored = earlier.get(name)
    has_run = tf.train.latest_checkpoint(os.path.join(config.model_dir, "checkpoints")) is not None
    if needs_onet_run and os.path.basename(config.model_dir) == "keypointnet":
      if stored:
        log(f"[{category}] {name}: its stored result has no run on this machine, whose orientation network the "
            "pretrained-O-Net rows need: training it again")
      stored = None
    if stored and not has_run and config_lib.same_training(stored["config"], config_lib.resolve(config)):
      log(f"[{category}] {name}: kept the stored result (same configuration, trained on {stored.get('date', '?')}, "
          f"{stored.get('machine', '?')}; delete it from {output_dir}/{RESULTS_FILE} to train again)")
      results[name] = stored
      continue
    log(f"[{category}] {name}: training {config.steps} steps in {config.model_dir}")
    results[name] = {**_train_and_evaluate(config, max_pairs), "command": command}
    if results[name]["train_seconds"] is None:  # trained earlier, only evaluated now: keep how it was trained
      for key in ("train_seconds", "command"):
        results[name][key] = (stored or {}).get(key) or results[name][key]
    log(f"[{category}] {name}: mean {results[name]['mean']:.1f}, median {results[name]['median']:.1f} deg")
    # Every finished row is stored at once: an interrupted invocation (or one on a machine that is gone) keeps
    # what it finished, and rerunning the command keeps those rows instead of training them again.
    _store_entry(output_dir, category, results, base_config, command, log)
  entry = _store_entry(output_dir, category, results, base_config, command, log)
  pictures = dict(entry["pictures"])  # pictures of runs not on this machine stay as they were
  for name, config in configs.items():
    if name in seeded:
      continue
    if tf.train.latest_checkpoint(os.path.join(config.model_dir, "checkpoints")):  # ablations too (the N sweep's Fig. 9)
      pictures[name] = f"{category}_{os.path.basename(config.model_dir)}.png"
      _pictures([config.model_dir], config_lib.resolve(base_config), os.path.join(output_dir, pictures[name]))
  return _store_entry(output_dir, category, results, base_config, command, log, pictures)


def _store_entry(output_dir, category, results, base_config, command, log, pictures=None):
  """Merges `results` (row name -> result) into `category`'s entry of <output_dir>/results.json, atomically.

  Rows stored earlier and not in `results` (e.g. ablations of a previous invocation) are kept, with any notes,
  when they have base_config's budget; the others are dropped with their pictures. `pictures` (row name -> file)
  replaces the stored ones when given. Returns the new entry.
  """
  os.makedirs(output_dir, exist_ok=True)
  stored = load_results(output_dir)
  earlier_entry = stored.get(category, {})
  pictures = dict(earlier_entry.get("pictures", {}) if pictures is None else pictures)
  budget = _budget_key(config_lib.to_dict(config_lib.resolve(base_config)))
  kept, other_budget = {}, False
  for name, run in earlier_entry.get("runs", {}).items():
    other_budget |= _budget_key(run["config"]) != budget
    if name in results:
      continue
    if _budget_key(run["config"]) == budget:
      kept[name] = run
    else:
      log(f"[{category}] {name}: dropped the stored result of another budget ({_budget(run)})")
      pictures.pop(name, None)
  # Notes and the older combined picture describe the stored runs; they go when a run of another budget went.
  extras = () if other_budget else ("picture", "picture_rows", "notes")
  stored[category] = {**{k: v for k, v in earlier_entry.items() if k in extras},
                      "runs": {**kept, **results}, "pictures": pictures, "command": command,
                      "date": time.strftime("%Y-%m-%d"), "machine": _machine()}
  path = os.path.join(output_dir, RESULTS_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump(stored, f, indent=1)
  os.replace(path + ".tmp", path)
  return stored[category]


def load_results(output_dir):
  path = os.path.join(output_dir, RESULTS_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _budget(run):
  """One line for the report: the data, steps, pairs, size, width, N, training minutes and any anchor."""
  c = run["config"]
  data = (f"`{c['dataset_config']}`, " if c["dataset_config"] else
          f"released data in `{c['released_dir']}`, " if c["released_dir"] else "")
  text = (f"{data}{c['steps']:,} steps x {c['batch_size']} pairs ({c['steps'] * c['batch_size'] / 1000:.0f}k pairs), "
          f"{c['image_size']} px, {c['model']['num_filters']} filters, N = {c['model']['num_keypoints']}"
          + (f", {run['train_seconds'] / 60:.0f} min of training" if run.get("train_seconds") is not None else ""))
  anchor = c["loss"]["weights"].get("anchor", 0.0)
  if anchor and not c["supervised"]:
    text += (f"; axis-anchor warm-up (not in the paper: keypoints 0 and 1 pulled to the projected +-x axis ends, "
             f"weight {anchor:g} decaying to 0 at step {c['anchor_steps']:,})")
  return text


def _method_order(name):
  """Sort key: the methods in Table 1's order of interest, each method's other seeds right after it."""
  order = ["KeypointNet", config_lib.ANCHOR_METHOD, "supervised baseline", "supervised baseline with pretrained O-Net",
           "KeypointNet with pretrained O-Net"]
  base, seed = split_seed(name)
  method = config_lib.method_base(base)
  return (order.index(method) if method in order else len(order), base, seed)


def keypointnet_row(category_runs):
  """The category's KeypointNet run (Table 1's row d, "KeypointNet" or a named variant of it), or None.

  Args:
    category_runs: dict method name -> run, as stored in results.json.
  Returns:
    the run's dict, or None.
  """
  return next((run for name, run in category_runs.items() if config_lib.method_base(name) == "KeypointNet"), None)


def write_report(output_dir, path, command):
  """Writes the Markdown report from <output_dir>/results.json.

  Args:
    output_dir: folder holding results.json and the pictures.
    path: the report file (e.g. REPRODUCTION.md); pictures are linked relative to it.
    command: str, the command line of this invocation; each category also shows the one it was run with.
  """
  stored = load_results(output_dir)
  if not stored:
    raise FileNotFoundError(f"No {RESULTS_FILE} in {output_dir}: run the reproduction first.")
  relative = os.path.relpath(output_dir, os.path.dirname(os.path.abspath(path)) or ".")
  methods = sorted({m for entry in stored.values() for m in entry["runs"] if not m.startswith("ablation")},
                   key=_method_order)
  main_rows = [(f"{method} (procedural)",
                {c: stored[c]["runs"][method] for c in stored if method in stored[c]["runs"]}) for method in methods]
  lines = [
      "# Reproduction report",
      "",
      "Our rows are measured on the **procedural** meshes of `shapenet_pairs` (not ShapeNet), at the budget listed "
      "for each row under [Budgets and notes](#budgets-and-notes), far smaller than the paper's 200,000 steps x 256 "
      "pairs. Protocol (docs/evaluation.md): test split, predicted orientation flag, no noise; angular error of the "
      "relative rotation in degrees, 3D-SE in object units, the dual alignment score (DAS) and the share of "
      "keypoints within 0.25 object units of a ground-truth part. **KeypointNet** is the paper's six losses only "
      "(label-free); **KeypointNet + axis-anchor warm-up** adds a warm-up that pulls keypoints 0 and 1 to the "
      "projected +-x axis ends (not label-free); the **supervised baseline** regresses the ground-truth keypoints. "
      "A name followed by \"(variant: ...)\" lists what its run changes in the paper's losses or schedule "
      "(docs/deviations.md)."
      + (" A row \"<method>, seed N\" is the same method and budget trained from another seed."
         if any(SEED_SUFFIX in method for method in methods) else ""),
      "",
      "## Ours (procedural data)",
      "",
      evaluation.markdown_table(main_rows, include_paper=False, rounded=True),
  ]
  notes = ["## Budgets and notes", ""]
  for category, entry in stored.items():
    for method in sorted(entry["runs"], key=_method_order):
      run = entry["runs"][method]
      notes.append(f"- {category}, {method}: {_budget(run)} ({run.get('machine', entry['machine'])}, "
                   f"{run.get('date', entry['date'])}); {run['pairs']} test pairs")
  for category, entry in stored.items():
    for note in entry.get("notes", []):
      notes.append(f"- {category}: {note}")
  notes.append("")
  lines += ["", "## The paper (Table 1: ShapeNet, 128 px, 64 filters, 200,000 steps x 256 pairs = 51M pairs)", "",
            evaluation.paper_table()]
  ablation_rows, sweep_rows = [], []
  for category, entry in stored.items():
    for method, run in entry["runs"].items():
      if method.startswith("ablation: keypoints_"):
        sweep_rows.append((category, run["config"]["model"]["num_keypoints"], "ablation", run))
      elif method.startswith("ablation"):
        ablation_rows.append((category, method, run))
  if ablation_rows:
    lines += ["## Ablations (of the preset's unsupervised configuration)", "",
              "Each category's KeypointNet row (the configuration every ablation changes one thing of) comes first.",
              "", "| category | variant | change | mean | median | 3D-SE | < 30 deg | DAS | keypoints near a part |",
              "|---|---|---|---|---|---|---|---|---|"]
    reference = {category: keypointnet_row(stored[category]["runs"]) for category, _, _ in ablation_rows}
    rows = [(category, "none", "the KeypointNet row above", run) for category, run in reference.items() if run]
    for category, method, run in ablation_rows:
      name = method.split(": ", 1)[1]
      base = config_lib.method_name(config_lib.from_dict(run["config"]))
      rows.append((category, name, f"{ABLATION_DESCRIPTIONS.get(name, name)} on {base}", run))
    for category, name, change, run in sorted(rows, key=lambda row: row[0]):  # stable: the reference first
      lines.append(f"| {category} | {name} | {change} | {run['mean']:.1f} | {run['median']:.1f} | "
                   f"{run['3d_se']:.2f} | {run['under_30']:.0%} | {run.get('das', float('nan')):.2f} | "
                   f"{run.get('near_part', float('nan')):.0%} |")
    lines.append("")
  if sweep_rows:
    lines += ["## Number of keypoints (the paper's Fig. 9 sweep, of the KeypointNet row)", "",
              "The KeypointNet row itself is the sweep's N = 10; each other N changes only the number of keypoints "
              "(variant: `--ablations=keypoints_N`). Pictures below.", "",
              "| category | N | run | mean | median | 3D-SE | < 30 deg | DAS | keypoints near a part |",
              "|---|---|---|---|---|---|---|---|---|"]
    for category in dict.fromkeys(category for category, _, _, _ in sweep_rows):
      reference = keypointnet_row(stored[category]["runs"])
      if reference:
        sweep_rows.append((category, reference["config"]["model"]["num_keypoints"], "KeypointNet row", reference))
    for category, n, source, run in sorted(sweep_rows, key=lambda row: (row[0], row[1], row[2] != "KeypointNet row")):
      lines.append(f"| {category} | {n} | {source} | {run['mean']:.1f} | {run['median']:.1f} | {run['3d_se']:.2f} | "
                   f"{run['under_30']:.0%} | {run.get('das', float('nan')):.2f} | "
                   f"{run.get('near_part', float('nan')):.0%} |")
    lines.append("")
  deformation = os.path.join(output_dir, "deformation", "README.md")
  if os.path.exists(deformation):  # written by hand from tools/evaluate.py's outputs; shown here whole
    with open(deformation) as f:
      text = f.read()
    body = text.split("\n", 1)[1] if text.startswith("# ") else text
    lines += ["## Deformation test (the paper's Fig. 8, with numbers)", "",
              f"From [{relative}/deformation/README.md]({relative}/deformation/README.md):", "", body.strip(), ""]
  lines += notes
  lines += ["## Pictures", "",
            "Eight test pairs per picture (view 0 above view 1), one colour per keypoint index.", ""]
  for category, entry in stored.items():
    drawn = set(entry.get("pictures", {}))
    for method in sorted(entry.get("pictures", {}), key=_method_order):
      lines += [f"{category}, {method}:", "", f"![{category}, {method}]({relative}/{entry['pictures'][method]})", ""]
    rows = entry.get("picture_rows", [])
    if entry.get("picture") and not set(rows) <= drawn:  # an earlier picture with several methods, top to bottom
      caption = f"{category}, top to bottom: " + ", ".join(rows)
      lines += [f"{caption}:", "", f"![{caption}]({relative}/{entry['picture']})", ""]
  lines += ["## Commands", "", "Every command behind a stored run (each run keeps the command that trained it):", "",
            "```bash",
            *dict.fromkeys(run.get("command") or entry.get("command") or command
                           for entry in stored.values() for run in entry["runs"].values()),
            "```", ""]
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path
