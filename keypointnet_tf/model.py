"""KeypointNet: the orientation network and the keypoint network as one Keras 3 model.

Architecture of the released code (`../shared/PAPER.md` section 2): a 12-layer dilated 3x3 CNN at full
resolution (rates 1,1,2,4,8,16,1,2,4,8,16,1; conv without bias, batch norm without scale with momentum
0.999 and epsilon 1e-3, LeakyReLU 0.1), then 3x3 heads: K spatial-softmax heatmaps whose expectations
give (u, v) in NDC, and a depth map with a -camera_distance bias whose heatmap-weighted mean gives z.
The orientation network is the same backbone with half the filters and 2 spatial-softmax points (the NDC
projections of the object's +x and -x axis ends). The keypoint network sees RGB plus one constant channel
holding the binary orientation flag. The model computes no losses (see `losses.py`).

Heads and outputs are float32 even under a mixed-precision policy (softmax and expectations need it).
"""

import keras
import tensorflow as tf

from keypointnet_tf import geometry

DILATION_RATES = (1, 1, 2, 4, 8, 16, 1, 2, 4, 8, 16, 1)


@keras.saving.register_keras_serializable(package="keypointnet_tf")
class DilatedBackbone(keras.layers.Layer):
  """12 dilated 3x3 conv + batch norm (no scale) + LeakyReLU(0.1) layers at full resolution.

  Input [B, H, W, C] -> output [B, H, W, num_filters]. Receptive field 129 px (131 with a 3x3 head).
  """

  def __init__(self, num_filters, batch_norm_momentum=0.999, sync_batch_norm=False, **kwargs):
    super().__init__(**kwargs)
    self.num_filters = num_filters
    self.batch_norm_momentum = batch_norm_momentum
    self.sync_batch_norm = sync_batch_norm
    # Layers are attributes (conv0, bn0, ...), not list items: tf.train.Checkpoint does not follow Keras 3's
    # tracked lists, and checkpoints must hold every weight.
    for i, rate in enumerate(DILATION_RATES):
      setattr(self, f"conv{i}", keras.layers.Conv2D(num_filters, 3, padding="same", dilation_rate=rate,
                                                    use_bias=False, kernel_initializer="glorot_uniform",
                                                    name=f"conv{i}"))
      setattr(self, f"bn{i}", keras.layers.BatchNormalization(momentum=batch_norm_momentum, epsilon=1e-3,
                                                               scale=False, synchronized=sync_batch_norm,
                                                               name=f"bn{i}"))
    self.activation = keras.layers.LeakyReLU(negative_slope=0.1, name="leaky_relu")

  @property
  def convs(self):
    return [getattr(self, f"conv{i}") for i in range(len(DILATION_RATES))]

  @property
  def norms(self):
    return [getattr(self, f"bn{i}") for i in range(len(DILATION_RATES))]

  def build(self, input_shape):
    shape = tuple(input_shape)
    for conv, norm in zip(self.convs, self.norms):
      conv.build(shape)
      shape = conv.compute_output_shape(shape)
      norm.build(shape)
    self.built = True

  def call(self, x, training=False):
    for conv, norm in zip(self.convs, self.norms):
      x = self.activation(norm(conv(x), training=training))
    return x

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[:-1]) + (self.num_filters,)

  def get_config(self):
    return {**super().get_config(), "num_filters": self.num_filters,
            "batch_norm_momentum": self.batch_norm_momentum, "sync_batch_norm": self.sync_batch_norm}


def spatial_softmax(logits):
  """Per-channel softmax over all pixels, and each channel's expected NDC position.

  Args:
    logits: [B, H, W, C] float. One logit map per point.
  Returns:
    prob: [B, C, H, W] float32, each map summing to 1.
    uv: [B, C, 2] float32, expected (u, v) in NDC (v up).
  """
  logits = tf.cast(logits, tf.float32)
  shape = tf.shape(logits)
  height, width, channels = shape[1], shape[2], shape[3]
  flat = tf.reshape(tf.transpose(logits, [0, 3, 1, 2]), [shape[0], channels, height * width])  # [B, C, HW]
  prob = tf.reshape(tf.nn.softmax(flat, axis=-1), [shape[0], channels, height, width])  # [B, C, H, W]
  grid = tf.reshape(geometry.ndc_grid(height, width), [height * width, 2])  # [HW, 2]
  uv = tf.einsum("bcp,pd->bcd", tf.reshape(prob, [shape[0], channels, height * width]), grid)  # [B, C, 2]
  return prob, uv


@keras.saving.register_keras_serializable(package="keypointnet_tf")
class KeypointNet(keras.Model):
  """Predicts K ordered 3D keypoints (u, v, z) from one RGBA image, plus the orientation network's output.

  Args:
    num_keypoints: int > 0. K (10 in the paper).
    num_filters: int > 1. Width of the keypoint backbone; the orientation network uses num_filters // 2.
    camera_distance: float > 0. Depth bias: z_map = -camera_distance + conv_z (30 for the paper's renders).
    batch_norm_momentum: float in [0, 1). Moving-average decay of the batch norms (slim: 0.999).
    sync_batch_norm: bool. Batch statistics over all replicas of a tf.distribute strategy. False (the released
      code's behaviour: each of its 32 replicas normalised its own 8 pairs).
  """

  def __init__(self, num_keypoints=10, num_filters=64, camera_distance=30.0, batch_norm_momentum=0.999,
               sync_batch_norm=False, **kwargs):
    super().__init__(**kwargs)
    if int(num_keypoints) != num_keypoints or num_keypoints < 1:
      raise ValueError(f"num_keypoints must be a positive integer. Received: num_keypoints={num_keypoints}")
    if int(num_filters) != num_filters or num_filters < 2:
      raise ValueError(f"num_filters must be an integer >= 2. Received: num_filters={num_filters}")
    if not camera_distance > 0:
      raise ValueError(f"camera_distance must be positive. Received: camera_distance={camera_distance}")
    if not 0.0 <= batch_norm_momentum < 1.0:
      raise ValueError("batch_norm_momentum must be in [0, 1). "
                       f"Received: batch_norm_momentum={batch_norm_momentum}")
    self.num_keypoints = int(num_keypoints)
    self.num_filters = int(num_filters)
    self.camera_distance = float(camera_distance)
    self.batch_norm_momentum = float(batch_norm_momentum)
    self.sync_batch_norm = bool(sync_batch_norm)
    self.orientation_backbone = DilatedBackbone(self.num_filters // 2, batch_norm_momentum, self.sync_batch_norm,
                                                name="orientation_backbone")
    self.orientation_head = keras.layers.Conv2D(2, 3, padding="same", name="orientation_head")
    self.keypoint_backbone = DilatedBackbone(self.num_filters, batch_norm_momentum, self.sync_batch_norm,
                                             name="keypoint_backbone")
    self.uv_head = keras.layers.Conv2D(self.num_keypoints, 3, padding="same", name="uv_head")
    self.z_head = keras.layers.Conv2D(self.num_keypoints, 3, padding="same", name="z_head")

  @staticmethod
  def _check_images(shape):
    shape = tuple(shape)
    if len(shape) != 4 or shape[-1] != 4:
      raise ValueError("KeypointNet expects RGBA images of shape [batch, height, width, 4] with values in "
                       f"[0, 1]. Received: shape={shape}. Add an alpha channel (e.g. all ones) to RGB images "
                       "and a batch dimension to single images.")

  def build(self, input_shape):
    self._check_images(input_shape)
    rgb_shape = tuple(input_shape[:-1]) + (3,)
    self.orientation_backbone.build(rgb_shape)
    self.orientation_head.build(rgb_shape[:-1] + (self.num_filters // 2,))
    self.keypoint_backbone.build(tuple(input_shape))  # RGB + orientation flag channel
    self.uv_head.build(rgb_shape[:-1] + (self.num_filters,))
    self.z_head.build(rgb_shape[:-1] + (self.num_filters,))
    self.built = True

  def call(self, images, orientation_flag=None, flag_mix=1.0, training=False):
    """Runs both networks on a batch of images.

    Args:
      images: [B, H, W, 4] float RGBA in [0, 1], any H and W. Only RGB is fed to the networks.
      orientation_flag: optional [B] float, the ground-truth flag (1 where the object's +x axis points right).
        When None, the orientation network's predicted flag is used (inference).
      flag_mix: float or [] tensor in [0, 1]. When a flag is given, the keypoint network gets
        round(flag_mix * orientation_flag + (1 - flag_mix) * predicted) (round half to even, as tf.round in
        the code): 1 feeds the given flag, 0 the prediction. Training anneals it from 1 to 0.
      training: bool. Batch-norm mode.
    Returns:
      dict of float32 tensors: "uv" [B, K, 2] NDC; "z" [B, K] camera z (negative); "uvz" [B, K, 3];
      "prob" [B, K, H, W] heatmaps; "orientation" [B, 2, 2] NDC of the +x ([:, 0]) and -x ([:, 1]) axis
      ends; "orientation_flag" [B] the flag fed to the keypoint network; "predicted_orientation_flag" [B]
      the orientation network's flag, 1 where the +x end lies right of the -x end.
    """
    self._check_images(images.shape)
    rgb = images[..., :3]
    orientation_logits = self.orientation_head(self.orientation_backbone(rgb, training=training))
    _, orientation = spatial_softmax(orientation_logits)  # [B, 2, 2]
    predicted_flag = tf.stop_gradient(tf.cast(orientation[:, 0, 0] > orientation[:, 1, 0], tf.float32))
    if orientation_flag is None:
      flag = predicted_flag
    else:
      mix = tf.cast(flag_mix, tf.float32)
      flag = tf.round(mix * tf.cast(orientation_flag, tf.float32) + (1.0 - mix) * predicted_flag)
    flag_channel = tf.ones_like(rgb[..., :1]) * tf.cast(flag, rgb.dtype)[:, tf.newaxis, tf.newaxis, tf.newaxis]
    features = self.keypoint_backbone(tf.concat([rgb, flag_channel], axis=-1), training=training)
    prob, uv = spatial_softmax(self.uv_head(features))  # [B, K, H, W], [B, K, 2]
    z_map = tf.transpose(tf.cast(self.z_head(features), tf.float32), [0, 3, 1, 2]) - self.camera_distance
    z = tf.reduce_sum(prob * z_map, axis=[2, 3])  # [B, K]
    return {
        "uv": uv,
        "z": z,
        "uvz": tf.concat([uv, z[..., tf.newaxis]], axis=-1),
        "prob": prob,
        "orientation": orientation,
        "orientation_flag": flag,
        "predicted_orientation_flag": predicted_flag,
    }

  def get_config(self):
    return {**super().get_config(), "num_keypoints": self.num_keypoints, "num_filters": self.num_filters,
            "camera_distance": self.camera_distance, "batch_norm_momentum": self.batch_norm_momentum,
            "sync_batch_norm": self.sync_batch_norm}

  @classmethod
  def from_config(cls, config):
    return cls(**config)


def build_model(model_config, image_size=None):
  """Creates a KeypointNet from a `config.ModelConfig`; builds its weights when `image_size` is given."""
  model = KeypointNet(num_keypoints=model_config.num_keypoints, num_filters=model_config.num_filters,
                      camera_distance=model_config.camera_distance,
                      batch_norm_momentum=model_config.batch_norm_momentum,
                      sync_batch_norm=model_config.sync_batch_norm)
  if image_size is not None:
    model(tf.zeros([1, image_size, image_size, 4]))
  return model


def forward_flops(image_size, num_filters, num_keypoints):
  """Analytic FLOPs of one image's forward pass through KeypointNet (both networks).

  Counts 2 * H * W * 9 * C_in * C_out for every 3x3 convolution at full resolution: the keypoint backbone (RGB +
  flag in), its uv and depth heads, the orientation backbone (RGB in, half width) and its head. Batch norm,
  activations and the spatial softmax are left out (under 1% at the paper's sizes).
  """
  layers = len(DILATION_RATES)
  half = num_filters // 2
  channels = ([(4, num_filters)] + [(num_filters, num_filters)] * (layers - 1) + [(num_filters, 2 * num_keypoints)] +
              [(3, half)] + [(half, half)] * (layers - 1) + [(half, 2)])
  return sum(2 * image_size * image_size * 9 * c_in * c_out for c_in, c_out in channels)
