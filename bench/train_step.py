"""Train-step throughput of the CPU preset and the paper's full-size model, XLA off and on, as a fraction of
the machine's matrix-multiply speed measured in the same run.

Examples (2 CPU cores):
  python bench/train_step.py                  # both models; XLA, dilated conv and batch norm each both ways
  python bench/train_step.py --models=cpu --xla=false --dilated_conv=native --steps=20
  python bench/train_step.py --models=cpu --xla=true --dilated_conv=native --batch_sizes=8,16,32,64,128 \
      --json=/tmp/batch.json                  # pairs per second against batch size

Each row times the real train step (`training.build_train_step`: both views, all six losses, the SVD, gradient
all-reduce, clipping and the Adam update) on one constant batch, so the input pipeline is not part of it
(`bench/input_pipeline.py` measures that). FLOPs are counted analytically, as multiply-adds x 2 of every 3x3
convolution (the two backbones, the uv, depth and orientation heads), forward pass =
sum_layers 2 * H * W * 9 * C_in * C_out per image; a training step counts 3 forward passes per image (the
backward pass computes gradients for the inputs and the weights, each about one forward pass), over 2 views x
batch images. Batch norm, activations, the spatial softmax, the losses and the SVD are left out (under 2% of
the convolutions at these sizes). The forward count is cross-checked against TensorFlow's own profiler
(`tf.compat.v1.profiler`, float_operation) on the traced forward graph. The reference is a float32 2048 x 2048
matmul timed in the same process: "fraction" = achieved FLOP/s / matmul FLOP/s.
"""

import dataclasses
import importlib.util
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import keras
import numpy as np
import tensorflow as tf

import bench_report
from keypointnet_tf import config as config_lib
from keypointnet_tf import geometry
from keypointnet_tf import losses
from keypointnet_tf import model as model_lib
from keypointnet_tf import training

_MODELS = flags.DEFINE_list("models", ["cpu", "paper"], "Which configurations: cpu (the CPU preset), paper.")
_XLA = flags.DEFINE_list("xla", ["false", "true"], "XLA settings to time (false, true).")
_STEPS = flags.DEFINE_integer("steps", 0, "Timed steps per row (0: 20 for the CPU preset, 3 for paper).")
_MATMUL = flags.DEFINE_integer("matmul_size", 2048, "Side of the reference float32 matmul.")
_DILATED = flags.DEFINE_list("dilated_conv", ["keras", "native"],
                             "How the dilated convolutions are computed (model.DILATED_CONV_IMPLS).")
_FUSED = flags.DEFINE_list("fused_batch_norm", ["false", "true"],
                           "Batch norm through TensorFlow's fused kernel (true) or the Keras layer (false).")
_GUARD = flags.DEFINE_list("guard", ["true"], "Non-finite guard settings to time (true: the trainer's step, "
                            "which snapshots and restores the state on non-finite steps; false: without it).")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", [], "View pairs per step to time (default: each preset's own).")
_PEER = flags.DEFINE_bool("peer", True, "Also time the same step in PyTorch (bench/torch_peer.py) when torch is "
                          "installed, and check that its loss equals ours on one batch.")
_JSON = flags.DEFINE_string("json", "", "Also write the rows and the reference as JSON to this path.")


def synthetic_batch(batch, size, num_keypoints=10, seed=0):
  """A batch in the input pipeline's format with random images and upper-hemisphere cameras (NumPy)."""
  rng = np.random.default_rng(seed)
  mv = []
  for _ in range(2 * batch):
    d = rng.normal(size=3)
    d[1] = abs(d[1])
    mv.append(geometry.look_at_model_view(30 * d / np.linalg.norm(d)))
  mv = np.stack(mv).astype(np.float32).reshape(2, batch, 4, 4)
  images = rng.uniform(size=(2, batch, size, size, 4)).astype(np.float32)
  mvi = np.linalg.inv(mv).astype(np.float32)
  return {"image0": images[0], "image1": images[1], "mv0": mv[0], "mv1": mv[1], "mvi0": mvi[0], "mvi1": mvi[1],
          "focal": np.full([batch], geometry.focal_from_fov(5.0), np.float32),
          "orientation_flag0": geometry.orientation_flag_from_mv(mv[0]).numpy().astype(np.float32),
          "orientation_flag1": geometry.orientation_flag_from_mv(mv[1]).numpy().astype(np.float32),
          "relative_rotation": geometry.relative_rotation(mv[0], mv[1]).numpy().astype(np.float32),
          "keypoints": rng.normal(size=(batch, num_keypoints, 3)).astype(np.float32),
          "keypoint_valid": np.ones((batch, num_keypoints), bool)}


def profiler_forward_flops(net, image_size):
  """TensorFlow's own count of the forward graph's FLOPs for one image (cross-check of `forward_flops`)."""
  fn = tf.function(lambda x: net(x, training=False))
  graph = fn.get_concrete_function(tf.TensorSpec([1, image_size, image_size, 4], tf.float32)).graph
  options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  options["output"] = "none"
  return tf.compat.v1.profiler.profile(graph, options=options).total_float_ops


def matmul_flops_per_second(size, repeats=10):
  a = tf.random.normal([size, size])
  b = tf.random.normal([size, size])
  matmul = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
  matmul(a, b).numpy()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).numpy()
    times.append(time.perf_counter() - start)
  return 2 * size ** 3 / statistics.median(times)


def time_train_step(config, steps, guard=True):
  """Median seconds of the real train step (one device) on a constant batch, after one warm-up step."""
  keras.utils.set_random_seed(0)
  strategy = tf.distribute.get_strategy()
  net = model_lib.build_model(config.model, image_size=config.image_size)
  optimizer = keras.optimizers.Adam(config.learning_rate)
  optimizer.build(net.trainable_variables)
  step_var = tf.Variable(0, dtype=tf.int64)
  non_finite = tf.Variable(0, dtype=tf.int64)
  step_fn = training.build_train_step(net, optimizer, strategy, config, tf.random.Generator.from_seed(0),
                                      step_var, non_finite, restore_non_finite=guard)
  batch = {k: tf.constant(v) for k, v in
           synthetic_batch(config.batch_size, config.image_size, config.model.num_keypoints).items()}
  step_fn(batch)["total"].numpy()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    step_fn(batch)["total"].numpy()
    times.append(time.perf_counter() - start)
  if int(non_finite.numpy()):
    raise RuntimeError("The benchmark step produced a non-finite loss.")
  return statistics.median(times), net


def time_torch_step(config, steps):
  """Median seconds of bench/torch_peer.py's train step for `config`'s size, and the loss check on one batch."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch_peer  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  batch_np = synthetic_batch(config.batch_size, config.image_size, config.model.num_keypoints)
  for key in ("image0", "image1"):  # a silhouette that is neither empty nor full
    batch_np[key][..., 3] = batch_np[key][..., 3] > 0.5
  # The port's check: same weights, same batch, no pose noise -> the same loss as losses.total_loss.
  tf_net = model_lib.build_model(config.model, image_size=config.image_size)
  tf_batch = {k: tf.constant(v) for k, v in batch_np.items()}
  outs = [tf_net(tf_batch["image" + v], tf_batch["orientation_flag" + v], flag_mix=1.0, training=True)
          for v in ("0", "1")]
  tf_loss = losses.total_loss(outs[0], outs[1], tf_batch, config_lib.LossConfig(pose_noise_stddev=0.0))["total"]
  torch_loss, tf_loss = torch_peer.step_loss_matches_tensorflow(tf_net, batch_np, tf_loss)
  net = torch_peer.KeypointNet(config.model.num_keypoints, config.model.num_filters,
                               config.model.camera_distance, config.model.batch_norm_momentum)
  step = torch_peer.make_step(net, config.learning_rate, config.clip_norm)
  batch = torch_peer.to_torch_batch(batch_np)
  step(batch)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    float(step(batch))
    times.append(time.perf_counter() - start)
  return statistics.median(times), torch_loss, tf_loss, torch.__version__


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)  # the v1 profiler's deprecation warnings
  presets = {"cpu": config_lib.cpu_preset("planes"), "paper": config_lib.TrainConfig()}
  unknown = set(_MODELS.value) - set(presets)
  if unknown:
    raise app.UsageError(f"--models takes cpu and/or paper. Received: {sorted(unknown)}")
  unknown = set(_DILATED.value) - set(model_lib.DILATED_CONV_IMPLS)
  if unknown:
    raise app.UsageError(f"--dilated_conv takes {model_lib.DILATED_CONV_IMPLS}. Received: {sorted(unknown)}")
  reference = matmul_flops_per_second(_MATMUL.value)
  rows = []
  for name in _MODELS.value:
    for batch in [int(b) for b in _BATCH_SIZES.value] or [presets[name].batch_size]:
      for xla in _XLA.value:
        for impl, fused, guard in [(i, f.lower() == "true", g.lower() == "true") for i in _DILATED.value
                                   for f in _FUSED.value for g in _GUARD.value]:
          model = dataclasses.replace(presets[name].model, dilated_conv=impl, fused_batch_norm=fused)
          config = dataclasses.replace(presets[name], jit_compile=xla.lower() == "true", batch_size=batch,
                                       model=model)
          steps = _STEPS.value or (20 if name == "cpu" else 3)
          seconds, net = time_train_step(config, steps, guard)
          flops = model_lib.forward_flops(config.image_size, config.model.num_filters, config.model.num_keypoints)
          profiled = profiler_forward_flops(net, config.image_size)
          step_flops = 3 * flops * 2 * config.batch_size
          rows.append({"model": name, "image_size": config.image_size, "filters": config.model.num_filters,
                       "pairs": batch, "xla": config.jit_compile, "dilated_conv": impl,
                       "fused_batch_norm": fused, "non_finite_guard": guard, "seconds_per_step": seconds,
                       "pairs_per_second": batch / seconds, "forward_gflop_per_image": flops / 1e9,
                       "profiler_forward_gflop_per_image": profiled / 1e9, "gflop_per_second": step_flops / seconds / 1e9,
                       "fraction_of_matmul": step_flops / seconds / reference})
      if _PEER.value and importlib.util.find_spec("torch") is not None:
        peer_config = dataclasses.replace(presets[name], batch_size=batch)
        seconds, torch_loss, tf_loss, version = time_torch_step(peer_config, steps)
        rows.append({"model": name, "image_size": config.image_size, "filters": config.model.num_filters,
                     "pairs": batch, "framework": f"PyTorch {version}", "seconds_per_step": seconds,
                     "pairs_per_second": batch / seconds, "gflop_per_second": step_flops / seconds / 1e9,
                     "fraction_of_matmul": step_flops / seconds / reference, "loss_torch": torch_loss,
                     "loss_tensorflow": tf_loss})
  print(f"Reference: float32 {_MATMUL.value}x{_MATMUL.value} matmul, {reference / 1e9:.1f} GFLOP/s "
        f"({os.cpu_count()} CPUs)")
  print("| model | image | filters | pairs | XLA | dilated conv | fused BN | s/step | pairs/s | fwd GFLOP/image (analytic / TF "
        "profiler) | achieved GFLOP/s | fraction of matmul |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  notes = []
  for r in rows:
    if "framework" in r:
      ours = min(o["seconds_per_step"] for o in rows
                 if "framework" not in o and o["model"] == r["model"] and o["pairs"] == r["pairs"])
      r["ours_fastest_speedup"] = r["seconds_per_step"] / ours
      print(f"| {r['model']} | {r['image_size']} | {r['filters']} | {r['pairs']} | {r['framework']} | | | "
            f"{r['seconds_per_step']:.3f} | {r['pairs_per_second']:.1f} | | {r['gflop_per_second']:.1f} | "
            f"{r['fraction_of_matmul']:.2f} |")
      notes.append(f"{r['model']}, {r['pairs']} pairs: our fastest row runs {r['ours_fastest_speedup']:.2f}x the "
                   f"PyTorch peer's speed. Port check (same weights and batch, no pose noise): PyTorch loss "
                   f"{r['loss_torch']:.6f}, ours {r['loss_tensorflow']:.6f}.")
      continue
    print(f"| {r['model']} | {r['image_size']} | {r['filters']} | {r['pairs']} | {'on' if r['xla'] else 'off'} | "
          f"{r['dilated_conv']}{'' if r.get('non_finite_guard', True) else ', no NaN guard'} | {'yes' if r['fused_batch_norm'] else 'no'} | {r['seconds_per_step']:.3f} | {r['pairs_per_second']:.1f} | "
          f"{r['forward_gflop_per_image']:.3f} / {r['profiler_forward_gflop_per_image']:.3f} | "
          f"{r['gflop_per_second']:.1f} | {r['fraction_of_matmul']:.2f} |")
  for note in notes:
    print(note)
  if _JSON.value:
    bench_report.write_json(_JSON.value, "train_step", rows, matmul_gflop_per_second=reference / 1e9)


if __name__ == "__main__":
  app.run(main)
