"""Training loop: learning, resume, NaN guard, schedules, supervised mode, distribution, the command line."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import keras
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


def test_flag_mix_matches_released_schedule():
  # clip((end - step) / (end - start), 0, 1) with the code's 30k / 60k.
  for step, expected in [(0, 1.0), (30000, 1.0), (37500, 0.75), (45000, 0.5), (60000, 0.0), (90000, 0.0)]:
    assert training.flag_mix(step, 30000, 60000).numpy() == pytest.approx(expected)
  # With round(): ground truth until the midpoint, predicted from it on (where they disagree).
  for step, uses_truth in [(44999, True), (45000, False)]:
    mix = training.flag_mix(step, 30000, 60000)
    assert tf.round(mix * 1.0 + (1 - mix) * 0.0).numpy() == float(uses_truth)


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
  with pytest.raises(training.TrainingError, match=r"learning_rate: saved 0\.001, now 0\.01"):
    training.train(dataclasses.replace(config, learning_rate=0.01, steps=2), _one_batch_dataset(data_dir, name))
  # How the same network is computed is not a setting of the run: it may change on resumption.
  other_kernels = dataclasses.replace(config.model, dilated_conv="keras", fused_batch_norm=False)
  assert training.train(dataclasses.replace(config, model=other_kernels, steps=2),
                        _one_batch_dataset(data_dir, name))["step"] == 2


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


_EQUIVALENCE_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from keypointnet_tf import config as config_lib, input_pipeline, runs, training
    data_dir, name, out = sys.argv[1:4]
    source = input_pipeline.find_tfds_dir(data_dir, name)
    batch = next(iter(input_pipeline.make_dataset(source, "train", 8, image_size=32, deterministic=True)))
    results = {}
    for strategy in ("default", "mirrored"):
      config = config_lib.TrainConfig(
          category="planes", model_dir=f"{out}/{strategy}", steps=1, batch_size=8 if strategy == "default" else 4,
          image_size=32, strategy=strategy, log_every=1, seed=3, learning_rate=1e-2, clip_per_replica=False,
          model=config_lib.ModelConfig(num_keypoints=4, num_filters=8, sync_batch_norm=True),
          loss=config_lib.LossConfig(pose_noise_stddev=0.0))
      result = training.train(config, tf.data.Dataset.from_tensors(batch).repeat())
      net, _ = runs.load_trained_model(config.model_dir)
      results[strategy] = {"loss": result["total"], "norm": result["gradient_norm"],
                           "weights": np.concatenate([w.numpy().ravel() for w in net.weights])}
    diff = np.abs(results["default"]["weights"] - results["mirrored"]["weights"])
    print(json.dumps({"replicas": len(tf.config.list_logical_devices("CPU")),
                      "loss": [results[k]["loss"] for k in ("default", "mirrored")],
                      "norm": [results[k]["norm"] for k in ("default", "mirrored")],
                      "share_differing": float(np.mean(diff > 1e-4)), "count": int(diff.size)}))
""")


def test_mirrored_two_devices_matches_one_device(tiny_planes, tmp_path):
  data_dir, name = tiny_planes
  script = tmp_path / "equivalence.py"
  script.write_text(_EQUIVALENCE_SCRIPT)
  proc = subprocess.run([sys.executable, str(script), data_dir, name, str(tmp_path)], capture_output=True,
                        text=True, timeout=300, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))
  assert summary["replicas"] == 2
  assert summary["loss"][1] == pytest.approx(summary["loss"][0], rel=1e-4)
  # The all-reduced global gradient: float32 sums in another order through sync batch norm and the SVD
  # differ by ~4e-4 relative (measured).
  assert summary["norm"][1] == pytest.approx(summary["norm"][0], rel=2e-3)
  # Adam's first step moves every weight by ~lr * sign(gradient): weights whose gradient is ~0 can flip sign on
  # float round-off between the two reductions, so a handful may differ by 2 * lr; the rest must agree.
  assert summary["share_differing"] < 0.01, summary


_PER_REPLICA_CLIP_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from keypointnet_tf import config as config_lib, distribute, input_pipeline, model as model_lib, training
    data_dir, name = sys.argv[1:3]
    source = input_pipeline.find_tfds_dir(data_dir, name)
    batch = next(iter(input_pipeline.make_dataset(source, "train", 8, image_size=32, deterministic=True)))
    clip = 0.05  # far below the gradients' norms, so clipping acts on every replica
    out = {}
    for per_replica in (True, False):
      config = config_lib.TrainConfig(
          category="planes", steps=1, batch_size=4, image_size=32, seed=3, clip_norm=clip,
          clip_per_replica=per_replica, model=config_lib.ModelConfig(num_keypoints=4, num_filters=8),
          loss=config_lib.LossConfig(pose_noise_stddev=0.0))
      strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
      keras.utils.set_random_seed(3)
      with strategy.scope():
        net = model_lib.build_model(config.model, image_size=32)
        optimizer = keras.optimizers.SGD(learning_rate=1.0)  # the update is minus the gradient it receives
        optimizer.build(net.trainable_variables)
        step_var = tf.Variable(0, dtype=tf.int64)
        non_finite = tf.Variable(0, dtype=tf.int64)
        generator = tf.random.Generator.from_seed(0)
      before = [v.numpy() for v in net.trainable_variables]
      # By hand, on one device: each replica's half of the batch, its gradient, then the two combinations.
      twin = model_lib.build_model(config.model, image_size=32)
      twin.set_weights(net.get_weights())
      halves = []
      for i in range(2):
        half = {k: v[4 * i:4 * i + 4] for k, v in batch.items()}
        with tf.GradientTape() as tape:
          terms, _ = training.compute_losses(twin, half, config, generator, tf.ones([]), step=0)
        halves.append(tape.gradient(terms["total"], twin.trainable_variables))
      clipped = [tf.clip_by_global_norm(g, clip)[0] for g in halves]
      by_hand = {True: [(a + b) / 2 for a, b in zip(*clipped)],
                 False: tf.clip_by_global_norm([(a + b) / 2 for a, b in zip(*halves)], clip)[0]}
      step_fn = training.build_train_step(net, optimizer, strategy, config, generator, step_var, non_finite)
      distributed = distribute.distribute_batches(strategy, tf.data.Dataset.from_tensors(batch), 8)
      step_fn(next(iter(distributed)))
      applied = np.concatenate([(b - a.numpy()).ravel() for a, b in zip(net.trainable_variables, before)])
      out[str(per_replica)] = {
          mode: float(np.abs(applied - np.concatenate([g.numpy().ravel() for g in grads])).max())
          for mode, grads in (("per_replica", by_hand[True]), ("averaged", by_hand[False]))}
      out[str(per_replica)]["size"] = float(np.abs(applied).max())
    print(json.dumps(out))
""")


def test_clipping_per_replica_matches_a_hand_computation(tiny_planes, tmp_path):
  # Two replicas, one SGD step with learning rate 1: the applied update is the combined gradient. The released
  # code clips each replica's gradient, then averages (clip_per_replica=True); the other mode clips the average.
  data_dir, name = tiny_planes
  script = tmp_path / "per_replica.py"
  script.write_text(_PER_REPLICA_CLIP_SCRIPT)
  proc = subprocess.run([sys.executable, str(script), data_dir, name], capture_output=True, text=True, timeout=300,
                        cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))
  for mode, other in (("True", "averaged"), ("False", "per_replica")):
    errors = out[mode]
    own = "per_replica" if mode == "True" else "averaged"
    assert errors[own] < 1e-3 * errors["size"], out  # the mode does what its hand computation does
    assert errors[other] > 1e-2 * errors["size"], out  # and the two modes differ, so the test can tell them apart


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
  # The CPU preset has no anchor; --anchor_weight=1 gives it one that decays at half the run (scaled to --steps).
  data_dir, name = tiny_planes
  command = _train_command(data_dir, name, str(tmp_path / "anchored"), 4) + ["--anchor_weight=1"]
  proc = _run_train(command)
  assert "Training KeypointNet + axis-anchor warm-up on planes" in proc.stdout
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


def test_anchor_schedule_and_validation():
  assert [float(training.anchor_scale(s, 1000)) for s in (0, 250, 500, 1000, 5000)] == [1.0, 0.75, 0.5, 0.0, 0.0]
  anchored = dataclasses.replace(config_lib.cpu_anchor_preset("planes"), anchor_steps=0)
  with pytest.raises(ValueError, match="anchor_steps"):
    config_lib.resolve(anchored)
  one_keypoint = dataclasses.replace(config_lib.cpu_anchor_preset("planes"),
                                     model=config_lib.ModelConfig(num_keypoints=1))
  with pytest.raises(ValueError, match="num_keypoints >= 2"):
    config_lib.resolve(one_keypoint)
  assert config_lib.TrainConfig().loss.weights.anchor == 0.0  # the paper's recipe has no anchor


def test_silhouette_warmup_schedule_and_validation():
  assert [float(training.silhouette_scale(s, 1000)) for s in (0, 250, 1000, 5000)] == [0.0, 0.25, 1.0, 1.0]
  assert [float(training.silhouette_scale(s, 0)) for s in (0, 5000)] == [1.0, 1.0]  # the paper: no warm-up
  negative = dataclasses.replace(config_lib.cpu_preset("planes"),
                                 loss=config_lib.LossConfig(silhouette_warmup_steps=-1))
  with pytest.raises(ValueError, match="silhouette_warmup_steps must be 0"):
    config_lib.resolve(negative)
  assert config_lib.TrainConfig().loss.silhouette_warmup_steps == 0


def test_learning_rate_schedule_and_validation():
  def factors(steps, warmup, fraction, total):
    return [float(training.learning_rate_factor(s, warmup, fraction, total)) for s in steps]
  # Decay over the last quarter of 8,000 steps: 1 until step 6,000, then linearly to 0 at 8,000 (by hand).
  assert factors((0, 6000, 7000, 7500, 8000, 9000), 0, 0.25, 8000) == pytest.approx([1, 1, 0.5, 0.25, 0, 0])
  assert factors((0, 8000), 0, 0.0, 8000) == [1.0, 1.0]  # the paper: a constant rate
  # The warm-up is Keras's PolynomialDecay from 1% of the rate (what the project used before the decay existed).
  reference = keras.optimizers.schedules.PolynomialDecay(1e-5, 100, 1e-3, power=1.0)
  rate = training.LearningRate(dataclasses.replace(config_lib.TrainConfig(), warmup_steps=100, steps=1000))
  for step in (0, 10, 50, 100, 500):
    assert float(rate(step)) == pytest.approx(float(reference(step)), rel=1e-5)  # float32 rounding
  with pytest.raises(ValueError, match="lr_decay_fraction must be in"):
    config_lib.resolve(dataclasses.replace(config_lib.cpu_preset("planes"), lr_decay_fraction=1.5))
  decayed = dataclasses.replace(config_lib.cpu_preset("planes"), lr_decay_fraction=0.25)
  assert config_lib.method_name(decayed) == "KeypointNet (variant: lr_decay_fraction 0.25)"


# ------------------------------------------------------------------------------------------------------------
# Multi-worker training: two processes on loopback ports.
# ------------------------------------------------------------------------------------------------------------

_WORKER_SCRIPT = textwrap.dedent("""
    import json, os, sys
    index, ports, data_dir, name, model_dir, steps = sys.argv[1:7]
    workers = [f"127.0.0.1:{port}" for port in ports.split(",")]
    strategy = "multi_worker" if int(index) >= 0 else "default"  # index -1: one process, the whole batch
    if strategy == "multi_worker":
      os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers},
                                            "task": {"type": "worker", "index": int(index)}})
    from keypointnet_tf import config as config_lib, input_pipeline, training
    batch_size = 4 // len(workers) if strategy == "multi_worker" else 4
    config = config_lib.TrainConfig(
        category="planes", model_dir=model_dir, steps=int(steps), batch_size=batch_size, image_size=32,
        strategy=strategy, log_every=1, seed=3, validate_every=0, checkpoint_every=100, worker_timeout_secs=20,
        model=config_lib.ModelConfig(num_keypoints=4, num_filters=8, sync_batch_norm=True),
        loss=config_lib.LossConfig(pose_noise_stddev=0.0), anneal_start=1, anneal_end=2)

    def dataset():  # built after the strategy, as multi-worker needs
      import tensorflow as tf
      source = input_pipeline.find_tfds_dir(data_dir, name)
      batch = next(iter(input_pipeline.make_dataset(source, "train", 4, image_size=32, deterministic=True)))
      return tf.data.Dataset.from_tensors(batch).repeat()

    result = training.train(config, dataset)
    print("RESULT", json.dumps({"status": result["status"], "step": result["step"], "total": result.get("total")}))
""")


def _free_ports(count):
  import socket  # pylint: disable=g-import-not-at-top
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _run_workers(script, data_dir, name, model_dir, steps, ports, indices, timeout=240):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  procs = [subprocess.Popen([sys.executable, str(script), str(i), ",".join(map(str, ports)), data_dir, name,
                             model_dir, str(steps)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO) for i in indices]
  outputs = []
  try:
    for proc in procs:
      outputs.append(proc.communicate(timeout=timeout) + (proc.returncode,))
  finally:
    for proc in procs:
      proc.kill()
  return outputs


def _result(output):
  stdout, stderr, code = output
  assert code == 0, stderr[-3000:]
  return json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT"))[len("RESULT "):])


def _close(a_dir, b_dir):
  """Share of weights that differ by more than 1e-4 (Adam's first steps can flip a near-zero gradient's sign on
  float round-off between two reductions; see test_mirrored_two_devices_matches_one_device)."""
  a = np.concatenate([w.ravel() for w in _weights(a_dir)])
  b = np.concatenate([w.ravel() for w in _weights(b_dir)])
  return float(np.mean(np.abs(a - b) > 1e-4))


def test_two_workers_match_one_process_and_resume(tiny_planes, tmp_path):
  data_dir, name = tiny_planes
  script = tmp_path / "worker.py"
  script.write_text(_WORKER_SCRIPT)
  cluster, single = str(tmp_path / "cluster"), str(tmp_path / "single")
  ports = _free_ports(2)
  first = [_result(o) for o in _run_workers(script, data_dir, name, cluster, 1, ports, (0, 1))]
  reference = _result(_run_workers(script, data_dir, name, single, 1, ports, (-1,))[0])
  assert [r["step"] for r in first] == [1, 1] and reference["step"] == 1
  assert first[0]["total"] == pytest.approx(reference["total"], rel=1e-5)
  assert _close(cluster, single) < 0.01  # measured 0.2%: Adam's first step is lr * sign(gradient)
  # The chief writes the run; the other worker only its own folder (for its own resumption).
  assert os.path.isdir(os.path.join(cluster, "train")) and os.listdir(os.path.join(cluster, "checkpoints"))
  assert os.listdir(os.path.join(cluster, "workers", "worker-1", "checkpoints"))
  assert not os.path.exists(os.path.join(cluster, "workers", "worker-1", "train"))
  # Both stopped and started again: they resume at step 1, and their loss at step 3 is the single process's
  # (weights drift apart by float round-off compounded through Adam's early sign-like steps: ~8% of the update
  # after 3 steps, so the loss is the sharper check here).
  ports = _free_ports(2)
  second = _run_workers(script, data_dir, name, cluster, 3, ports, (0, 1))
  assert "Resuming from" in second[0][0] and "(step 1)" in second[0][0]
  assert "Resuming from" not in second[1][0]  # only the chief prints
  results = [_result(o) for o in second]
  assert [r["step"] for r in results] == [3, 3]
  reference = _result(_run_workers(script, data_dir, name, single, 3, ports, (-1,))[0])
  assert results[0]["total"] == pytest.approx(reference["total"], rel=2e-3)
  # A cluster stopped between two saves: worker 1's latest checkpoint is step 1, the chief's step 3. Both go back
  # to step 1 (which both keep) instead of training on from different weights.
  worker_checkpoints = os.path.join(cluster, "workers", "worker-1", "checkpoints")
  tf.compat.v1.train.update_checkpoint_state(worker_checkpoints, os.path.join(worker_checkpoints, "ckpt-1"),
                                             [os.path.join(worker_checkpoints, "ckpt-1")])
  third = _run_workers(script, data_dir, name, cluster, 4, _free_ports(2), (0, 1))
  assert "latest checkpoints were at steps [1, 3]; all resume from step 1" in third[0][0], third[0][1][-2000:]
  assert [_result(o)["step"] for o in third] == [4, 4]


def test_worker_without_peers_fails_in_bounded_time(tiny_planes, tmp_path):
  data_dir, name = tiny_planes
  script = tmp_path / "worker.py"
  script.write_text(_WORKER_SCRIPT)
  ports = _free_ports(2)
  started = time.time()
  stdout, stderr, code = _run_workers(script, data_dir, name, str(tmp_path / "alone"), 3, ports, (0,),
                                      timeout=120)[0]
  assert code == -signal.SIGKILL, stdout[-2000:] + stderr[-2000:]
  assert f"127.0.0.1:{ports[1]}" in stderr and "did not join" in stderr
  assert time.time() - started < 90


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


def test_command_line_multi_worker_starts_and_finishes(tiny_planes, tmp_path):
  # The measured failure was here: the tool touched TensorFlow's runtime before the strategy existed.
  data_dir, name = tiny_planes
  ports = _free_ports(2)
  model_dir = str(tmp_path / "cli_cluster")
  procs = []
  for index in range(2):
    tf_config = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                            "task": {"type": "worker", "index": index}})
    procs.append(subprocess.Popen(
        _train_command(data_dir, name, model_dir, 2) + ["--strategy=multi_worker", "--worker_timeout_secs=60"],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_CONFIG=tf_config), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True))
  try:
    outputs = [proc.communicate(timeout=240)[0] for proc in procs]
  finally:
    for proc in procs:
      proc.kill()
  for proc, out in zip(procs, outputs):
    assert proc.returncode == 0 and "'status': 'done'" in out and "'step': 2" in out, out[-3000:]
  assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")).endswith("ckpt-2")
