"""SavedModel export for TF Serving (Keras 3 ExportArchive); loading it needs TensorFlow only.

Signatures:
- serving_default(images: [N] string): PNG or JPEG bytes of any size, decoded (RGB; alpha is not used by the
  network) and resized to the model's input size inside the graph.
- predict_images(images: [N, H, W, 4] float32 RGBA in [0, 1]): resized inside the graph.
Outputs (both): uv [N, K, 2] NDC (u right, v up); uv_pixels [N, K, 2] (column, row) in the *input* image's
pixels (pixel centres at integers); z [N, K] camera depth (negative, ~ -camera_distance); xyz [N, K, 3] camera
space (OpenGL, looking down -Z), from the focal length baked in at export; orientation_flag [N] (1: the object's
+x axis points right).
"""

import keras
import tensorflow as tf

from keypointnet_tf import geometry
from keypointnet_tf import model as model_lib


def _outputs(net, images, sizes, focal):
  """Shared tail of both signatures. images: [N, S, S, 4] float; sizes: [N, 2] float original (H, W)."""
  out = net(images, training=False)
  uv = out["uv"]
  return {
      "uv": uv,
      "uv_pixels": geometry.pixel_from_ndc(uv, sizes[:, tf.newaxis, 0], sizes[:, tf.newaxis, 1]),
      "z": out["z"],
      "xyz": geometry.unproject(out["uvz"], focal),
      "orientation_flag": out["orientation_flag"],
  }


def export_saved_model(net, path, image_size, focal):
  """Writes a SavedModel with the two signatures above.

  Args:
    net: a built KeypointNet.
    path: output directory (must not exist or be empty).
    image_size: int. Side the model was trained at; inputs are resized to it.
    focal: float. NDC focal length of the training camera (22.90 for the paper's 5 degrees).
  The graph computes the dilated convolutions the Keras way (SpaceToBatch around Conv2D), which every TensorFlow
  build runs, TF Serving's included; the op's own dilations need oneDNN or a GPU. The weights are the same.
  """
  previous = net.dilated_conv
  net.set_implementation(dilated_conv="keras")
  try:
    _write_archive(net, path, image_size, focal)
  finally:
    net.set_implementation(dilated_conv=previous)


def _write_archive(net, path, image_size, focal):
  archive = keras.export.ExportArchive()
  archive.track(net)

  def decode_one(data):
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    image = model_lib.network_input(image, image_size)
    return tf.concat([image, tf.ones_like(image[..., :1])], axis=-1), size

  def serve_bytes(images):
    decoded, sizes = tf.map_fn(decode_one, images, fn_output_signature=(
        tf.TensorSpec([image_size, image_size, 4], tf.float32), tf.TensorSpec([2], tf.float32)))
    return _outputs(net, decoded, sizes, focal)

  def serve_float(images):
    shape = tf.shape(images)
    tf.debugging.assert_equal(shape[-1], 4, message="predict_images expects float32 RGBA images of shape "
                              "[N, H, W, 4] in [0, 1]; add an alpha channel (e.g. ones) to RGB images.")
    sizes = tf.cast(tf.tile(shape[tf.newaxis, 1:3], [shape[0], 1]), tf.float32)
    return _outputs(net, model_lib.network_input(images, image_size), sizes, focal)

  archive.add_endpoint("serving_default", serve_bytes,
                       input_signature=[tf.TensorSpec([None], tf.string, name="images")])
  archive.add_endpoint("predict_images", serve_float,
                       input_signature=[tf.TensorSpec([None, None, None, 4], tf.float32, name="images")])
  archive.write_out(path)
