"""Shared pytest setup: quiet TensorFlow logs, keep tests on whatever devices exist."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
