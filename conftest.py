"""Shared pytest setup: quiet TensorFlow logs, keep tests on whatever devices exist."""

import inspect
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# pytest.ini runs the tests in parallel worker processes (pytest-xdist, `-n auto`): on a GPU each of them, and each
# process a test starts, takes GPU memory as it needs it instead of all of it at start.
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")

# Most of a test's time is single-threaded (tracing, TensorFlow's import in the processes tests start), so one worker
# per core, at most this many (each worker imports TensorFlow and builds its own session fixtures).
_MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config):
  del config
  return max(1, min(os.cpu_count() or 1, _MAX_WORKERS))


# A test is slow when it starts processes (subprocesses, rendering workers, data set builds) or trains: it uses one
# of these fixtures (they build data, train or export), or its own code does one of these things.
_SLOW_FIXTURES = {"tiny_planes", "tiny_run", "exported", "rendered_views"}
_SLOW_CALLS = ("subprocess.", "download_and_prepare", "render_jobs", "training.train(", "_run_workers(",
               "_start_cluster(", "reproduction.reproduce(")


def _is_slow(item):
  if _SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
    return True
  try:
    source = inspect.getsource(item.function)
  except (OSError, TypeError):
    return True  # unknown: keep it out of the fast subset
  return any(call in source for call in _SLOW_CALLS)


def pytest_collection_modifyitems(config, items):
  """Marks the slow tests (`-m "not slow"` is the fast subset) and deselects tf.test.TestCase.test_session, a
  helper method named like a test, not a test."""
  kept = [item for item in items if item.name != "test_session"]
  if len(kept) != len(items):
    config.hook.pytest_deselected(items=[item for item in items if item.name == "test_session"])
    items[:] = kept
  for item in items:
    if _is_slow(item):
      item.add_marker(pytest.mark.slow)



@pytest.fixture(scope="session")
def tiny_planes(tmp_path_factory):
  """A tiny procedural planes shapenet_pairs build (32 px; 4 / 1 / 2 models x 2 pairs): (data_dir, config)."""
  from keypointnet_datasets.shapenet_pairs import shapenet_pairs_dataset_builder as builder_lib  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path_factory.mktemp("tfds")
  config = builder_lib.ShapenetPairsConfig(name="tiny_train", category="planes", image_size=32, pairs_per_model=2,
                                           num_models=(4, 1, 2))
  builder_lib.Builder(config=config, data_dir=data_dir).download_and_prepare()
  return str(data_dir), "tiny_train"


@pytest.fixture(scope="session")
def readme_tables():
  """tools/readme_tables.py as a module, loaded once (it defines absl flags, which may be defined only once)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      "readme_tables", os.path.join(os.path.dirname(os.path.abspath(__file__)), "tools", "readme_tables.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
