"""shapenet_pairs: rendered view pairs of ShapeNet-style objects for KeypointNet.

Each example is two RGBA renders of one object from two random cameras, with the cameras' model-view matrices
in the layout of the paper's released TFRecords (see keypointnet_tf.geometry). Sources:
- a local ShapeNetCore copy (v2 or v1 layout) in the manual directory, when one is given;
- the user's own meshes: any folder tree of .obj, .glb/.gltf, .ply, .stl or .off files (config field
  `mesh_dir`, given in a JSON --config); or
- by default, this project's procedural collection (datasets/shapenet_pairs/procedural.py), which also
  provides exact ground-truth semantic keypoints.

Build (see docs/dataset.md):
  tfds build datasets/shapenet_pairs --config=planes
  tfds build datasets/shapenet_pairs --config='{"name": "mugs", "mesh_dir": "/data/mugs", "image_size": 64}'
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import time

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from keypointnet_datasets.shapenet_pairs import cameras
from keypointnet_datasets.shapenet_pairs import procedural
from keypointnet_tf import geometry

SYNSETS = {"cars": "02958343", "planes": "02691156", "chairs": "03001627"}
SPLITS = ("train", "validation", "test")
# ShapeNet models without a split list: a stable hash of the model id decides (85% / 5% / 10%).
_HASH_SPLIT_PERCENT = {"test": 10, "validation": 5}


@dataclasses.dataclass
class ShapenetPairsConfig(tfds.core.BuilderConfig):
  """Fields that change the bytes on disk.

  Attributes:
    category: "cars", "planes" or "chairs".
    image_size: int. Render side in pixels (128 in the paper).
    pairs_per_model: int. View pairs rendered per object (the released data: 100).
    num_models: (train, validation, test) procedural objects per split; ignored for ShapeNet sources.
    fov_degrees: float. Camera field of view (5: focal length cot(2.5 deg) = 22.90).
    camera_distance: float. Camera distance from the object centre (30).
    shift: float. Uniform camera position jitter per axis (0.2).
    roll: bool. Random roll in [-90, 90] degrees about the viewing axis (off by default).
    extra_train_models: int. Procedural objects added to the training split after every split's range, so the
      validation and test splits (objects and views) stay those of the config with 0 (`procedural_indices`).
    mesh_dir: str. A folder tree of the user's meshes (meshes.MESH_EXTENSIONS) to render instead of the
      procedural collection; `category` is then only a label. Each file is one object, its id the path relative
      to mesh_dir. Splits: <mesh_dir>/splits/{train,validation,test}.txt (one relative path per line) where
      present, else a stable hash of the relative path (85% / 5% / 10%). No ground-truth keypoints.
    front_axis: str. mesh_dir: the files' axis that points to the object's front ("+x", "-z", ...); it becomes
      +X, whose ends are the orientation network's targets.
    up_axis: str. mesh_dir: the files' up axis; it becomes +Y (cameras are drawn on the upper hemisphere).
    scale: float. mesh_dir: the longest side of every object after normalisation is 2 * scale.
    lighting: "directional" (a directional light from above plus ambient, flat faces; the default so far) or
      "hemisphere" (the paper's: one hemisphere lamp from above, diffuse only, smooth shading); see rendering.
    generator: int. The procedural collection's version (procedural.GENERATORS): 1, the first one (cars whose
      front and back look alike, one plane layout, four-legged chairs); 2, objects with the cues real ones have
      (procedural._car2, _plane2, _chair2). The same model ids and cameras in both.
    appearance: "plain" (the default: the objects' own colours, the lighting above, a black background) or
      "random" (for use on photographs: random object colours, a random directional light per view and a random
      background per view in RGB, alpha still the mask; appearance.py). Drawn from a hash of the model id, so
      two "random" data sets over the same models and cameras hold the same pictures. Directional lighting only.
    deformation: "none", or a non-rigid deformation of the procedural objects and their keypoints
      (procedural.DEFORMATIONS: "bend", "stretch", "taper"; the paper's Fig. 8 test): evaluate a model trained on
      undeformed objects on the same objects and cameras deformed.
    deformation_amount: float. Its strength (procedural.deform).
    annotations: str. ShapeNetCore sources: the KeypointNet dataset's annotation JSON (annotations/<airplane|car|
      chair>.json or all.json; absolute, or relative to the manual dir); by default
      <manual_dir>/annotations/<name>.json or all.json when present. Each model's human keypoints go through the
      mesh's own transform and are stored by semantic id with keypoint_valid (False where a model lacks a part),
      so the evaluator's DAS scores predictions against them.
  """
  category: str = "planes"
  image_size: int = 128
  pairs_per_model: int = 10
  num_models: tuple = (1000, 50, 100)
  fov_degrees: float = geometry.PAPER_FOV_DEGREES
  camera_distance: float = geometry.PAPER_CAMERA_DISTANCE
  shift: float = 0.2
  roll: bool = False
  extra_train_models: int = 0
  mesh_dir: str = ""
  front_axis: str = "+x"
  up_axis: str = "+y"
  scale: float = 1.0
  lighting: str = "directional"
  generator: int = 1
  appearance: str = "plain"
  deformation: str = "none"
  deformation_amount: float = 0.3
  annotations: str = ""


def procedural_indices(num_models, extra_train_models=0):
  """Procedural object indices per split: consecutive disjoint ranges in SPLITS order, then the extra training
  objects after all of them.

  Args:
    num_models: (train, validation, test) counts.
    extra_train_models: int >= 0.
  Returns:
    {split: list of int}.
  """
  if extra_train_models < 0 or any(count < 0 for count in num_models):
    raise ValueError(f"Model counts must be >= 0. Received: num_models={num_models}, "
                     f"extra_train_models={extra_train_models}")
  indices, start = {}, 0
  for split, count in zip(SPLITS, num_models):
    indices[split] = list(range(start, start + count))
    start += count  # disjoint index ranges: splits never share an object
  indices[SPLITS[0]] += list(range(start, start + extra_train_models))
  return indices


def _configs():
  configs = []
  for category in ("cars", "planes", "chairs"):
    configs.append(ShapenetPairsConfig(
        name=category, category=category,
        description=f"{category} ({SYNSETS[category]}): 128 px, 10 pairs per model; procedural default "
                    "1000 / 50 / 100 models."))
    configs.append(ShapenetPairsConfig(
        name=f"{category}_small", category=category, image_size=64, pairs_per_model=8, num_models=(200, 20, 40),
        description=f"{category} at 64 px, 8 pairs per model; procedural default 200 / 20 / 40 models "
                    "(for quick experiments and CPU smoke runs)."))
    configs.append(ShapenetPairsConfig(
        name=f"{category}_small_x10", category=category, image_size=64, pairs_per_model=8,
        num_models=(200, 20, 40), extra_train_models=1800,
        description=f"{category}_small with 10x the training objects (2,000); its validation and test splits "
                    f"are {category}_small's, object for object and view for view."))
  # Cars from procedural generator 2 (front and back look different, as real cars do): the cars presets train on
  # these. The plain cars configs stay generator 1's, the data of the earlier results.
  for base in [c for c in configs if c.category == "cars"]:
    configs.append(dataclasses.replace(
        base, name=f"{base.name}_gen2", generator=2,
        description=f"{base.name} from procedural generator 2 (front and back look different): {base.description}"))
  return configs


def generator_of(dataset_config):
  """The procedural generator (1 or 2) of the built-in config named `dataset_config`; 1 for other names (the
  user's data sets, whose meshes come from files).

  Args:
    dataset_config: str, e.g. "cars_small_x10_gen2".
  Returns:
    int.
  """
  return {config.name: config.generator for config in Builder.BUILDER_CONFIGS}.get(dataset_config, 1)


def _stable_hash(text):
  return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def _hash_split(model_id):
  bucket = _stable_hash(model_id) % 100
  return ("test" if bucket < _HASH_SPLIT_PERCENT["test"] else
          "validation" if bucket < sum(_HASH_SPLIT_PERCENT.values()) else "train")


def _split_lists(split_dir):
  """{name: split} from <split_dir>/{train,validation,test}.txt (one name per line); {} without the folder."""
  assigned = {}
  if split_dir.is_dir():
    for split in SPLITS:
      listing = split_dir / f"{split}.txt"
      if listing.exists():
        assigned.update({line.strip(): split for line in listing.read_text().splitlines() if line.strip()})
  return assigned


def find_user_meshes(mesh_dir):
  """{split: [relative path]} of every mesh file under mesh_dir (sorted), split by list or by hash.

  Args:
    mesh_dir: pathlib.Path.
  Raises:
    FileNotFoundError: mesh_dir is missing or holds no mesh file (the message names the accepted formats).
  """
  from keypointnet_datasets.shapenet_pairs import meshes  # pylint: disable=g-import-not-at-top
  if not mesh_dir.is_dir():
    raise FileNotFoundError(f"mesh_dir {mesh_dir} is not a folder. Point mesh_dir at a folder tree of meshes "
                            f"({', '.join(meshes.MESH_EXTENSIONS)}).")
  found = sorted(os.path.relpath(os.path.join(root, name), os.fspath(mesh_dir)).replace(os.sep, "/")
                 for root, _, names in os.walk(os.fspath(mesh_dir)) for name in names
                 if name.lower().endswith(meshes.MESH_EXTENSIONS))
  if not found:
    raise FileNotFoundError(f"No mesh files in {mesh_dir} or below it "
                            f"(looked for {', '.join(meshes.MESH_EXTENSIONS)}).")
  assigned = _split_lists(mesh_dir / "splits")
  unknown = sorted(set(assigned) - set(found))
  if unknown:
    raise FileNotFoundError(f"{mesh_dir}/splits lists {len(unknown)} file(s) that are not mesh files under "
                            f"{mesh_dir}, e.g. {unknown[:3]}; list paths relative to mesh_dir, with extension.")
  by_split = {split: [] for split in SPLITS}
  for path in found:
    by_split[assigned.get(path) or _hash_split(path)].append(path)
  return by_split


def _find_shapenet_models(manual_dir, synset_id):
  """Returns ({split: [(model_id, obj_path, version)]}, root) from a manual directory, or ({}, None)."""
  for root in (manual_dir, manual_dir / "ShapeNetCore.v2", manual_dir / "ShapeNetCore.v1"):
    synset_dir = root / synset_id
    if not synset_dir.is_dir():
      continue
    models = []
    for model_dir in sorted(synset_dir.iterdir()):
      if (model_dir / "models" / "model_normalized.obj").exists():
        models.append((model_dir.name, model_dir / "models" / "model_normalized.obj", 2))
      elif (model_dir / "model.obj").exists():
        models.append((model_dir.name, model_dir / "model.obj", 1))
    assigned = _split_lists(manual_dir / "splits" / synset_id)
    by_split = {split: [] for split in SPLITS}
    for model_id, path, version in models:
      by_split[assigned.get(model_id) or _hash_split(model_id)].append((model_id, path, version))
    return by_split, root
  return {}, None


def _check_config(config):
  """Raises ValueError for field values no source can build (before anything is rendered or written)."""
  if config.lighting not in ("directional", "hemisphere"):
    raise ValueError(f"shapenet_pairs/{config.name}: lighting must be directional or hemisphere. Received: "
                     f"{config.lighting!r}")
  if config.appearance not in ("plain", "random"):
    raise ValueError(f"shapenet_pairs/{config.name}: appearance must be plain or random. Received: "
                     f"{config.appearance!r}")
  if config.appearance == "random" and config.lighting != "directional":
    raise ValueError(f"shapenet_pairs/{config.name}: appearance=random draws a directional light per view; "
                     f"set lighting to directional (it is {config.lighting!r}).")
  if config.deformation != "none" and (config.deformation not in procedural.DEFORMATIONS or config.mesh_dir):
    raise ValueError(f"shapenet_pairs/{config.name}: deformation must be none or one of "
                     f"{procedural.DEFORMATIONS}, for the procedural collection. Received: {config.deformation!r}"
                     + (" with mesh_dir" if config.mesh_dir else ""))
  if config.generator not in procedural.GENERATORS:
    raise ValueError(f"shapenet_pairs/{config.name}: generator must be one of {procedural.GENERATORS}. "
                     f"Received: {config.generator!r}")


# The KeypointNet dataset's (You et al., CVPR 2020) annotation file names per category.
ANNOTATION_NAMES = {"cars": "car", "planes": "airplane", "chairs": "chair"}


def _annotation_file(config, manual_dir):
  """The annotation JSON to use: config.annotations (absolute, or relative to the manual dir), else
  <manual_dir>/annotations/<airplane|car|chair>.json or all.json when present, else None."""
  if config.annotations:
    path = pathlib.Path(os.path.expanduser(config.annotations))
    path = path if path.is_absolute() else manual_dir / path
    if not path.is_file():
      raise FileNotFoundError(f"shapenet_pairs/{config.name}: annotations={config.annotations}: no such file "
                              f"({path}). Give the KeypointNet dataset's annotations/<category>.json or all.json.")
    return path
  for name in (ANNOTATION_NAMES[config.category], "all"):
    if (manual_dir / "annotations" / f"{name}.json").is_file():
      return manual_dir / "annotations" / f"{name}.json"
  return None


def load_annotations(path, synset_id):
  """Human keypoints per model from a KeypointNet-dataset annotation file (docs/dataset.md, "Human keypoints on ShapeNet").

  Args:
    path: pathlib.Path of the JSON list of {"class_id", "model_id", "keypoints": [{"xyz", "semantic_id"}, ...]}
      records (other classes' records are ignored), or None.
    synset_id: the category's ShapeNet synset.
  Returns:
    {model_id: {"keypoints": [K, 3] float64 xyz in model_normalized.obj's frame, indexed by semantic id,
    "keypoint_valid": [K] bool}}, K = the largest semantic id of the category + 1, plus under key None the entry
    of a model without annotations (all invalid); {} without a file.
  Raises:
    ValueError: the file is not such a list (the message names the file and the record).
  """
  if path is None:
    return {}
  try:
    records = json.loads(pathlib.Path(path).read_text())
    if not isinstance(records, list):
      raise TypeError("the top level is not a list")
    ours = [r for r in records if str(r["class_id"]) == synset_id]
    points = {r["model_id"]: [(int(k["semantic_id"]), [float(v) for v in k["xyz"]]) for k in r["keypoints"]]
              for r in ours}
  except (ValueError, TypeError, KeyError) as e:
    raise ValueError(f"{path}: not a KeypointNet annotation file (a JSON list of records with class_id, "
                     f"model_id and keypoints of xyz and semantic_id): {type(e).__name__}: {e}") from e
  ids = [semantic for keypoints in points.values() for semantic, _ in keypoints]
  if not ids:
    raise ValueError(f"{path}: no annotated keypoints for synset {synset_id}.")
  if min(ids) < 0 or any(len(xyz) != 3 for keypoints in points.values() for _, xyz in keypoints):
    raise ValueError(f"{path}: semantic ids must be >= 0 and xyz must have 3 numbers.")
  count = max(ids) + 1
  out = {None: {"keypoints": np.zeros([count, 3]), "keypoint_valid": np.zeros(count, np.bool_)}}
  for model_id, keypoints in points.items():
    xyz, valid = np.zeros([count, 3]), np.zeros(count, np.bool_)
    for semantic, point in keypoints:
      xyz[semantic], valid[semantic] = point, True
    out[model_id] = {"keypoints": xyz, "keypoint_valid": valid}
  return out


class Builder(tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for shapenet_pairs."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: procedural and ShapeNetCore sources."}
  BUILDER_CONFIGS = _configs()
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Optional. Without a manual directory the procedural collection is rendered.
  To render real ShapeNetCore models, register at https://shapenet.org, download ShapeNetCore.v2 (or v1) and
  extract the category folders so that one of these exists (synsets: cars 02958343, planes 02691156,
  chairs 03001627):
    <manual_dir>/<synset_id>/<model_id>/models/model_normalized.obj      (ShapeNetCore.v2)
    <manual_dir>/ShapeNetCore.v2/<synset_id>/<model_id>/models/model_normalized.obj
    <manual_dir>/<synset_id>/<model_id>/model.obj                        (ShapeNetCore.v1)
  Optional split lists (one model id per line): <manual_dir>/splits/<synset_id>/{train,validation,test}.txt;
  models not listed are assigned by a stable hash of their id (85% / 5% / 10%).
  Optional human keypoints (the KeypointNet dataset, github.com/qq456cvb/KeypointNet, on ShapeNetCore.v2):
    <manual_dir>/annotations/{airplane,car,chair}.json or <manual_dir>/annotations/all.json
  Then: tfds build datasets/shapenet_pairs --config=cars --manual_dir=<manual_dir>
  """

  def _info(self):
    size = self.builder_config.image_size
    matrix = tfds.features.Tensor(shape=(4, 4), dtype=np.float32)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "img0": tfds.features.Image(shape=(size, size, 4)),
            "img1": tfds.features.Image(shape=(size, size, 4)),
            "mv0": matrix,
            "mvi0": matrix,
            "mv1": matrix,
            "mvi1": matrix,
            "focal": tfds.features.Scalar(dtype=np.float32),
            "model_id": tfds.features.Text(),
            "keypoints": tfds.features.Tensor(shape=(None, 3), dtype=np.float32),
            "keypoint_valid": tfds.features.Tensor(shape=(None,), dtype=np.bool_),
        }),
        supervised_keys=None,
        homepage="https://keypoints.github.io/",
    )

  def _split_generators(self, dl_manager):
    config = self.builder_config
    _check_config(config)
    try:
      manual_dir = dl_manager.manual_dir
    except (AssertionError, ValueError):
      manual_dir = None
    if config.mesh_dir:
      sources = self._user_mesh_sources(manual_dir)
    elif manual_dir is not None:
      synset_id = SYNSETS[config.category]
      by_split, root = _find_shapenet_models(manual_dir, synset_id)
      if root is None:
        raise FileNotFoundError(
            f"No ShapeNetCore folder for {config.category} (synset {synset_id}) in the manual directory "
            f"{manual_dir}. Expected one of:\n  {manual_dir}/{synset_id}/<model_id>/models/model_normalized.obj\n"
            f"  {manual_dir}/ShapeNetCore.v2/{synset_id}/<model_id>/models/model_normalized.obj\n"
            f"  {manual_dir}/{synset_id}/<model_id>/model.obj\n"
            "Leave out --manual_dir to build the procedural collection instead.")
      scale = procedural.CATEGORY_SCALE[config.category]
      annotated = load_annotations(_annotation_file(config, manual_dir), synset_id)
      sources = {split: [(model_id, {"kind": "shapenet", "path": os.fspath(path), "version": version,
                                     "scale": scale, **annotated.get(model_id, annotated.get(None, {}))})
                         for model_id, path, version in models]
                 for split, models in by_split.items()}
      if annotated:
        logging.info("shapenet_pairs: %d models carry human keypoints (%d semantic ids)",
                     len([m for models in by_split.values() for m, _, _ in models if m in annotated]),
                     len(annotated[None]["keypoint_valid"]))
      logging.info("shapenet_pairs: ShapeNetCore source at %s: %s", root,
                   {split: len(models) for split, models in sources.items()})
    else:
      sources = {split: [(f"procedural-{config.category}-{index:06d}",
                          {"kind": "procedural", "category": config.category, "index": index,
                           "generator": config.generator, "deformation": config.deformation,
                           "amount": config.deformation_amount})
                         for index in indices]
                 for split, indices in procedural_indices(config.num_models, config.extra_train_models).items()}
    empty = [split for split, models in sources.items() if not models]
    if len(empty) == len(sources):
      raise ValueError(f"shapenet_pairs/{config.name}: no models to render in any split.")
    if empty:
      logging.warning("shapenet_pairs/%s: no models for split(s) %s; they are left out.", config.name, empty)
    return {split: self._generate_examples(models) for split, models in sources.items() if models}

  def _user_mesh_sources(self, manual_dir):
    """{split: [(model_id, mesh spec)]} of the files under config.mesh_dir."""
    from keypointnet_datasets.shapenet_pairs import meshes  # pylint: disable=g-import-not-at-top
    config = self.builder_config
    if manual_dir is not None:
      raise ValueError(f"shapenet_pairs/{config.name}: give either mesh_dir ({config.mesh_dir}) or --manual_dir "
                       "(ShapeNetCore), not both.")
    meshes.axes_to_object_frame(config.front_axis, config.up_axis)  # a bad pair fails here, before rendering
    if not config.scale > 0:
      raise ValueError(f"shapenet_pairs/{config.name}: scale must be > 0. Received: {config.scale}")
    root = os.path.abspath(os.path.expanduser(config.mesh_dir))
    by_split = find_user_meshes(pathlib.Path(root))
    logging.info("shapenet_pairs: meshes from %s: %s", root, {split: len(paths) for split, paths in by_split.items()})
    return {split: [(path, {"kind": "file", "path": os.path.join(root, path), "front": config.front_axis,
                            "up": config.up_axis, "scale": config.scale}) for path in paths]
            for split, paths in by_split.items()}

  def _download_and_prepare(self, dl_manager, download_config=None):  # pylint: disable=arguments-renamed
    # Beam options or a runner (tfds build --beam_pipeline_options=...) switch generation to an Apache Beam
    # pipeline (_beam_examples); without them the examples come from local rendering workers.
    self._use_beam = bool(download_config and (download_config.beam_runner or download_config.beam_options))
    super()._download_and_prepare(dl_manager, download_config)

  def _generate_examples(self, models):
    """(key, example) for every pair of every model, from local workers or as a Beam PTransform."""
    if getattr(self, "_use_beam", False):
      return _beam_examples(self.builder_config, models)
    return self._local_examples(models)

  def _local_examples(self, models):
    """Yields (key, example) rendered by local worker processes; failed models are skipped and reported."""
    # Imported here: rendering starts worker processes and is only needed when generating.
    from keypointnet_datasets.shapenet_pairs import rendering  # pylint: disable=g-import-not-at-top
    config = self.builder_config
    model_views = {model_id: _model_views(config, model_id) for model_id, _ in models}
    jobs = (_render_job(config, model_id, spec, model_views[model_id]) for model_id, spec in models)
    failures = []
    start = time.time()
    for (model_id, _), result in zip(models, rendering.render_jobs(jobs, config.image_size, config.fov_degrees)):
      if result["error"] is not None:
        failures.append((model_id, result["error"]))
        logging.warning("shapenet_pairs: skipping %s: %s", model_id, result["error"])
        continue
      yield from _pair_examples(config, model_id, model_views[model_id], result)
    if models and len(failures) == len(models):
      raise ValueError(f"shapenet_pairs/{config.name}: none of the {len(models)} models of a split could be loaded "
                       "or rendered (nothing was written), e.g. " + "; ".join(
                           f"{model_id} ({error})" for model_id, error in failures[:5]))
    message = (f"shapenet_pairs/{config.name}: rendered {len(models) - len(failures)} of {len(models)} models "
               f"({(len(models) - len(failures)) * config.pairs_per_model} pairs) in {time.time() - start:.0f} s")
    if failures:
      message += f"; skipped {len(failures)} that failed to load or render: " + "; ".join(
          f"{model_id} ({error})" for model_id, error in failures[:20])
      logging.warning(message)
      print(message, flush=True)
    else:
      logging.info(message)


def _model_views(config, model_id):
  """[pairs_per_model, 2, 4, 4] cameras of a model, drawn from a seed that is a hash of its id (any process)."""
  return cameras.sample_pairs(np.random.default_rng(_stable_hash(model_id)), config.pairs_per_model,
                              config.camera_distance, config.shift, config.roll)


def _render_job(config, model_id, spec, model_views):
  """The rendering job (rendering.py) of one model: its mesh spec, [pairs_per_model, 2, 4, 4] cameras and look."""
  job = {"mesh": spec, "model_views": model_views.reshape(-1, 4, 4), "lighting": config.lighting}
  if config.appearance == "random":
    job["appearance_seed"] = _stable_hash(f"appearance/{model_id}")
  return job


def _pair_examples(config, model_id, model_views, result):
  """(key, example) of every pair of one rendered model (result: rendering's job result)."""
  focal = np.float32(geometry.focal_from_fov(config.fov_degrees))
  images = result["images"].reshape(config.pairs_per_model, 2, config.image_size, config.image_size, 4)
  keypoints = result["keypoints"].astype(np.float32)
  valid = np.asarray(result.get("keypoint_valid", np.ones(len(keypoints))), np.bool_)
  for pair, (mv_pair, image_pair) in enumerate(zip(model_views, images)):
    mv0, mv1 = mv_pair.astype(np.float32)
    yield f"{model_id}/{pair:04d}", {
        "img0": image_pair[0], "img1": image_pair[1],
        "mv0": mv0, "mvi0": np.linalg.inv(mv_pair[0]).astype(np.float32),
        "mv1": mv1, "mvi1": np.linalg.inv(mv_pair[1]).astype(np.float32),
        "focal": focal, "model_id": model_id,
        "keypoints": keypoints, "keypoint_valid": valid,
    }


class _RenderModel:
  """Beam FlatMap function: (model_id, mesh spec) -> its (key, example) pairs.

  Each Beam worker process starts one rendering worker process (rendering.RenderWorker) on its first model, so
  the rendering never shares a process with TensorFlow, whatever runner runs the pipeline. A model that fails is
  logged, counted in the Beam counter shapenet_pairs/models_skipped, and left out.
  """

  def __init__(self, config):
    self.config = config
    self._worker = None

  def __getstate__(self):
    return {"config": self.config, "_worker": None}

  def __call__(self, item):
    import apache_beam as beam  # pylint: disable=g-import-not-at-top
    from keypointnet_datasets.shapenet_pairs import rendering  # pylint: disable=g-import-not-at-top
    model_id, spec = item
    if self._worker is None:
      self._worker = rendering.RenderWorker(self.config.image_size, self.config.fov_degrees)
    views = _model_views(self.config, model_id)
    result = self._worker.render(_render_job(self.config, model_id, spec, views))
    if result["error"] is not None:
      logging.warning("shapenet_pairs: skipping %s: %s", model_id, result["error"])
      beam.metrics.Metrics.counter("shapenet_pairs", "models_skipped").inc()
      return
    beam.metrics.Metrics.counter("shapenet_pairs", "models_rendered").inc()
    yield from _pair_examples(self.config, model_id, views, result)


def _beam_examples(config, models):
  """The examples of `models` as an Apache Beam PTransform (models spread over the runner's workers)."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  return beam.Create(list(models)) | beam.Reshuffle() | beam.FlatMap(_RenderModel(config))
