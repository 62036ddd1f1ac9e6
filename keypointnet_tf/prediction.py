"""Prediction on image files: reading any PNG/JPEG into the model's input, and keypoint pictures on disk."""

import os

import numpy as np
from PIL import Image
import tensorflow as tf

from keypointnet_tf import model as model_lib
from keypointnet_tf import visualization

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def read_image(path, image_size):
  """Reads a PNG or JPEG (RGB or RGBA, any size) as the model's input.

  Args:
    path: str.
    image_size: int. Side of the square input; other sizes are resized (area averaging, aspect not kept).
  Returns:
    ([image_size, image_size, 4] float32 RGBA in [0, 1], (height, width) of the file).
  Raises:
    ValueError: the file cannot be decoded as an image.
  """
  try:
    with Image.open(path) as image:
      image = image.convert("RGBA")
      array = np.asarray(image, np.float32) / 255.0
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: not a readable PNG or JPEG image ({e})") from e
  return model_lib.network_input(array, image_size).numpy(), array.shape[:2]


def list_images(folder):
  """Sorted image paths (by extension) in a folder; raises FileNotFoundError for a missing folder."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"{folder} is not a folder.")
  return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                if name.lower().endswith(IMAGE_EXTENSIONS))


def save_picture(array, path):
  """Writes a [H, W, 3] float image in [0, 1] as PNG, upscaled to at least 256 px for viewing."""
  image = Image.fromarray((np.clip(array, 0, 1) * 255).astype(np.uint8))
  scale = max(1, 256 // max(image.size))
  if scale > 1:
    image = image.resize((image.size[0] * scale, image.size[1] * scale), Image.NEAREST)
  image.save(path)
  return image


DISPLAY_SIZE = 128  # Side (pixels) at least at which keypoints are drawn, so that people can tell the dots apart.


def predict_pictures(predict_fn, images, image_size=None, display_size=DISPLAY_SIZE, batch_size=32):
  """Runs the model in batches and draws the keypoints on pictures large enough to read.

  The network sees the images resized to `image_size` (area averaging, as in training); the keypoints (NDC,
  resolution-free) are drawn on the images resized to max(display_size, their side), so a 32 px input still
  gives a 128 px picture.
  Args:
    predict_fn: images [B, image_size, image_size, 4] -> dict with "uv" [B, K, 2].
    images: [N, S, S, 4] float32 in [0, 1], at any resolution S (the higher the sharper the pictures).
    image_size: int, the network's input side; None feeds the images as they are.
    display_size: int, the smallest side of the pictures.
  Returns:
    ([N, D, D, 3] pictures with D = max(display_size, S), [N, K, 2] uv).
  """
  side = images.shape[1]
  display = max(display_size, side)
  pictures, uvs = [], []
  for start in range(0, len(images), batch_size):
    chunk = tf.constant(images[start:start + batch_size], tf.float32)
    inputs = chunk if image_size is None else model_lib.network_input(chunk, image_size)
    uv = predict_fn(inputs)["uv"].numpy()
    shown = chunk if display == side else tf.image.resize(chunk, [display, display], method="bicubic")
    pictures.append(visualization.draw_keypoints_batch(np.clip(shown.numpy(), 0.0, 1.0), uv))
    uvs.append(uv)
  return np.concatenate(pictures), np.concatenate(uvs)


def write_gif(pictures, path, frame_ms=80):
  """Writes [N, H, W, 3] float pictures as a looping animated GIF."""
  frames = [Image.fromarray((np.clip(p, 0, 1) * 255).astype(np.uint8)) for p in pictures]
  scale = max(1, 256 // max(frames[0].size))
  frames = [f.resize((f.size[0] * scale, f.size[1] * scale), Image.NEAREST) for f in frames]
  frames[0].save(path, save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
