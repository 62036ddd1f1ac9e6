"""Packaging for keypointnet-tf.

Three packages are installed: `keypointnet_tf` (the library: the paper's method and what the presets use),
`keypointnet_datasets` (the TFDS builder that lives in the `datasets/` folder; it is installed under its own name
because a top-level `datasets` package would collide with Hugging Face's `datasets`) and `keypointnet_research`
(the `research/` folder: loss variants, the reproduction driver and report, the recipe trials).
"""

import setuptools

setuptools.setup(
    name="keypointnet-tf",
    version="0.1.0",
    description="KeypointNet (Suwajanakorn et al., NeurIPS 2018) in TensorFlow 2 / Keras 3",
    python_requires=">=3.11",
    packages=["keypointnet_tf", "keypointnet_datasets", "keypointnet_datasets.shapenet_pairs", "keypointnet_research"],
    package_dir={"keypointnet_datasets": "datasets", "keypointnet_research": "research"},
    include_package_data=True,
    package_data={"keypointnet_datasets.shapenet_pairs": [
        "*.md", "*.bib", "*.txt", "*.tsv", "dummy_data/*", "dummy_data/**/*"],
                  # the shipped models (runs.PRETRAINED_DIR): config.json, pretrained.json, weights
                  "keypointnet_tf": ["pretrained/*/*.json", "pretrained/*/checkpoints/*"]},
    install_requires=[
        "tensorflow>=2.16,<2.22",
        "keras>=3.0",
        "tensorflow-datasets>=4.9.4",
        "numpy",
        "pyrender>=0.1.45",
        "trimesh>=4.0",
        "absl-py",
        "tensorboard",  # tf.summary needs it; TensorFlow 2.21 no longer installs it
        "Pillow",
        # Undeclared by tensorflow-datasets but needed: dataset generation imports importlib_resources; the
        # stock `tfds` console script imports apache_beam and mlcroissant at start.
        "importlib_resources",
        "apache-beam",
        "mlcroissant",
    ],
    extras_require={
        # tfds.testing needs dill (undeclared by tensorflow-datasets); trimesh's ray caster and proximity need rtree;
        # tensorflow-serving-api builds the PredictRequest in the export test.
        # tensorflow-graphics: the tests' independent reference for rotations (test_geometry). The library does not
        # import it: what it needs (look-at cameras, the batched 3x3 SVD, geodesic angles) is a few lines each in
        # keypointnet_tf.geometry, and tensorflow-graphics would pull tensorflow-addons (end of life) into every
        # import. pytest-xdist runs the tests in parallel workers (pytest.ini).
        "test": ["pytest>=7", "pytest-xdist", "scipy", "dill", "rtree", "tensorflow-serving-api",
                 "tensorflow-graphics>=2021.12.3"],
        "gpu": ["tensorflow[and-cuda]>=2.16,<2.22"],
    },
)
