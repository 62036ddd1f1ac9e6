"""keypointnet-tf: a TensorFlow 2 / Keras 3 reproduction of KeypointNet (Suwajanakorn et al., NeurIPS 2018)."""

__version__ = "0.1.0"
