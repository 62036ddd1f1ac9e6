"""Shared pytest setup: quiet TensorFlow logs, keep tests on whatever devices exist."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def pytest_collection_modifyitems(config, items):
  """Deselects tf.test.TestCase.test_session: a helper method named like a test, not a test."""
  kept = [item for item in items if item.name != "test_session"]
  if len(kept) != len(items):
    config.hook.pytest_deselected(items=[item for item in items if item.name == "test_session"])
    items[:] = kept


import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="session")
def tiny_planes(tmp_path_factory):
  """A tiny procedural planes shapenet_pairs build (32 px; 4 / 1 / 2 models x 2 pairs): (data_dir, config)."""
  from keypointnet_datasets.shapenet_pairs import shapenet_pairs_dataset_builder as builder_lib  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path_factory.mktemp("tfds")
  config = builder_lib.ShapenetPairsConfig(name="tiny_train", category="planes", image_size=32, pairs_per_model=2,
                                           num_models=(4, 1, 2))
  builder_lib.Builder(config=config, data_dir=data_dir).download_and_prepare()
  return str(data_dir), "tiny_train"
