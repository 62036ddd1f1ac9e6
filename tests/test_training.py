"""Training loop: learning, resume, NaN guard, schedules, supervised mode, distribution, the command line."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from keypointnet_tf import config as config_lib
from keypointnet_tf import input_pipeline
from keypointnet_tf import model as model_lib
from keypointnet_tf import runs
from keypointnet_tf import training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(tmp_path, **kwargs):
  base = config_lib.TrainConfig(
      category="planes", model_dir=str(tmp_path / "run"), steps=8, batch_size=4, image_size=32,
      model=config_lib.ModelConfig(num_keypoints=4, num_filters=8, batch_norm_momentum=0.9),
      loss=config_lib.LossConfig(pose_noise_stddev=0.1), anneal_start=2, anneal_end=6, log_every=1,
      image_summary_every=4, checkpoint_every=4, seed=1)
  return dataclasses.replace(base, **kwargs)


def _one_batch_dataset(data_dir, config_name, batch_size=4):
  """The same first batch repeated forever: training order cannot depend on where a run resumed."""
  source = input_pipeline.find_tfds_dir(data_dir, config_name)
  batch = next(iter(input_pipeline.make_dataset(source, "train", batch_size, image_size=32, deterministic=True)))
  return tf.data.Dataset.from_tensors(batch).repeat()


def _weights(model_dir):
  net, _ = runs.load_trained_model(model_dir)
  return [v.numpy() for v in net.weights]


def test_few_steps_reduce_loss_with_fixed_seed(tiny_planes, tmp_path):
  data_dir, name = tiny_planes
  config = _config(tmp_path, steps=30, loss=config_lib.LossConfig(pose_noise_stddev=0.0), log_every=30)
  first = _config(tmp_path / "first", steps=1)
  dataset = _one_batch_dataset(data_dir, name)
  start = training.train(first, dataset)
  end = training.train(config, dataset)
  assert end["status"] == "done" and end["step"] == 30
  assert end["total"] < 0.8 * start["total"]
  for sub in ("checkpoints", "train"):
    assert os.listdir(os.path.join(config.model_dir, sub))
  with open(os.path.join(config.model_dir, "config.json")) as f:
    assert json.load(f)["steps"] == 30


def test_resume_restores_step_weights_optimizer_and_noise(tiny_planes, tmp_path):
  data_dir, name = tiny_planes
  dataset = _one_batch_dataset(data_dir, name)
  straight = _config(tmp_path / "straight", steps=6, checkpoint_every=100)
  training.train(straight, dataset)
  resumed = _config(tmp_path / "resumed", steps=3, checkpoint_every=100)
  assert training.train(resumed, dataset)["step"] == 3
  result = training.train(dataclasses.replace(resumed, steps=6), dataset)
  assert result["step"] == 6
  # Same batch every step: only a complete restore (weights, Adam moments and step, noise generator state,
  # batch-norm statistics) makes 3 + 3 steps land exactly where 6 straight steps do.
  for a, b in zip(_weights(straight.model_dir), _weights(resumed.model_dir)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(resumed.model_dir, "checkpoints")))
  assert reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == 6


def test_legs_with_a_learning_rate_decay_equal_one_run(tiny_planes, tmp_path):
  # run(until=...) stops early but keeps the schedules of config.steps: 3 + 3 steps of a decaying rate land where
  # 6 straight steps do (a leg trained with steps=3 would have decayed to 0 at step 3 instead).
  data_dir, name = tiny_planes
  dataset = _one_batch_dataset(data_dir, name)
  straight = _config(tmp_path / "straight", steps=6, checkpoint_every=100, lr_decay_fraction=0.5)
  training.train(straight, dataset)
  legs = _config(tmp_path / "legs", steps=6, checkpoint_every=100, lr_decay_fraction=0.5)
  assert training.train(legs, dataset, until=3)["step"] == 3
  assert training.train(legs, dataset)["step"] == 6
  for a, b in zip(_weights(straight.model_dir), _weights(legs.model_dir)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  short = _config(tmp_path / "short", steps=3, checkpoint_every=100, lr_decay_fraction=0.5)
  training.train(short, dataset)
  moved = [np.abs(a - b).max() for a, b in zip(_weights(short.model_dir), _weights(legs.model_dir))]
  assert max(moved) > 1e-6  # the last three steps (at 2/3 and 1/3 of the rate) moved the weights


def test_resume_with_conflicting_settings_is_refused(tiny_planes, tmp_path):
  data_dir, name = tiny_planes
  config = _config(tmp_path, steps=1)
  training.train(config, _one_batch_dataset(data_dir, name))
  with pytest.raises(runs.RunError, match=r"learning_rate: saved 0\.001, now 0\.01"):
    training.train(dataclasses.replace(config, learning_rate=0.01, steps=2), _one_batch_dataset(data_dir, name))
  # How the same network is computed is not a setting of the run: it may change on resumption.
  other_kernels = dataclasses.replace(config.model, dilated_conv="keras", fused_batch_norm=False)
  assert training.train(dataclasses.replace(config, model=other_kernels, steps=2),
                        _one_batch_dataset(data_dir, name))["step"] == 2


def test_a_warm_up_only_term_without_a_warm_up_is_refused_before_anything_is_built(tmp_path):
  lateral = config_lib.LossConfig(pose_noise_stddev=0.1, extra_terms=(("lateral_anchor", 10.0),))
  config = _config(tmp_path, loss=lateral)  # silhouette_warmup_steps 0: the anchor's weight would be 0 throughout
  dataset = tf.data.Dataset.from_tensors({"unused": tf.zeros([1])}).repeat()  # never read: refused first
  with pytest.raises(ValueError, match="'lateral_anchor' acts during the silhouette warm-up only"):
    training.train(config, dataset)
  assert not os.path.exists(config.model_dir)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_planes, tmp_path, capsys):
  data_dir, name = tiny_planes
  good = next(iter(_one_batch_dataset(data_dir, name)))
  poisoned = dict(good, image0=good["image0"] * np.nan)
  dataset = tf.data.Dataset.from_tensors(good).repeat(4).concatenate(tf.data.Dataset.from_tensors(poisoned)
                                                                     .repeat())
  config = _config(tmp_path, steps=8, checkpoint_every=2, log_every=3)
  result = training.train(config, dataset)
  assert result["status"] == "non_finite"
  assert "Non-finite loss or gradient by step 6" in capsys.readouterr().err
  latest = tf.train.latest_checkpoint(os.path.join(config.model_dir, "checkpoints"))
  assert latest.endswith("ckpt-4")  # saved before the poisoned step 5, nothing after it
  assert all(np.all(np.isfinite(w)) for w in _weights(config.model_dir))


def test_supervised_mode_learns_keypoints(tiny_planes, tmp_path):
  data_dir, name = tiny_planes
  config = _config(tmp_path, steps=40, supervised=True, log_every=40,
                   model=config_lib.ModelConfig(num_keypoints=9, num_filters=8, batch_norm_momentum=0.9))
  first = training.train(dataclasses.replace(config, steps=1, model_dir=str(tmp_path / "s1")),
                         _one_batch_dataset(data_dir, name))
  last = training.train(config, _one_batch_dataset(data_dir, name))
  assert set(first) >= {"supervised", "orientation", "total"}
  assert last["supervised"] < 0.5 * first["supervised"]


def test_pretrained_orientation_network_is_loaded_and_frozen(tiny_planes, tmp_path):
  data_dir, name = tiny_planes
  donor = _config(tmp_path / "donor", steps=2)
  training.train(donor, _one_batch_dataset(data_dir, name))
  donor_net, _ = runs.load_trained_model(donor.model_dir)
  config = _config(tmp_path / "user", steps=3, orientation_from=donor.model_dir)
  training.train(config, _one_batch_dataset(data_dir, name))
  net, _ = runs.load_trained_model(config.model_dir)
  for mine, theirs in zip(net.orientation_backbone.convs + [net.orientation_head],
                          donor_net.orientation_backbone.convs + [donor_net.orientation_head]):
    np.testing.assert_array_equal(mine.kernel.numpy(), theirs.kernel.numpy())
  assert not np.array_equal(net.uv_head.kernel.numpy(), donor_net.uv_head.kernel.numpy())


def _train_command(data_dir, name, model_dir, steps):
  return [sys.executable, os.path.join(REPO, "tools", "train.py"), "--preset=cpu", "--category=planes",
          f"--data_dir={data_dir}", f"--dataset_config={name}", f"--model_dir={model_dir}", f"--steps={steps}",
          "--image_size=32", "--num_filters=4", "--num_keypoints=4", "--batch_size=2", "--log_every=1",
          "--checkpoint_every=2"]


def _run_train(command):
  """Runs tools/train.py `command` in a subprocess; asserts it succeeded and returns the CompletedProcess."""
  proc = subprocess.run(command, capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  return proc


def _wait_for_checkpoint(model_dir, minimum, process, timeout=180):
  deadline = time.time() + timeout
  while time.time() < deadline:
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    if latest and int(latest.rsplit("-", 1)[1]) >= minimum:
      return int(latest.rsplit("-", 1)[1])
    assert process.poll() is None, process.communicate()
    time.sleep(0.5)
  raise AssertionError("no checkpoint written in time")


def test_command_line_sigint_and_sigkill_then_resume(tiny_planes, tmp_path):
  data_dir, name = tiny_planes
  model_dir = str(tmp_path / "cli")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  # SIGINT: the run saves a checkpoint and exits cleanly.
  proc = subprocess.Popen(_train_command(data_dir, name, model_dir, 10000), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  _wait_for_checkpoint(model_dir, 2, proc)
  proc.send_signal(signal.SIGINT)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-2000:]
  assert "Interrupted at step" in out
  interrupted_at = int(tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")).rsplit("-", 1)[1])
  # SIGKILL: no chance to save; the next run resumes from the last complete checkpoint.
  proc = subprocess.Popen(_train_command(data_dir, name, model_dir, 10000), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  killed_after = _wait_for_checkpoint(model_dir, interrupted_at + 2, proc)
  proc.kill()
  proc.communicate()
  latest = int(tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")).rsplit("-", 1)[1])
  assert latest >= killed_after
  done = subprocess.run(_train_command(data_dir, name, model_dir, latest + 2), env=env, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
  assert f"(step {latest})" in done.stdout
  assert f"'step': {latest + 2}" in done.stdout


def test_supervised_with_wrong_keypoint_count_gives_clear_error(tiny_planes, tmp_path):
  data_dir, name = tiny_planes
  config = _config(tmp_path, steps=1, supervised=True)  # 4 keypoints; procedural planes have 9
  with pytest.raises(training.TrainingError, match="pass --num_keypoints=9"):
    training.train(config, _one_batch_dataset(data_dir, name))


def test_mixed_precision_and_xla_options_train(tiny_planes, tmp_path):
  # A subprocess: the mixed-precision policy is process-global and must not leak into other tests.
  data_dir, name = tiny_planes
  command = _train_command(data_dir, name, str(tmp_path / "mp"), 2) + ["--mixed_precision", "--jit_compile"]
  proc = _run_train(command)
  assert "'status': 'done'" in proc.stdout and "'step': 2" in proc.stdout


def test_anchor_weight_on_the_label_free_preset_gets_a_decay_step(tiny_planes, tmp_path):
  # The CPU preset has no anchor; --anchor_weight=1 gives it one that decays at half the run (scaled to --steps,
  # as the planes preset's silhouette warm-up is: 4,000 of 12,000 steps -> 1 of 4).
  data_dir, name = tiny_planes
  command = _train_command(data_dir, name, str(tmp_path / "anchored"), 4) + ["--anchor_weight=1"]
  proc = _run_train(command)
  assert "Training KeypointNet + axis-anchor warm-up (variant: silhouette_warmup_steps 1) on planes" in proc.stdout
  assert "until step 2:" in proc.stdout and "'status': 'done'" in proc.stdout
  with open(tmp_path / "anchored" / "config.json") as f:
    assert json.load(f)["anchor_steps"] == 2


def test_silhouette_warmup_flag_trains_a_named_variant(tiny_planes, tmp_path):
  data_dir, name = tiny_planes
  command = _train_command(data_dir, name, str(tmp_path / "silwarm"), 2) + ["--silhouette_warmup_steps=2"]
  proc = _run_train(command)
  assert "Training KeypointNet (variant: silhouette_warmup_steps 2) on planes" in proc.stdout
  with open(tmp_path / "silwarm" / "config.json") as f:
    saved = json.load(f)
  assert saved["loss"]["silhouette_warmup_steps"] == 2
  # The data's focal length is recorded with the run (exported models unproject with it).
  assert saved["focal"] == pytest.approx(1.0 / np.tan(np.radians(5.0) / 2.0), rel=1e-6)


# ------------------------------------------------------------------------------------------------------------
# Multi-worker training: two processes on loopback ports.
# ------------------------------------------------------------------------------------------------------------

# ------------------------------------------------------------------------------------------------------------
# Faults: half-loads, non-finite steps, corrupt records, missing EGL.
# ------------------------------------------------------------------------------------------------------------


def test_checkpoint_without_every_model_weight_is_refused(tiny_planes, tmp_path):
  data_dir, name = tiny_planes
  config = _config(tmp_path, steps=1)
  training.train(config, _one_batch_dataset(data_dir, name))
  checkpoints = os.path.join(config.model_dir, "checkpoints")
  # A checkpoint of the same network under another name: nothing of "model" can be matched.
  stranger = model_lib.build_model(config.model, image_size=32)
  tf.train.Checkpoint(network=stranger).save(os.path.join(checkpoints, "ckpt"))
  with pytest.raises(runs.RunError, match="does not hold every weight of this run's model") as error:
    runs.load_trained_model(config.model_dir)
  assert config.model_dir in str(error.value) and "not bound to checkpointed values" in str(error.value)
  with pytest.raises(runs.RunError, match="does not hold every weight"):  # resuming refuses it too
    training.train(dataclasses.replace(config, steps=3), _one_batch_dataset(data_dir, name))
  # A checkpoint of a network with other shapes (config.json of another run).
  wider = dataclasses.replace(config.model, num_filters=12)
  tf.train.Checkpoint(model=model_lib.build_model(wider, image_size=32)).save(os.path.join(checkpoints, "ckpt"))
  with pytest.raises(runs.RunError, match="does not hold every weight"):
    runs.load_trained_model(config.model_dir)


def test_non_finite_step_leaves_weights_and_optimizer_untouched(tiny_planes, tmp_path):
  data_dir, name = tiny_planes
  good = next(iter(_one_batch_dataset(data_dir, name)))
  poisoned = dict(good, image0=good["image0"] * np.nan)
  trainer = training.set_up(_config(tmp_path, steps=8), tf.data.Dataset.from_tensors(good).repeat())
  numeric = {k: v for k, v in good.items() if k != "model_id"}
  trainer.step_fn(numeric)
  trainer.step_fn(numeric)  # Adam's moments are non-zero now: a zero-gradient update would still move weights

  def state():
    return [v.numpy().copy() for v in trainer.net.variables + trainer.optimizer.variables]

  before = state()
  metrics = trainer.step_fn({k: v for k, v in poisoned.items() if k != "model_id"})
  assert float(metrics["finite"]) == 0.0 and int(trainer.non_finite_steps.numpy()) == 1
  for a, b in zip(before, state()):
    np.testing.assert_array_equal(a, b)
  trainer.step_fn(numeric)  # and a good step afterwards still trains
  assert any(not np.array_equal(a, b) for a, b in zip(before, state()))


def _corrupt_one_record(source_dir, target_dir, split="train", index=1):
  """Copies a built data set and replaces one record's first image with bytes that are not a PNG."""
  shutil.copytree(source_dir, target_dir)
  (shard,) = [p for p in os.listdir(target_dir) if f"-{split}.tfrecord" in p]
  path = os.path.join(target_dir, shard)
  records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
  example = tf.train.Example.FromString(records[index])
  example.features.feature["img0"].bytes_list.value[0] = b"\x89PNG not really" + b"\0" * 64
  records[index] = example.SerializeToString()
  with tf.io.TFRecordWriter(path) as writer:
    for record in records:
      writer.write(record)
  return shard


def test_corrupt_record_names_its_shard_and_keeps_the_last_checkpoint(tiny_planes, tmp_path):
  data_dir, name = tiny_planes
  config = _config(tmp_path, steps=2, data_dir=data_dir, dataset_config=name, batch_size=2, validate_every=0)
  training.train(config)  # two good steps, checkpoint 2
  bad_data = tmp_path / "bad"
  version = input_pipeline.find_tfds_dir(data_dir, name)
  shard = _corrupt_one_record(version, str(bad_data / "shapenet_pairs" / name / os.path.basename(version)))
  assert input_pipeline.find_unreadable_record(input_pipeline.find_tfds_dir(str(bad_data), name), "train")[1] == 1
  with pytest.raises(training.TrainingError, match=rf"record is #1 of shard .*{shard} \(Unknown image file format.*ckpt-2"):
    training.train(dataclasses.replace(config, data_dir=str(bad_data), steps=40))
  assert tf.train.latest_checkpoint(os.path.join(config.model_dir, "checkpoints")).endswith("ckpt-2")
  runs.load_trained_model(config.model_dir)  # still whole


def test_missing_opengl_gives_the_install_line_not_a_traceback(tmp_path):
  command = [sys.executable, os.path.join(REPO, "tools", "train.py"), f"--data_dir={tmp_path / 'tfds'}",
             f"--model_dir={tmp_path / 'run'}", "--steps=2"]
  proc = subprocess.run(command, capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYOPENGL_PLATFORM="not-a-platform"))
  assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert "apt-get install -y libegl1" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
  assert not any(os.path.exists(os.path.join(root, "dataset_info.json"))
                 for root, _, _ in os.walk(tmp_path / "tfds"))  # nothing half-written that looks built


# ------------------------------------------------------------------------------------------------------------
# Schedules and validation.
# ------------------------------------------------------------------------------------------------------------


def test_validation_goes_to_tensorboard_and_keeps_the_best_checkpoint(tiny_planes, tmp_path):
  data_dir, name = tiny_planes
  config = _config(tmp_path, steps=4, data_dir=data_dir, dataset_config=name, validate_every=2, log_every=2)
  training.train(config)
  with open(os.path.join(config.model_dir, "best", "best.json")) as f:
    best = json.load(f)
  assert best["step"] in (2, 4) and best["pairs"] == 2 and 0 <= best["das"] <= 1
  assert tf.train.latest_checkpoint(os.path.join(config.model_dir, "best")).endswith(f"ckpt-{best['step']}")
  tags = set()
  for path in tf.io.gfile.glob(os.path.join(config.model_dir, "train", "events.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(value.tag for value in event.summary.value)
  assert {"validation/median", "validation/mean", "validation/das"} <= tags


