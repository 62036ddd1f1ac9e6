"""Helpers shared by the tests (pytest puts this folder on sys.path): random cameras as the paper renders them."""

import numpy as np

from keypointnet_tf import geometry


def random_cameras(rng, count, distance=30.0, jitter=0.0, max_roll=0.0):
  """Look-at cameras on the upper hemisphere, as the paper renders view pairs.

  Args:
    rng: np.random.Generator.
    count: int. Cameras to draw.
    distance: float. Distance of the eye from the object's origin.
    jitter: float. Uniform offset of the eye in each axis (camera shift), object units.
    max_roll: float. Uniform roll about the viewing axis in [-max_roll, max_roll], radians.
  Returns:
    [count, 4, 4] float64 object-to-camera matrices (geometry.look_at_model_view).
  """
  cameras = []
  for _ in range(count):
    direction = rng.normal(size=3)
    direction[1] = abs(direction[1])
    eye = distance * direction / np.linalg.norm(direction)
    if jitter:
      eye = eye + rng.uniform(-jitter, jitter, 3)
    roll = rng.uniform(-max_roll, max_roll) if max_roll else 0.0
    cameras.append(geometry.look_at_model_view(eye, roll=roll))
  return np.stack(cameras)
