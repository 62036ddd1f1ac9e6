"""Research beside the method: loss variants, the reproduction driver and report, the recipe trials.

Installed as `keypointnet_research` (setup.py). Nothing in `keypointnet_tf` imports it.
"""
