"""Draws predicted keypoints (one fixed colour per index) on images, test examples, or a turntable.

Examples:
  python tools/predict.py --model_dir=runs/planes --images=my_photos/ --output=predictions/
  python tools/predict.py --model_dir=runs/planes --test_examples=32 --output=predictions/
  python tools/predict.py --model_dir=runs/planes --turntable=17 --frames=36 --output=predictions/
  python tools/predict.py --model=planes --images=my_photos/    # a model shipped with the package
Writes one PNG per image, contact_sheet.png, and for --turntable an animated turntable.gif. Files that cannot be
read are reported and skipped.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np
import tensorflow as tf

from keypointnet_tf import config as config_lib
from keypointnet_tf import input_pipeline
from keypointnet_tf import prediction
from keypointnet_tf import runs
from keypointnet_tf import visualization
from keypointnet_datasets.shapenet_pairs import build

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Training run directory (or --model).")
_MODEL = flags.DEFINE_string("model", None, "A model shipped with the package, by name (planes, cars, chairs), "
                             "instead of --model_dir.")
_IMAGES = flags.DEFINE_string("images", None, "Folder of PNG/JPEG images.")
_TEST = flags.DEFINE_integer("test_examples", None, "Predict on this many test pairs of the run's data.")
_TURNTABLE = flags.DEFINE_integer("turntable", None, "Procedural instance index to render all the way around.")
_FRAMES = flags.DEFINE_integer("frames", 36, "Turntable frames.")
_GENERATOR = flags.DEFINE_integer("generator", None, "Procedural generator of the turntable's object (1 or 2; "
                                  "default: the one the model's data set was built with).")
_OUTPUT = flags.DEFINE_string("output", "predictions", "Output folder.")


def main(argv):
  del argv
  if sum(x is not None for x in (_IMAGES.value, _TEST.value, _TURNTABLE.value)) != 1:
    print("error: give exactly one of --images, --test_examples, --turntable", file=sys.stderr)
    return 2
  try:
    model_dir = runs.chosen_run(_MODEL_DIR.value, _MODEL.value)
    net, config = runs.load_trained_model(model_dir)
  except (FileNotFoundError, runs.RunError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if _TURNTABLE.value is not None and config.category not in config_lib.CATEGORIES:
    print(f"error: --turntable renders procedural {', '.join(config_lib.CATEGORIES)}; the run in {model_dir} "
          f"is trained on {config.category}: use --images or --test_examples", file=sys.stderr)
    return 2
  print(f"Keypoints of {config_lib.method_name(config)} ({model_dir}).", flush=True)
  predict = tf.function(lambda images: net(images, training=False), reduce_retracing=True)
  os.makedirs(_OUTPUT.value, exist_ok=True)
  names, skipped = [], []
  if _IMAGES.value:
    arrays = []
    for path in prediction.list_images(_IMAGES.value):
      try:
        array, size = prediction.read_image(path, max(config.image_size, prediction.DISPLAY_SIZE))
      except ValueError as e:
        skipped.append(str(e))
        continue
      if size != (config.image_size, config.image_size):
        print(f"note: {path} is {size[1]}x{size[0]}; the network sees it at {config.image_size}x{config.image_size}")
      arrays.append(array)
      names.append(os.path.splitext(os.path.basename(path))[0])
    if not arrays:
      print(f"error: no readable images in {_IMAGES.value}", file=sys.stderr)
      return 2
    images = np.stack(arrays)
  elif _TEST.value:
    try:
      source = runs.dataset_source(config, build=build.build_config)
    except (FileNotFoundError, runs.RunError, build.DataBuildError) as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    batch = next(iter(input_pipeline.make_dataset(source, "test", _TEST.value, image_size=None,
                                                  shuffle=False, repeat=False, deterministic=True,
                                                  drop_remainder=False)))
    images = np.concatenate([batch["image0"].numpy(), batch["image1"].numpy()])
    names = [f"test{i:03d}_view{v}" for v in (0, 1) for i in range(len(batch["image0"]))]
  else:
    from keypointnet_datasets.shapenet_pairs import cameras  # pylint: disable=g-import-not-at-top
    from keypointnet_datasets.shapenet_pairs import rendering  # pylint: disable=g-import-not-at-top
    from keypointnet_datasets.shapenet_pairs import shapenet_pairs_dataset_builder as builder_lib  # pylint: disable=g-import-not-at-top
    job = {"mesh": {"kind": "procedural", "category": config.category, "index": _TURNTABLE.value,
                    "generator": _GENERATOR.value or builder_lib.generator_of(config.dataset_config)},
           "model_views": cameras.turntable(_FRAMES.value)}
    result = next(rendering.render_jobs([job], max(config.image_size, prediction.DISPLAY_SIZE), num_workers=1))
    if result["error"]:
      print(f"error: rendering failed: {result['error']}", file=sys.stderr)
      return 1
    images = result["images"].astype(np.float32) / 255.0
    names = [f"frame{i:03d}" for i in range(len(images))]
  pictures, _ = prediction.predict_pictures(predict, images, config.image_size)
  for name, picture in zip(names, pictures):
    prediction.save_picture(picture, os.path.join(_OUTPUT.value, f"{name}.png"))
  prediction.save_picture(visualization.contact_sheet(pictures), os.path.join(_OUTPUT.value, "contact_sheet.png"))
  if _TURNTABLE.value is not None:
    prediction.write_gif(pictures, os.path.join(_OUTPUT.value, "turntable.gif"))
  for message in skipped:
    print(f"skipped: {message}")
  print(f"Wrote {len(pictures)} pictures of {config_lib.method_name(config)} and contact_sheet.png to "
        f"{_OUTPUT.value}" + (f"; skipped {len(skipped)} unreadable file(s)." if skipped else "."))
  return 0


if __name__ == "__main__":
  app.run(main)
