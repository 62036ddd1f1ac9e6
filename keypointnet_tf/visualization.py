"""Keypoint pictures: one fixed colour per keypoint index, so correspondences are visible across images."""

import colorsys

import numpy as np

from keypointnet_tf import geometry


def keypoint_colors(num_keypoints):
  """[K, 3] float in [0, 1]: evenly spaced saturated hues, the same for every image and run."""
  return np.array([colorsys.hsv_to_rgb(k / max(num_keypoints, 1), 0.9, 1.0) for k in range(num_keypoints)])


def draw_keypoints(image, uv, radius=None):
  """Draws filled discs with a dark outline at the keypoints.

  Args:
    image: [H, W, C] float in [0, 1] (C = 3 or 4; alpha is dropped).
    uv: [K, 2] float NDC keypoints.
    radius: disc radius in pixels (default: 3% of the image side, at least 1.5).
  Returns:
    [H, W, 3] float32 in [0, 1].
  """
  image = np.array(image[..., :3], np.float32, copy=True)
  height, width = image.shape[:2]
  radius = radius or max(1.5, 0.03 * max(height, width))
  rows, cols = np.mgrid[0:height, 0:width]
  pixels = geometry.pixel_from_ndc(np.asarray(uv, np.float64), height, width).numpy()
  for color, (x, y) in zip(keypoint_colors(len(uv)), pixels):
    distance = np.hypot(cols - x, rows - y)
    image[distance <= radius + 1.0] = 0.0
    image[distance <= radius] = color
  return image


def draw_keypoints_batch(images, uv):
  """[B, H, W, C] images and [B, K, 2] keypoints -> [B, H, W, 3] float32 pictures."""
  return np.stack([draw_keypoints(image, points) for image, points in zip(images, uv)])


def contact_sheet(pictures, columns=8):
  """Tiles [N, H, W, 3] pictures into one [rows * H, columns * W, 3] image (blank cells are black)."""
  pictures = np.asarray(pictures)
  count, height, width = pictures.shape[:3]
  columns = max(1, min(columns, count))
  rows = -(-count // columns)
  sheet = np.zeros((rows * height, columns * width, 3), pictures.dtype)
  for i, picture in enumerate(pictures):
    r, c = divmod(i, columns)
    sheet[r * height:(r + 1) * height, c * width:(c + 1) * width] = picture[..., :3]
  return sheet

