"""Prepared data -> decoded, batched `tf.data.Dataset` of view pairs.

Two sources give the same elements:
- a built `shapenet_pairs` TFDS dataset, by directory (`<data_dir>/shapenet_pairs/<config>/<version>`); this
  module never imports the builder (or pyrender);
- a folder of the paper's released TFRecords (the `*_with_keypoints.zip` layout: `*.tfrecord` shards,
  `dev.txt`, `test.txt`, `projection.txt`, optionally `job.txt`). As in the released code, training uses every
  shard not listed in `test.txt` or `dev.txt` (`train.txt` is ignored), validation the `dev.txt` shards.

Element (before batching; batching adds a leading B):
  image0, image1: [H, W, 4] float32 RGBA in [0, 1] (alpha > 0 is the object mask).
  mv0, mvi0, mv1, mvi1: [4, 4] float32 object-to-camera matrices and inverses (see geometry).
  focal: [] float32 NDC focal length.
  orientation_flag0, orientation_flag1: [] float32 ground-truth flags (1 where mv[0, 0] > 0).
  relative_rotation: [3, 3] float32, camera 0 -> camera 1.
  keypoints: [K, 3] float32 object-space ground-truth keypoints, keypoint_valid: [K] bool (K = 0 when the
    source has none).
  model_id: [] string.
"""

import csv
import itertools
import os
import re

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from keypointnet_tf import geometry
from keypointnet_tf import model as model_lib

SPLITS = ("train", "validation", "test")
UNKNOWN_MODEL_ID = ""  # model_id of examples whose object is not recorded (released shards without job.txt).


def find_tfds_dir(data_dir, config_name, dataset_name="shapenet_pairs"):
  """Path of the newest built version of `<data_dir>/<dataset_name>/<config_name>/`.

  Raises:
    FileNotFoundError naming the expected path and the command that builds it.
  """
  config_dir = os.path.join(os.fspath(data_dir), dataset_name, config_name)
  versions = []
  if tf.io.gfile.isdir(config_dir):
    for name in tf.io.gfile.listdir(config_dir):
      name = name.rstrip("/")
      if tf.io.gfile.exists(os.path.join(config_dir, name, "dataset_info.json")):
        versions.append(tuple(int(part) for part in name.split(".")))
  if not versions:
    raise FileNotFoundError(
        f"No built {dataset_name}/{config_name} in {data_dir} (looked for {config_dir}/<version>/"
        f"dataset_info.json). Build it with:\n  tfds build datasets/{dataset_name} --config={config_name} "
        f"--data_dir={data_dir}")
  return os.path.join(config_dir, ".".join(str(v) for v in max(versions)))


def is_released_dir(path):
  """True when `path` looks like the paper's released TFRecords (it has projection.txt and shards)."""
  path = os.fspath(path)
  return (tf.io.gfile.exists(os.path.join(path, "projection.txt")) and
          bool(tf.io.gfile.glob(os.path.join(path, "*.tfrecord"))))


# ------------------------------------------------------------------------------------------------------------
# The paper's released TFRecords.
# ------------------------------------------------------------------------------------------------------------

_RELEASED_FEATURES = {
    "img0": tf.io.FixedLenFeature([], tf.string),
    "img1": tf.io.FixedLenFeature([], tf.string),
    **{key: tf.io.FixedLenFeature([16], tf.float32) for key in ("mv0", "mvi0", "mv1", "mvi1")},
}


def read_projection(path):
  """NDC focal length from a released `projection.txt` (a 4x4 matrix, one row per line).

  The released code projects with P[0, 0] and unprojects y with P[1, 1]; this project uses one focal length for
  both axes, so the two must agree (they do for the released square 5 degree renders).

  Raises:
    ValueError: not a 4x4 matrix, or P[0, 0] and P[1, 1] differ (non-square pixels), with what was read.
  """
  with tf.io.gfile.GFile(os.path.join(os.fspath(path), "projection.txt")) as f:
    rows = [[float(x) for x in line.split()] for line in f.read().splitlines() if line.strip()]
  if len(rows) != 4 or any(len(row) != 4 for row in rows):
    raise ValueError(f"{path}/projection.txt must hold a 4x4 matrix (4 lines of 4 numbers). Received: {rows}")
  fx, fy = rows[0][0], rows[1][1]
  if abs(fx - fy) > 1e-5 * max(abs(fx), abs(fy)):
    raise ValueError(f"{path}/projection.txt has different focal lengths for x (P[0, 0] = {fx}) and y "
                     f"(P[1, 1] = {fy}); this project supports square pixels only (one focal length). Render the "
                     "data with a square field of view.")
  return fx


def first_example(source):
  """The first training example of a source, unbatched and unshuffled: its focal length and keypoint count are the
  data's (one camera and one keypoint list per data set)."""
  return next(iter(make_dataset(source, "train", None, shuffle=False, repeat=False, deterministic=True).take(1)))


def released_shards(path, split):
  """Shard paths of a split of the released data, sorted. Train = every shard not in dev.txt or test.txt."""
  path = os.fspath(path)
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}. Received: split={split!r}")

  def listed(name):
    file = os.path.join(path, name)
    if not tf.io.gfile.exists(file):
      return set()
    with tf.io.gfile.GFile(file) as f:
      return {line.strip() for line in f.read().splitlines() if line.strip()}

  names = {os.path.basename(p)[:-len(".tfrecord")]: p for p in tf.io.gfile.glob(os.path.join(path, "*.tfrecord"))}
  dev, test = listed("dev.txt"), listed("test.txt")
  chosen = {"validation": dev, "test": test, "train": set(names) - dev - test}[split]
  missing = sorted(chosen - set(names))
  if missing:
    raise FileNotFoundError(f"{path}: shards listed for {split} are missing: {missing[:5]}")
  if not chosen:
    raise ValueError(f"{path}: no shards for split {split!r} (check dev.txt / test.txt).")
  return [names[name] for name in sorted(chosen)]


def _released_model_ids(path):
  """{shard name: [(model_id, pairs)]} from the released job.txt (CSV: tfrecord,id,num,args), if present."""
  file = os.path.join(os.fspath(path), "job.txt")
  if not tf.io.gfile.exists(file):
    return {}
  table = {}
  with tf.io.gfile.GFile(file) as f:
    for row in csv.DictReader(f):
      table.setdefault(os.path.splitext(os.path.basename(row["tfrecord"]))[0], []).append(
          (row["id"], int(row["num"])))
  return table


def _released_shard_dataset(shard, jobs, focal):
  """Records of one shard with model ids: job.txt's ids by record position, else "" (unknown: a shard holds
  about 40 objects, so the shard name is no object id; evaluation then refuses 3D-SE)."""
  name = os.path.basename(shard)[:-len(".tfrecord")]
  records = tf.data.TFRecordDataset(shard)
  if name in jobs:
    ids = tf.constant([model_id for model_id, _ in jobs[name]])
    ends = tf.constant(list(itertools.accumulate(num for _, num in jobs[name])), tf.int64)
    records = records.enumerate().map(
        lambda i, r: (r, ids[tf.minimum(tf.searchsorted(ends, [i], side="right")[0], len(jobs[name]) - 1)]))
  else:
    records = records.map(lambda r: (r, tf.constant(UNKNOWN_MODEL_ID)))
  return records.map(lambda r, model_id: {"record": r, "model_id": model_id, "focal": tf.constant(focal)})


def _parse_released(element):
  parsed = tf.io.parse_single_example(element["record"], _RELEASED_FEATURES)
  example = {key: geometry.matrix_from_flat(parsed[key]) for key in ("mv0", "mvi0", "mv1", "mvi1")}
  example.update(img0=parsed["img0"], img1=parsed["img1"], model_id=element["model_id"], focal=element["focal"],
                 keypoints=tf.zeros([0, 3]), keypoint_valid=tf.zeros([0], tf.bool))
  return example


# ------------------------------------------------------------------------------------------------------------
# Common pipeline.
# ------------------------------------------------------------------------------------------------------------


def _finish_example(example, image_size):
  """Decodes PNG bytes, scales to [0, 1], optionally resizes, and adds flags and the relative rotation."""
  out = {}
  for view in ("0", "1"):
    image = tf.io.decode_png(example["img" + view], channels=4)
    out["image" + view] = (tf.image.convert_image_dtype(image, tf.float32) if image_size is None
                           else model_lib.network_input(image, image_size))
    out["mv" + view] = tf.cast(example["mv" + view], tf.float32)
    out["mvi" + view] = tf.cast(example["mvi" + view], tf.float32)
    out["orientation_flag" + view] = geometry.orientation_flag_from_mv(out["mv" + view])
  out["relative_rotation"] = geometry.relative_rotation(out["mv0"], out["mv1"])
  out["focal"] = tf.cast(example["focal"], tf.float32)
  out["keypoints"] = tf.cast(example["keypoints"], tf.float32)
  out["keypoint_valid"] = tf.cast(example["keypoint_valid"], tf.bool)
  out["model_id"] = example["model_id"]
  return out


def make_dataset(source, split, batch_size, image_size=None, shuffle=True, repeat=True, shuffle_buffer=4096,
                 seed=0, deterministic=False, drop_remainder=True, cycle_length=16, input_context=None):
  """Batched, decoded view pairs from a built TFDS dataset or a released-TFRecords folder.

  Args:
    source: path. A built TFDS dataset version directory (holding dataset_info.json; see `find_tfds_dir`) or a
      folder of the paper's released TFRecords (holding projection.txt).
    split: "train", "validation" or "test".
    batch_size: int or None. Examples per batch; None leaves the dataset unbatched.
    image_size: int or None. Resize images to image_size x image_size (area averaging); None keeps them.
    shuffle: bool. Shuffle shard order and examples. Pairs of one object sit together in released shards
      and TFDS shards are small, so examples are interleaved across `cycle_length` shards and shuffled in a
      buffer of `shuffle_buffer` still-encoded examples, which mixes many objects.
    repeat: bool. Repeat forever.
    shuffle_buffer: int. Examples in the shuffle buffer (encoded PNGs: ~10-40 KB each).
    seed: int. Seed of every shuffle.
    deterministic: bool. Same elements in the same order on every run (for tests and evaluation).
    drop_remainder: bool. Drop a final partial batch (keeps the batch dimension static for training).
    cycle_length: int. TFDS shards read in parallel (released shards are all read round-robin).
    input_context: optional tf.distribute.InputContext: read only this input pipeline's share of the data (one
      pipeline per worker in multi-worker training): an even part of the TFDS split, or every n-th released shard.
  Returns:
    tf.data.Dataset of dicts (see module docstring), prefetched.
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}. Received: split={split!r}")
  if batch_size is not None and batch_size < 1:
    raise ValueError(f"batch_size must be positive. Received: batch_size={batch_size}")
  source = os.fspath(source)
  if tf.io.gfile.exists(os.path.join(source, "dataset_info.json")):
    builder = tfds.builder_from_directory(source)
    if split not in builder.info.splits:
      raise ValueError(f"{source} has no split {split!r}; it has {sorted(builder.info.splits)}")
    skip = tfds.decode.SkipDecoding()
    read_config = tfds.ReadConfig(shuffle_seed=seed, interleave_cycle_length=cycle_length,
                                  enable_ordering_guard=False)
    part = split
    if input_context is not None and input_context.num_input_pipelines > 1:
      # An even, disjoint share of the examples per worker (works with fewer shards than workers).
      part = tfds.even_splits(split, n=input_context.num_input_pipelines)[input_context.input_pipeline_id]
    ds = builder.as_dataset(split=part, shuffle_files=shuffle, read_config=read_config,
                            decoders={"img0": skip, "img1": skip})
  elif is_released_dir(source):
    focal = read_projection(source)
    jobs = _released_model_ids(source)
    shards = released_shards(source, split)
    if input_context is not None and input_context.num_input_pipelines > 1:
      shards = shards[input_context.input_pipeline_id::input_context.num_input_pipelines]
      if not shards:
        raise ValueError(f"{source}: fewer {split} shards than the {input_context.num_input_pipelines} workers.")
    if shuffle:
      shards = [shards[i] for i in np.random.default_rng(seed).permutation(len(shards))]
    # Round-robin over every shard (pairs of one object are contiguous inside a shard).
    per_shard = [_released_shard_dataset(shard, jobs, focal) for shard in shards]
    ds = tf.data.Dataset.choose_from_datasets(
        per_shard, tf.data.Dataset.range(len(per_shard)).repeat(), stop_on_empty_dataset=False)
    ds = ds.map(_parse_released, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic or None)
  else:
    raise FileNotFoundError(
        f"{source} is neither a built TFDS dataset directory (with dataset_info.json; e.g. "
        "~/tensorflow_datasets/shapenet_pairs/planes/1.0.0) nor a folder of the paper's released TFRecords "
        "(with projection.txt and *.tfrecord shards).")
  if shuffle:
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  ds = ds.map(lambda e: _finish_example(e, image_size), num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=deterministic or None)
  if batch_size is not None:
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  options = tf.data.Options()
  options.deterministic = deterministic
  return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def error_text(error):
  """The readable part of a tf.data error: its first line without TensorFlow's function and iterator names."""
  text = str(getattr(error, "message", error)).strip()
  text = text.splitlines()[0] if text else type(error).__name__
  text = re.sub(r"\{\{[^}]*\}\}\s*", "", text)
  return re.sub(r"^Error in user-defined function passed to .*? with iterator: [\w:]+: ", "", text)


def find_unreadable_record(source, split):
  """The first record of a split that cannot be read or decoded (for the error message of a data fault).

  Reads every shard of the split in order, decoding both images of each record, and stops at the first failure.
  Args:
    source: a built TFDS version directory or a released-TFRecords folder (see make_dataset).
    split: str.
  Returns:
    (shard path, record index in the shard, error's first line), or None when every record reads.
  """
  source = os.fspath(source)
  if tf.io.gfile.exists(os.path.join(source, "dataset_info.json")):
    builder = tfds.builder_from_directory(source)
    shards = sorted(tf.io.gfile.glob(os.path.join(source, f"*-{split}.tfrecord*")))
    parse = builder.info.features.deserialize_example  # decodes the images
  else:
    shards = released_shards(source, split)

    def parse(record):
      parsed = tf.io.parse_single_example(record, _RELEASED_FEATURES)
      return [tf.io.decode_png(parsed[key], channels=4) for key in ("img0", "img1")]
  for shard in shards:
    index = 0
    try:
      for _ in tf.data.TFRecordDataset(shard).map(parse):
        index += 1
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
      return shard, index, error_text(e)
  return None
