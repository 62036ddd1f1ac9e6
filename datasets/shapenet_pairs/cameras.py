"""View-pair sampling of the paper's render script (tools/render.py, non-rotate mode; PAPER.md section 1.2).

For each pair: view directions drawn independently and uniformly on the upper hemisphere (object +Y up), the
camera placed at `distance` along each and aimed at the origin, an optional roll uniform in [-90, 90] degrees
about the viewing axis, then the camera position shifted by U(-shift, shift) per axis (resampled until it stays
on the upper hemisphere) *without* re-aiming. Matrices come from keypointnet_tf.geometry, which owns the
conventions.
"""

import math

import numpy as np

from keypointnet_tf import geometry


def _upper_hemisphere_direction(rng):
  direction = rng.normal(size=3)
  direction /= np.linalg.norm(direction)
  direction[1] = abs(direction[1])
  return direction


def _view(rng, distance, shift, roll):
  eye = distance * _upper_hemisphere_direction(rng)
  roll_angle = rng.uniform(-math.pi / 2, math.pi / 2) if roll else 0.0
  mv = geometry.look_at_model_view(eye, roll=roll_angle)
  while True:
    shifted = eye + rng.uniform(-shift, shift, size=3)
    if shifted[1] >= 0:
      break
  mv[:3, 3] = -mv[:3, :3] @ shifted  # same orientation, shifted position
  return mv


def sample_pairs(rng, num_pairs, distance=30.0, shift=0.2, roll=False):
  """Object-to-camera matrices for `num_pairs` view pairs.

  Args:
    rng: np.random.Generator.
    num_pairs: int.
    distance: float. Camera distance from the origin (30 in the paper).
    shift: float. Half-width of the uniform camera position jitter per axis (0.2).
    roll: bool. Whether to roll the camera about its viewing axis.
  Returns:
    [num_pairs, 2, 4, 4] float64: mv of view 0 and view 1 (column-vector convention, see geometry).
  """
  return np.array([[_view(rng, distance, shift, roll) for _ in range(2)] for _ in range(num_pairs)])


def turntable(num_frames, distance=30.0, elevation_degrees=45.0):
  """Cameras circling the object at a fixed elevation (render.py's -rotate mode: 45 degrees).

  Returns:
    [num_frames, 4, 4] float64 object-to-camera matrices.
  """
  elevation = math.radians(elevation_degrees)
  frames = []
  for t in np.linspace(0.0, 2.0 * math.pi, num_frames, endpoint=False):
    direction = np.array([math.cos(elevation) * math.sin(t), math.sin(elevation), -math.cos(elevation) * math.cos(t)])
    frames.append(geometry.look_at_model_view(distance * direction))
  return np.stack(frames)
