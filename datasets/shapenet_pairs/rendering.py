"""Headless pyrender rendering of view pairs, in parallel worker processes.

This is the only module that imports pyrender. Backend: EGL by default (Mesa's llvmpipe on a CPU-only machine,
the GPU's EGL driver where there is one); set PYOPENGL_PLATFORM=osmesa before the first import to use OSMesa
instead (needs Debian's libosmesa6 and PyOpenGL 3.1.10; OSMesa returns RGB only, so alpha is taken from
depth > 0).

Camera: the paper's render script's (docs/conventions.md): a perspective camera with a 5 degree field of view
whose pose is the inverse of the stored object-to-camera matrix `mv` (conventions in keypointnet_tf.geometry;
this module only inverts the rigid matrix). Lighting (LIGHTINGS): "directional", a directional light from above
(+Y, the object frame's up) plus ambient on flat-shaded faces through pyrender's own shader; or "hemisphere", the
paper's (its Blender script: one hemisphere lamp from above, energy 1, diffuse only, smooth shading), through the
fragment shader _HEMISPHERE_FRAG. Background: black and transparent, or with a job's "appearance_seed" a random
one in RGB (alpha stays the mask), with random object colours and a random directional light (appearance.py).
Output RGBA uint8 and depth (positive distance along the viewing axis, 0 on the background).
"""

import itertools
import math
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import numpy as np  # pylint: disable=g-import-not-at-top
import pyrender  # pylint: disable=g-import-not-at-top

from keypointnet_datasets.shapenet_pairs import appearance  # pylint: disable=g-import-not-at-top
from keypointnet_datasets.shapenet_pairs import meshes  # pylint: disable=g-import-not-at-top

# Near and far planes around the camera distance of 30 (objects fit in a unit-radius-ish ball).
_ZNEAR, _ZFAR = 20.0, 40.0
LIGHTINGS = ("directional", "hemisphere")

# pyrender's flat shader with the paper's lighting: Blender's hemisphere lamp lights a surface of albedo a and unit
# normal n (interpolated across the face: smooth shading) with energy * a * (0.5 + 0.5 * dot(n, up)), here with up
# = +Y and energy 1, in linear colour (albedo decoded from sRGB, the result encoded back); nothing specular.
_HEMISPHERE_FRAG = """#version 330 core
struct Material {
    vec3 emissive_factor;
#ifdef USE_METALLIC_MATERIAL
    vec4 base_color_factor;
    float metallic_factor;
    float roughness_factor;
#endif
#ifdef USE_GLOSSY_MATERIAL
    vec4 diffuse_factor;
    vec3 specular_factor;
    float glossiness_factor;
#endif
#ifdef HAS_BASE_COLOR_TEX
    sampler2D base_color_texture;
#endif
#ifdef HAS_DIFFUSE_TEX
    sampler2D diffuse_texture;
#endif
};
uniform Material material;
in vec3 frag_position;
#ifdef NORMAL_LOC
in vec3 frag_normal;
#endif
#ifdef TEXCOORD_0_LOC
in vec2 uv_0;
#endif
#ifdef COLOR_0_LOC
in vec4 color_multiplier;
#endif
out vec4 frag_color;

vec3 srgb_to_linear(vec3 c) {
    return mix(c / 12.92, pow((c + 0.055) / 1.055, vec3(2.4)), step(vec3(0.04045), c));
}
vec3 linear_to_srgb(vec3 c) {
    return mix(c * 12.92, 1.055 * pow(c, vec3(1.0 / 2.4)) - 0.055, step(vec3(0.0031308), c));
}

void main() {
    vec4 albedo = vec4(1.0);
#ifdef USE_METALLIC_MATERIAL
    albedo = material.base_color_factor;
#endif
#ifdef USE_GLOSSY_MATERIAL
    albedo = material.diffuse_factor;
#endif
#ifdef HAS_BASE_COLOR_TEX
    albedo *= texture(material.base_color_texture, uv_0);
#endif
#ifdef HAS_DIFFUSE_TEX
    albedo *= texture(material.diffuse_texture, uv_0);
#endif
#ifdef COLOR_0_LOC
    albedo *= color_multiplier;
#endif
    float light = 1.0;
#ifdef NORMAL_LOC
    light = 0.5 + 0.5 * normalize(frag_normal).y;
#endif
    vec3 lit = srgb_to_linear(clamp(albedo.rgb, 0.0, 1.0)) * light;
    frag_color = vec4(linear_to_srgb(clamp(lit, 0.0, 1.0)), 1.0);
}
"""


def _shader_dir():
  """A folder with pyrender's shaders, its flat fragment shader replaced by _HEMISPHERE_FRAG."""
  target = tempfile.mkdtemp(prefix="kpnet_shaders_")
  source = os.path.join(os.path.dirname(pyrender.__file__), "shaders")
  for name in os.listdir(source):
    shutil.copy(os.path.join(source, name), target)
  with open(os.path.join(target, "flat.frag"), "w") as f:
    f.write(_HEMISPHERE_FRAG)
  return target


def smooth_mesh(mesh):
  """A pyrender.Mesh of `mesh` with interpolated vertex normals (smooth shading) and its colours kept per face.

  pyrender cannot smooth a mesh with face colours (each part of a procedural object has its own), so every face
  gets its own three vertices carrying the shared vertices' normals and the face's colour.
  """
  if mesh.visual.kind != "face":
    return pyrender.Mesh.from_trimesh(mesh, smooth=True)
  corners = np.asarray(mesh.faces).reshape(-1)
  primitive = pyrender.Primitive(
      positions=np.asarray(mesh.vertices, np.float32)[corners],
      normals=np.asarray(mesh.vertex_normals, np.float32)[corners],
      color_0=np.repeat(np.asarray(mesh.visual.face_colors, np.float32) / 255.0, 3, axis=0),
      indices=np.arange(len(corners), dtype=np.uint32).reshape(-1, 3),
      material=pyrender.MetallicRoughnessMaterial(baseColorFactor=[1.0, 1.0, 1.0, 1.0]))
  return pyrender.Mesh(primitives=[primitive])


def _light_pose(direction):
  """[4, 4] pose of a pyrender light (which shines along its local -Z) shining along `direction`."""
  z = -np.asarray(direction, np.float64) / np.linalg.norm(direction)
  helper = np.array([1.0, 0, 0]) if abs(z[0]) < 0.9 else np.array([0, 0, 1.0])
  x = np.cross(helper, z)
  x /= np.linalg.norm(x)
  pose = np.eye(4)
  pose[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
  return pose


class RenderingError(RuntimeError):
  """Rendering cannot run here (no EGL, a worker died); the message says what to install."""


# The paper's field of view: keypointnet_tf.geometry.PAPER_FOV_DEGREES (the owner of the camera conventions),
# written out here because importing geometry would load TensorFlow into the rendering workers (a test checks that
# the two agree).
PAPER_FOV_DEGREES = 5.0


class Renderer:
  """One OpenGL context rendering square RGBA images.

  Args:
    image_size: int. Output side in pixels (128 in the paper).
    fov_degrees: float. Field of view (5 in the paper); the NDC focal length is cot(fov / 2).
  """

  def __init__(self, image_size, fov_degrees=PAPER_FOV_DEGREES):
    if "tensorflow" in sys.modules:
      raise RuntimeError("Renderer cannot run in a process that imported TensorFlow (Mesa's EGL and TensorFlow "
                         "crash together); use render_jobs, which renders in worker processes.")
    self.image_size = int(image_size)
    self.fov_degrees = float(fov_degrees)
    self._renderer = pyrender.OffscreenRenderer(self.image_size, self.image_size)
    self._rgba_supported = os.environ.get("PYOPENGL_PLATFORM") != "osmesa"
    self._shaders = None

  def _use_hemisphere_shader(self):
    if self._shaders is None:
      from pyrender import shader_program  # pylint: disable=g-import-not-at-top
      self._shaders = _shader_dir()
      gl_renderer = self._renderer._renderer  # pylint: disable=protected-access
      gl_renderer._program_cache = shader_program.ShaderProgramCache(self._shaders)  # pylint: disable=protected-access

  def render(self, mesh, model_view, lighting="directional", light=None):
    """Renders one view.

    Args:
      mesh: trimesh.Trimesh in object space (face or vertex colours).
      model_view: [4, 4] float, object-to-camera matrix (column vectors).
      lighting: one of LIGHTINGS (module docstring).
      light: optional dict from appearance.random_light, replacing the directional lighting's fixed light from
        above and its ambient level ("directional" lighting only).
    Returns:
      rgba: [S, S, 4] uint8, black transparent background.
      depth: [S, S] float32, distance along the viewing axis (positive), 0 where nothing was hit.
    """
    if lighting not in LIGHTINGS:
      raise ValueError(f"lighting must be one of {LIGHTINGS}. Received: {lighting!r}")
    if light is not None and lighting != "directional":
      raise ValueError(f"A random light replaces the directional lighting's light; lighting={lighting!r} has none.")
    ambient = 0.35 if light is None else light["ambient"]
    scene = pyrender.Scene(bg_color=[0.0, 0.0, 0.0, 0.0], ambient_light=[ambient] * 3)
    camera = pyrender.PerspectiveCamera(yfov=math.radians(self.fov_degrees), aspectRatio=1.0, znear=_ZNEAR,
                                        zfar=_ZFAR)
    scene.add(camera, pose=np.linalg.inv(np.asarray(model_view, np.float64)))
    flags = pyrender.RenderFlags.RGBA if self._rgba_supported else pyrender.RenderFlags.NONE
    if lighting == "hemisphere":
      self._use_hemisphere_shader()
      scene.add(smooth_mesh(mesh))
      flags |= pyrender.RenderFlags.FLAT  # the flat shader path, which is _HEMISPHERE_FRAG here
    else:
      scene.add(pyrender.Mesh.from_trimesh(mesh, smooth=False))
      if light is None:
        light_pose = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], np.float64)  # -Z -> -Y
        scene.add(pyrender.DirectionalLight(color=np.ones(3), intensity=3.0), pose=light_pose)
      else:
        scene.add(pyrender.DirectionalLight(color=light["color"], intensity=light["intensity"]),
                  pose=_light_pose(light["direction"]))
    color, depth = self._renderer.render(scene, flags=flags)
    if color.shape[-1] == 3:
      alpha = np.where(depth > 0, 255, 0).astype(np.uint8)[..., np.newaxis]
      color = np.concatenate([color, alpha], axis=-1)
    color = color.copy()
    color[..., :3][color[..., 3] == 0] = 0  # keep the background black where it is transparent
    return color, depth.astype(np.float32)

  def close(self):
    self._renderer.delete()
    if self._shaders:
      shutil.rmtree(self._shaders, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------
# Parallel rendering in worker processes. A job renders all views of one mesh: {"mesh": mesh spec (see
# meshes.load), "model_views": [V, 4, 4], optional "return_depth": bool, optional "lighting": one of LIGHTINGS,
# optional "appearance_seed": int (randomised object colours, light and background per view: appearance.py)}.
# Its result is {"images": [V, S, S, 4] uint8, "keypoints": [K, 3] float32, "error": None, "keypoint_valid": [K] bool
# when some keypoints are missing (human annotations), and "depths": [V, S, S]
# float32 when asked}, or
# {"error": "message"} when the mesh failed to load or render.
#
# Workers are separate Python processes (`python -m keypointnet_datasets.shapenet_pairs.rendering`) that never
# import TensorFlow: Mesa's EGL/llvmpipe and TensorFlow in one process crash with a segmentation fault (both
# carry LLVM), and multiprocessing's spawn would re-import the parent's main module (the tfds CLI imports
# TensorFlow). Jobs and results travel as length-prefixed pickles over the workers' stdin and stdout.
# ----------------------------------------------------------------------------------------------------------


def _run_job(renderer, job):
  try:
    loaded = meshes.load(job["mesh"])
    lighting = job.get("lighting", "directional")
    if job.get("appearance_seed") is None:
      views = [renderer.render(loaded.mesh, mv, lighting) for mv in job["model_views"]]
    else:
      rng = np.random.default_rng(job["appearance_seed"])
      mesh = appearance.recolour(loaded.mesh, rng)
      views = []
      for mv in job["model_views"]:
        rgba, depth = renderer.render(mesh, mv, lighting, appearance.random_light(rng))
        views.append((appearance.composite(rgba, appearance.random_background(rng, renderer.image_size)), depth))
    images = np.stack([image for image, _ in views])
    if not np.any(images[..., 3]):
      raise ValueError("every view rendered empty (is the mesh degenerate or far from the origin?)")
    result = {"images": images, "keypoints": loaded.keypoints, "error": None}
    if loaded.keypoint_valid is not None:
      result["keypoint_valid"] = loaded.keypoint_valid
    if job.get("return_depth"):
      result["depths"] = np.stack([depth for _, depth in views])
    return result
  except Exception as e:  # pylint: disable=broad-except
    return {"error": f"{type(e).__name__}: {e}"}


def _write_message(stream, obj):
  data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
  stream.write(struct.pack("<Q", len(data)))
  stream.write(data)
  stream.flush()


def _read_message(stream):
  header = stream.read(8)
  if len(header) < 8:
    return None
  (size,) = struct.unpack("<Q", header)
  return pickle.loads(stream.read(size))


def _worker_main():
  """Worker loop: the first message is (image_size, fov_degrees), then one job per message until EOF."""
  stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
  sys.stdout = sys.stderr  # anything printed by libraries must not corrupt the result stream
  image_size, fov_degrees = _read_message(stdin)
  try:
    renderer = Renderer(image_size, fov_degrees)
  except Exception as e:  # pylint: disable=broad-except  (any failure to get a GL context: one line, no traceback)
    print(f"rendering worker: cannot create an OpenGL context with PYOPENGL_PLATFORM="
          f"{os.environ.get('PYOPENGL_PLATFORM')} ({type(e).__name__}: {e})", file=sys.stderr, flush=True)
    sys.exit(1)
  while (job := _read_message(stdin)) is not None:
    _write_message(stdout, _run_job(renderer, job))


def _start_worker(image_size, fov_degrees):
  """A rendering worker process, configured; its first message (image_size, fov_degrees) already sent."""
  env = dict(os.environ, PYOPENGL_PLATFORM=os.environ["PYOPENGL_PLATFORM"])
  worker = subprocess.Popen([sys.executable, "-m", "keypointnet_datasets.shapenet_pairs.rendering"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
  _write_message(worker.stdin, (image_size, fov_degrees))
  return worker


def _worker_died(worker):
  return RenderingError(f"Rendering worker exited with code {worker.wait()} (see its messages above). "
                        "Headless rendering needs Mesa's EGL: apt-get install -y libegl1 libegl-mesa0 "
                        "libgl1-mesa-dri (bash install.sh does this), with PYOPENGL_PLATFORM=egl (the default).")


def _stop_workers(workers):
  for worker in workers:
    try:
      worker.stdin.close()
    except OSError:
      pass
  for worker in workers:
    try:
      worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
      worker.kill()


class RenderWorker:
  """One rendering worker process that renders one job at a time (for Apache Beam's DoFns).

  Args:
    image_size: int. Output side in pixels.
    fov_degrees: float. Field of view.
  """

  def __init__(self, image_size, fov_degrees=PAPER_FOV_DEGREES):
    self._worker = _start_worker(image_size, fov_degrees)

  def render(self, job):
    """The result of one job (see above); raises RenderingError when the worker has died."""
    _write_message(self._worker.stdin, job)
    result = _read_message(self._worker.stdout)
    if result is None:
      raise _worker_died(self._worker)
    return result

  def close(self):
    _stop_workers([self._worker])


def render_jobs(jobs, image_size, fov_degrees=PAPER_FOV_DEGREES, num_workers=None):
  """Renders jobs in worker processes and yields their results in job order.

  Args:
    jobs: iterable of job dicts (see above).
    image_size: int. Output side in pixels.
    fov_degrees: float. Field of view.
    num_workers: int or None. Worker processes; None uses every CPU core.
  """
  num_workers = max(1, num_workers or os.cpu_count() or 1)
  workers = [_start_worker(image_size, fov_degrees) for _ in range(num_workers)]
  try:
    jobs = iter(jobs)
    sent = 0
    # Job i goes to worker i % num_workers; two jobs in flight per worker keep every worker busy.
    for _ in range(2 * num_workers):
      job = next(jobs, None)
      if job is None:
        break
      _write_message(workers[sent % num_workers].stdin, job)
      sent += 1
    for received in itertools.count():
      if received == sent:
        return
      worker = workers[received % num_workers]
      result = _read_message(worker.stdout)
      if result is None:
        raise _worker_died(worker)
      job = next(jobs, None)
      if job is not None:
        _write_message(worker.stdin, job)
        sent += 1
      yield result
  finally:
    _stop_workers(workers)


if __name__ == "__main__":
  _worker_main()
