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
