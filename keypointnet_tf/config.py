"""Configuration objects holding the released code's defaults.

Every default here is the value used by the released TF1 code (research/keypointnet/main.py); see
`../shared/PAPER.md` sections 2-4. The objects are frozen dataclasses: derive variants with
`dataclasses.replace`, never by mutation.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Network size."""

  num_keypoints: int = 10  # N, keypoints predicted per image (code: --num_kp).
  num_filters: int = 64  # Channels of every keypoint-network conv; the orientation net uses half.
  camera_distance: float = 30.0  # Fixed depth bias: z_map = -camera_distance + conv_z.
  batch_norm_momentum: float = 0.999  # slim.batch_norm decay.


@dataclasses.dataclass(frozen=True)
class LossWeights:
  """Weights of the six loss terms (main.py: loss_pose etc.)."""

  pose: float = 0.2  # Angular relative-pose loss through the SVD.
  consistency: float = 1.0  # Multi-view reprojection consistency.
  separation: float = 1.0  # Hinge on squared keypoint distances.
  silhouette: float = 1.0  # -log probability mass on the object mask.
  orientation: float = 1.0  # MSE of the orientation network's +-x axis ends.
  variance: float = 0.5  # Spread of each keypoint's heatmap ("part of silhouette loss").


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Everything `losses.total_loss` needs besides tensors."""

  weights: LossWeights = LossWeights()
  separation_delta: float = 0.05  # Threshold on the *squared* distance (min distance ~0.224 units).
  pose_noise_stddev: float = 0.1  # Gaussian noise (object units) added to both keypoint sets.
