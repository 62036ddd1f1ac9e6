"""KeypointNet: the orientation network and the keypoint network as one Keras 3 model.

Architecture of the released code (research/keypointnet/main.py): a 12-layer dilated 3x3 CNN at full
resolution (rates 1,1,2,4,8,16,1,2,4,8,16,1; conv without bias, batch norm without scale with momentum
0.999 and epsilon 1e-3, LeakyReLU 0.1), then 3x3 heads: K spatial-softmax heatmaps whose expectations
give (u, v) in NDC, and a depth map with a -camera_distance bias whose heatmap-weighted mean gives z.
The orientation network is the same backbone with half the filters and 2 spatial-softmax points (the NDC
projections of the object's +x and -x axis ends). The keypoint network sees RGB plus one constant channel
holding the binary orientation flag. The model computes no losses (see `losses.py`).

Heads and outputs are float32 even under a mixed-precision policy (softmax and expectations need it).
"""

import functools

import keras
import tensorflow as tf

from keypointnet_tf import geometry

DILATION_RATES = (1, 1, 2, 4, 8, 16, 1, 2, 4, 8, 16, 1)

# How the dilated 3x3 convolutions are computed. All give the same outputs from the same weights (tests compare
# them with keras.layers.Conv2D(dilation_rate=...)); they differ in speed (bench/dilation_cost.py):
#   "keras":  keras.layers.Conv2D, i.e. tf.nn.convolution, which wraps every dilated convolution in
#             SpaceToBatch -> Conv2D -> BatchToSpace (it only passes dilations to the op on TPUs).
#   "native": the Conv2D op with its `dilations` attribute (oneDNN on x86 CPUs; XLA under jit_compile). Where the
#             op has no dilated kernel or gradient on the device (TensorFlow's Eigen CPU path), "auto" falls back
#             to "keras"; asking for "native" there raises.
#   "auto":   "native" where the device's op computes it with its gradient and no GPU is visible, else "keras"
#             (GPUs keep the path that was measured there).
# Taps that read nothing but zero padding (rate >= the image side) are skipped in every mode except "keras": at
# such a rate the dilated 3x3 is exactly a 1x1 convolution with the kernel's centre tap.
DILATED_CONV_IMPLS = ("auto", "keras", "native")


@functools.lru_cache(maxsize=None)
def native_dilation_supported():
  """True when the default device's Conv2D op computes a dilated convolution and its gradients (probed once)."""
  with tf.init_scope():  # eager, even when first called while a tf.function is traced (tapes are paused here,
    try:                 # so the gradient ops are called directly)
      image = tf.ones([1, 5, 5, 1])
      kernel = tf.ones([3, 3, 1, 1])
      dilations = [1, 2, 2, 1]
      out = tf.nn.conv2d(image, kernel, strides=1, padding="SAME", dilations=2)
      grad_kernel = tf.raw_ops.Conv2DBackpropFilter(input=image, filter_sizes=[3, 3, 1, 1], out_backprop=out,
                                                    strides=[1, 1, 1, 1], padding="SAME", dilations=dilations)
      grad_image = tf.raw_ops.Conv2DBackpropInput(input_sizes=[1, 5, 5, 1], filter=kernel, out_backprop=out,
                                                  strides=[1, 1, 1, 1], padding="SAME", dilations=dilations)
      # Centre pixel (2, 2) sees all 9 taps, corner (0, 0) four; the centre tap's kernel gradient is sum(out)
      # = 121; pixel (2, 2) is read by all 9 outputs on the rate-2 grid: 4 corners (4) + 4 edges (6) + centre (9).
      return bool(out[0, 2, 2, 0] == 9.0 and out[0, 0, 0, 0] == 4.0
                  and grad_kernel[1, 1, 0, 0] == 121.0 and grad_image[0, 2, 2, 0] == 49.0)
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError, tf.errors.NotFoundError):
      return False


def _check_dilated_conv(impl):
  if impl not in DILATED_CONV_IMPLS:
    raise ValueError(f"dilated_conv must be one of {DILATED_CONV_IMPLS}. Received: dilated_conv={impl!r}")


def resolve_dilated_conv(impl):
  """Maps "auto" to the implementation used on this machine; checks the name. Returns "keras" or "native"."""
  _check_dilated_conv(impl)
  if impl == "keras":
    return impl
  supported = native_dilation_supported()
  if impl == "native":
    if not supported:
      raise ValueError("dilated_conv='native' needs a Conv2D op with dilations and their gradient on this device "
                       "(TensorFlow's oneDNN CPU build, a GPU, or XLA); this one has none. Use "
                       "dilated_conv='auto' or 'keras'.")
    return impl
  return "native" if supported and not tf.config.list_physical_devices("GPU") else "keras"


def dilated_conv3x3(x, kernel, rate):
  """The 'same'-padded, stride-1 dilated 3x3 convolution through the Conv2D op's own dilations.

  Args:
    x: [B, H, W, C_in] float, static H and W.
    kernel: [3, 3, C_in, C_out], cast to x's dtype.
    rate: int >= 1, the dilation rate.
  Returns:
    [B, H, W, C_out]. Taps that fall outside the image for every pixel (rate >= H or W) are skipped: at rate >= H
    and >= W the result is the 1x1 convolution with kernel[1, 1].
  """
  kernel = tf.cast(kernel, x.dtype)
  height, width = x.shape[1], x.shape[2]
  rows = slice(1, 2) if height is not None and rate >= height else slice(0, 3)
  cols = slice(1, 2) if width is not None and rate >= width else slice(0, 3)
  kernel = kernel[rows, cols]
  if kernel.shape[0] == 1 and kernel.shape[1] == 1:
    return tf.nn.conv2d(x, kernel, strides=1, padding="VALID")
  if kernel.shape[0] == 1 or kernel.shape[1] == 1:  # 1x3 or 3x1 taps: dilate along the other axis only
    dilations = [1, 1 if kernel.shape[0] == 1 else rate, 1 if kernel.shape[1] == 1 else rate, 1]
    return tf.nn.conv2d(x, kernel, strides=1, padding="SAME", dilations=dilations)
  return tf.nn.conv2d(x, kernel, strides=1, padding="SAME", dilations=rate)


@keras.saving.register_keras_serializable(package="keypointnet_tf")
class DilatedBackbone(keras.layers.Layer):
  """12 dilated 3x3 conv + batch norm (no scale) + LeakyReLU(0.1) layers at full resolution.

  Input [B, H, W, C] -> output [B, H, W, num_filters]. Receptive field 129 px (131 with a 3x3 head).
  The weights live in keras.layers.Conv2D layers whatever `dilated_conv` (see DILATED_CONV_IMPLS) computes them
  with, so checkpoints do not depend on it.
  """

  def __init__(self, num_filters, batch_norm_momentum=0.999, sync_batch_norm=False, dilated_conv="auto",
               fused_batch_norm=True, **kwargs):
    super().__init__(**kwargs)
    _check_dilated_conv(dilated_conv)
    self.num_filters = num_filters
    self.dilated_conv = dilated_conv
    self.fused_batch_norm = bool(fused_batch_norm)
    self._impl = None  # resolved at build time
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
    self._impl = resolve_dilated_conv(self.dilated_conv)
    shape = tuple(input_shape)
    for conv, norm in zip(self.convs, self.norms):
      conv.build(shape)
      shape = conv.compute_output_shape(shape)
      norm.build(shape)
    self.built = True

  def set_implementation(self, dilated_conv=None, fused_batch_norm=None):
    """Switches how the layers are computed (None: unchanged); same weights. Affects functions traced later."""
    if dilated_conv is not None:
      self._impl = resolve_dilated_conv(dilated_conv)
      self.dilated_conv = dilated_conv
    if fused_batch_norm is not None:
      self.fused_batch_norm = bool(fused_batch_norm)

  def call(self, x, training=False):
    for conv, norm in zip(self.convs, self.norms):
      rate = conv.dilation_rate[0]
      if rate == 1 or self._impl == "keras":
        x = conv(x)
      else:
        x = dilated_conv3x3(x, conv.kernel, rate)
      if self.fused_batch_norm and not self.sync_batch_norm and x.dtype == tf.float32:
        x = batch_norm_fused(norm, x, training)
      else:
        x = norm(x, training=training)
      x = self.activation(x)
    return x

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[:-1]) + (self.num_filters,)

  def get_config(self):
    return {**super().get_config(), "num_filters": self.num_filters,
            "batch_norm_momentum": self.batch_norm_momentum, "sync_batch_norm": self.sync_batch_norm,
            "dilated_conv": self.dilated_conv, "fused_batch_norm": self.fused_batch_norm}


def batch_norm_fused(norm, x, training):
  """What `norm(x, training=training)` computes, through TensorFlow's single fused batch-norm kernel.

  For a keras.layers.BatchNormalization over the last axis with center=True and scale=False. In training mode
  (when `norm` is trainable, as Keras does) it normalises with the batch's mean and biased variance and moves the
  moving statistics exactly as Keras does (the kernel's Bessel-corrected variance is corrected back). Otherwise it
  normalises with the moving statistics.
  Args:
    norm: a built keras.layers.BatchNormalization (scale=False).
    x: [B, H, W, C] float32.
    training: bool.
  Returns:
    [B, H, W, C] float32.
  """
  ones = tf.ones([x.shape[-1]], x.dtype)
  beta = tf.convert_to_tensor(norm.beta)
  if training and norm.trainable:
    empty = tf.zeros([0], x.dtype)
    y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=x, scale=ones, offset=beta, mean=empty, variance=empty, epsilon=norm.epsilon, data_format="NHWC",
        is_training=True)
    shape = tf.shape(x)
    count = tf.cast(shape[0] * shape[1] * shape[2], x.dtype)
    variance = tf.stop_gradient(variance) * (count - 1.0) / count  # biased, as keras.ops.moments
    mean = tf.stop_gradient(mean)
    momentum = norm.momentum
    norm.moving_mean.assign(norm.moving_mean * momentum + mean * (1.0 - momentum))
    norm.moving_variance.assign(norm.moving_variance * momentum + variance * (1.0 - momentum))
    return y
  y, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
      x=x, scale=ones, offset=beta, mean=tf.convert_to_tensor(norm.moving_mean),
      variance=tf.convert_to_tensor(norm.moving_variance), epsilon=norm.epsilon, data_format="NHWC",
      is_training=False)
  return y


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
    dilated_conv: "auto", "keras" or "native": how the backbones compute their dilated convolutions (same
      network and weights, different speed; see DILATED_CONV_IMPLS).
    fused_batch_norm: bool. Compute the backbones' float32, per-replica batch norms with TensorFlow's fused
      kernel (`batch_norm_fused`; same results and moving statistics as the Keras layer, faster).
  """

  def __init__(self, num_keypoints=10, num_filters=64, camera_distance=geometry.PAPER_CAMERA_DISTANCE,
               batch_norm_momentum=0.999,
               sync_batch_norm=False, dilated_conv="auto", fused_batch_norm=True, **kwargs):
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
    self.dilated_conv = dilated_conv
    self.fused_batch_norm = bool(fused_batch_norm)
    self.orientation_backbone = DilatedBackbone(self.num_filters // 2, batch_norm_momentum, self.sync_batch_norm,
                                                dilated_conv, self.fused_batch_norm, name="orientation_backbone")
    self.orientation_head = keras.layers.Conv2D(2, 3, padding="same", name="orientation_head")
    self.keypoint_backbone = DilatedBackbone(self.num_filters, batch_norm_momentum, self.sync_batch_norm,
                                             dilated_conv, self.fused_batch_norm, name="keypoint_backbone")
    self.uv_head = keras.layers.Conv2D(self.num_keypoints, 3, padding="same", name="uv_head")
    self.z_head = keras.layers.Conv2D(self.num_keypoints, 3, padding="same", name="z_head")

  def set_implementation(self, dilated_conv=None, fused_batch_norm=None):
    """Switches how both backbones are computed (see DILATED_CONV_IMPLS; None: unchanged); same weights."""
    for backbone in (self.orientation_backbone, self.keypoint_backbone):
      backbone.set_implementation(dilated_conv, fused_batch_norm)
    if dilated_conv is not None:
      self.dilated_conv = dilated_conv
    if fused_batch_norm is not None:
      self.fused_batch_norm = bool(fused_batch_norm)

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
            "sync_batch_norm": self.sync_batch_norm, "dilated_conv": self.dilated_conv,
            "fused_batch_norm": self.fused_batch_norm}

  @classmethod
  def from_config(cls, config):
    return cls(**config)


def network_input(images, image_size):
  """Images of any size as the network takes them: the one resize used by training, prediction and serving.

  Args:
    images: [..., H, W, C] uint8 (scaled by 1/255) or float in [0, 1]; C = 4 (RGBA) for the network.
    image_size: int S, the side the model was trained at.
  Returns:
    [..., S, S, C] float32 in [0, 1]: area averaging with antialiasing (the aspect ratio is not kept); images that
    already have the size come back unchanged.
  """
  images = tf.image.convert_image_dtype(images, tf.float32)
  if images.shape[-3] == image_size and images.shape[-2] == image_size:
    return images
  return tf.image.resize(images, [image_size, image_size], method="area", antialias=True)


def build_model(model_config, image_size=None):
  """Creates a KeypointNet from a `config.ModelConfig`; builds its weights when `image_size` is given."""
  model = KeypointNet(num_keypoints=model_config.num_keypoints, num_filters=model_config.num_filters,
                      camera_distance=model_config.camera_distance,
                      batch_norm_momentum=model_config.batch_norm_momentum,
                      sync_batch_norm=model_config.sync_batch_norm, dilated_conv=model_config.dilated_conv,
                      fused_batch_norm=model_config.fused_batch_norm)
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
