"""Building a shapenet_pairs config from Python (what the tools do when a run's data set is missing)."""

_EGL_HINT = ("Headless rendering needs Mesa's EGL: apt-get install -y libegl1 libegl-mesa0 libgl1-mesa-dri "
             "(bash install.sh does this), or set PYOPENGL_PLATFORM=osmesa with libosmesa6 installed.")


class DataBuildError(RuntimeError):
  """The data set could not be built; the message says what to install or fix."""


def build_config(data_dir, config_name):
  """Builds shapenet_pairs/<config_name> in data_dir (rendering in worker processes).

  Raises:
    DataBuildError: rendering cannot run here (no EGL: the message has the apt-get line) or the config is unknown.
  """
  try:
    # pylint: disable=g-import-not-at-top
    from keypointnet_datasets.shapenet_pairs import rendering
    from keypointnet_datasets.shapenet_pairs import shapenet_pairs_dataset_builder
  except (ImportError, OSError) as e:  # PyOpenGL loads libEGL when pyrender is imported
    raise DataBuildError(f"Cannot load the renderer ({e}). {_EGL_HINT}") from e
  try:
    builder = shapenet_pairs_dataset_builder.Builder(config=config_name, data_dir=data_dir)
  except ValueError as e:
    raise DataBuildError(
        f"shapenet_pairs/{config_name} is not built in {data_dir} and is not one of the named configs, so it cannot "
        "be built here. A data set from your own meshes is built once with tfds build, e.g.\n  tfds build "
        f"datasets/shapenet_pairs --data_dir={data_dir} --config='{{\"name\": \"{config_name}\", "
        "\"mesh_dir\": \"/path/to/meshes\", \"image_size\": 64, \"pairs_per_model\": 8}'") from e
  try:
    builder.download_and_prepare()
  except rendering.RenderingError as e:
    raise DataBuildError(f"Building shapenet_pairs/{config_name} in {data_dir} failed: {e}") from e
