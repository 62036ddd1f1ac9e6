"""Camera sampling as the paper's render script."""

import numpy as np

from keypointnet_datasets.shapenet_pairs import cameras
from keypointnet_tf import geometry


def test_sample_pairs_upper_hemisphere_distance_and_shift():
  mv = cameras.sample_pairs(np.random.default_rng(0), 200)
  eyes = np.stack([geometry.camera_pose_from_model_view(m)[:3, 3] for m in mv.reshape(-1, 4, 4)])
  assert np.all(eyes[:, 1] >= 0)
  assert np.all(np.abs(np.linalg.norm(eyes, axis=1) - 30.0) < 0.2 * np.sqrt(3) + 1e-9)
  # Not re-aimed after the shift: the origin is slightly off the optical axis, by at most ~0.35 units.
  centre = np.einsum("bij,j->bi", mv.reshape(-1, 4, 4), [0, 0, 0, 1.0])
  offaxis = np.linalg.norm(centre[:, :2], axis=1)
  assert 0 < offaxis.max() < 0.35
  # Independent views: relative rotations are broadly spread (mean ~ 90 degrees for the hemisphere).
  angles = np.degrees(geometry.angular_distance(geometry.relative_rotation(mv[:, 0], mv[:, 1]),
                                                np.eye(3)[None]).numpy())
  assert 60 < angles.mean() < 120
