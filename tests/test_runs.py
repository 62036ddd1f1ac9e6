"""runs: a run on disk, and building its missing data once when several processes start together."""

import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_BUILD_SCRIPT = textwrap.dedent("""
    import os, sys, time
    from keypointnet_tf import config as config_lib, runs
    from keypointnet_datasets.shapenet_pairs import shapenet_pairs_dataset_builder as builder_lib
    data_dir, log = sys.argv[1:3]

    def build(data_dir, name):  # the tools pass build.build_config; this one also logs each build
      with open(log, "a") as f:
        f.write(f"build {os.getpid()}\\n")
      time.sleep(2)  # long enough for the other process to find the data set missing too
      config = builder_lib.ShapenetPairsConfig(name=name, category="planes", image_size=32, pairs_per_model=2,
                                               num_models=(2, 1, 1))
      builder_lib.Builder(config=config, data_dir=data_dir).download_and_prepare()

    config = config_lib.TrainConfig(category="planes", data_dir=data_dir, dataset_config="tiny_cold")
    # A barrier: both processes ask for the data once both have imported TensorFlow.
    open(f"{log}.ready-{os.getpid()}", "w").close()
    deadline = time.time() + 120
    while len([n for n in os.listdir(os.path.dirname(log)) if ".ready-" in n]) < 2 and time.time() < deadline:
      time.sleep(0.1)
    print("SOURCE", runs.dataset_source(config, build=build), flush=True)
""")


def test_processes_starting_on_an_empty_data_dir_build_it_once(tmp_path):
  # Two processes (the workers of a cluster on shared storage, or two runs) ask for the same missing data set at
  # once: one builds it, the other waits with a message and then reads the finished data set.
  script = tmp_path / "cold.py"
  script.write_text(_BUILD_SCRIPT)
  data_dir, log = tmp_path / "tfds", tmp_path / "builds.log"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TQDM_DISABLE="1")
  procs = [subprocess.Popen([sys.executable, str(script), str(data_dir), str(log)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
  outputs = []
  for proc in procs:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    outputs.append(out)
  assert len(log.read_text().splitlines()) == 1, log.read_text()  # rendered once
  sources = [next(line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("SOURCE")) for out in outputs]
  assert sources[0] == sources[1] and os.path.exists(os.path.join(sources[0], "dataset_info.json"))
  assert sum("Waiting for another process that is building shapenet_pairs/tiny_cold" in out for out in outputs) == 1
  assert not [name for name in os.listdir(data_dir / "shapenet_pairs" / "tiny_cold") if "incomplete" in name]
