"""distribute and the step under tf.distribute: replicas, per-replica clipping, several workers on loopback ports."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from test_training import REPO, _train_command, _weights  # pylint: disable=g-bad-import-order


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
        clip_per_replica=False,  # clip the averaged gradient: two workers then equal one process exactly
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
  """Worker processes of _WORKER_SCRIPT (index -1: a single process), all in model_dir; [(stdout, stderr, code)]."""
  return _run_jobs(script, data_dir, name, steps, ports, [(i, model_dir) for i in indices], timeout)


def _run_jobs(script, data_dir, name, steps, ports, jobs, timeout=240):
  """Like _run_workers, each (index, model_dir) job in its own folder, all at once."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  procs = [subprocess.Popen([sys.executable, str(script), str(i), ",".join(map(str, ports)), data_dir, name,
                             model_dir, str(steps)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO) for i, model_dir in jobs]
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
  # The single process runs beside the cluster (its own folder; it joins no cluster).
  jobs = [(0, cluster), (1, cluster), (-1, single)]
  *first, reference = [_result(o) for o in _run_jobs(script, data_dir, name, 1, _free_ports(2), jobs)]
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
  *second, single_second = _run_jobs(script, data_dir, name, 3, _free_ports(2), jobs)
  assert "Resuming from" in second[0][0] and "(step 1)" in second[0][0]
  assert "Resuming from" not in second[1][0]  # only the chief prints
  results = [_result(o) for o in second]
  assert [r["step"] for r in results] == [3, 3]
  reference = _result(single_second)
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


def _start_cluster(data_dir, name, model_dir, steps, *flags):
  """Two tools/train.py workers on free loopback ports; returns (ports, processes) with stdout+stderr piped."""
  ports = _free_ports(2)
  procs = []
  for index in range(2):
    tf_config = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                            "task": {"type": "worker", "index": index}})
    procs.append(subprocess.Popen(
        _train_command(data_dir, name, model_dir, steps) + ["--strategy=multi_worker", "--worker_timeout_secs=60",
                                                            *flags],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_CONFIG=tf_config), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True))
  return ports, procs


def test_command_line_multi_worker_starts_and_finishes(tiny_planes, tmp_path):
  # The measured failure was here: the tool touched TensorFlow's runtime before the strategy existed.
  data_dir, name = tiny_planes
  model_dir = str(tmp_path / "cli_cluster")
  _, procs = _start_cluster(data_dir, name, model_dir, 2)
  try:
    outputs = [proc.communicate(timeout=240)[0] for proc in procs]
  finally:
    for proc in procs:
      proc.kill()
  for proc, out in zip(procs, outputs):
    assert proc.returncode == 0 and "'status': 'done'" in out and "'step': 2" in out, out[-3000:]
  assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")).endswith("ckpt-2")


def test_worker_whose_peer_dies_stops_with_a_message(tiny_planes, tmp_path):
  # A cluster of two on loopback ports; worker 1 is killed mid-run. Worker 0 must stop in bounded time with a
  # message naming the lost peer and the last checkpoint, not a traceback.
  data_dir, name = tiny_planes
  model_dir = str(tmp_path / "cluster")
  ports, procs = _start_cluster(data_dir, name, model_dir, 100000, "--validate_every=0")
  try:
    deadline = time.time() + 240
    while time.time() < deadline and not tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")):
      assert all(proc.poll() is None for proc in procs), [proc.communicate()[0][-2000:] for proc in procs]
      time.sleep(0.5)
    checkpoint = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    assert checkpoint, "the cluster wrote no checkpoint in time"
    procs[1].send_signal(signal.SIGKILL)
    started = time.time()
    out = procs[0].communicate(timeout=240)[0]
    waited = time.time() - started
  finally:
    for proc in procs:
      proc.kill()
  assert procs[0].returncode == 2, out[-3000:]
  assert f"lost contact with the other workers (127.0.0.1:{ports[1]})" in out, out[-3000:]
  assert "The last checkpoint of the run is " + os.path.join(model_dir, "checkpoints", "ckpt-") in out, out[-3000:]
  assert "Traceback" not in out, out[-3000:]
  print(f"worker 0 stopped {waited:.0f} s after its peer was killed")
