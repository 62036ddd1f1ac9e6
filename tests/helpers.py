"""Helpers shared by the tests (pytest puts this folder on sys.path): random cameras as the paper renders them,
tiny data set configs, and folders of meshes written by the tests."""


import numpy as np
import trimesh

from keypointnet_datasets.shapenet_pairs import shapenet_pairs_dataset_builder as builder_lib

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


def tiny_config(**kwargs):
  defaults = dict(name="tiny", category="planes", image_size=32, pairs_per_model=2, num_models=(3, 1, 2))
  return builder_lib.ShapenetPairsConfig(**{**defaults, **kwargs})


def user_mesh_dir(root):
  """A folder tree of arrows (nose along +Z in the file, up +Y) in five formats, one corrupt and one empty file."""
  names = {}
  for i, ext in enumerate(["obj", "ply", "stl", "off", "glb", "obj"]):
    mesh = arrow([0.0, 0.0, 1.2 + 0.1 * i])
    relative = f"{'shelf' if i % 2 else 'box/inner'}/arrow{i}.{ext}"
    (root / relative).parent.mkdir(parents=True, exist_ok=True)
    mesh.export(root / relative)
    names[relative] = mesh
  (root / "box" / "broken.obj").write_text("v 1 2\nf 1 2 3 not an obj\n")
  (root / "shelf" / "empty.ply").write_text("")
  (root / "notes.txt").write_text("not a mesh")
  (root / "splits").mkdir()
  (root / "splits" / "test.txt").write_text("shelf/arrow1.ply\nbox/inner/arrow2.stl\n")
  (root / "splits" / "validation.txt").write_text("shelf/arrow3.off\n")
  return names


def arrow(nose):
  """A 2-long body with a pointed nose: the vertex farthest from the centre marks the front."""
  body = trimesh.creation.box(extents=[0.4, 0.3, 0.4])
  tip = np.asarray(nose, np.float64)
  cone = trimesh.creation.cone(radius=0.2, height=float(np.linalg.norm(tip)))
  cone.apply_transform(trimesh.geometry.align_vectors([0, 0, 1], tip / np.linalg.norm(tip)))
  return trimesh.util.concatenate([body, cone])
