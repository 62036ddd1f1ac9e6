"""Mesh sources: procedural instances, or ShapeNetCore OBJ files, loaded into the common object frame.

A mesh spec is a small picklable dict (it travels to rendering workers):
- {"kind": "procedural", "category": "planes", "index": 17, "generator": 2} ("generator": procedural.GENERATORS;
  1 when left out; optional "deformation": one of procedural.DEFORMATIONS with its "amount")
- {"kind": "shapenet", "path": ".../model_normalized.obj", "version": 2, "scale": 1.0}
- {"kind": "file", "path": "/data/mugs/a/mug.ply", "front": "+x", "up": "+y", "scale": 1.0}: a user's mesh
  (any format trimesh reads: MESH_EXTENSIONS) whose front and up point along the given axes of its file

Object frame (the one the paper's released data used, ShapeNetCore v1's): +Y up, front along +X. ShapeNetCore
v2's OBJs face -Z instead, so v2 meshes are turned -90 degrees about +Y (-Z -> +X); v1 meshes are used as
they are. Both are then normalised like the paper's Blender script: bounding-box centre at the origin and
longest side 2 * scale.
"""

import dataclasses
import math

import numpy as np
import trimesh

from keypointnet_datasets.shapenet_pairs import procedural

# ShapeNetCore v2 (front -Z) to the v1 / paper frame (front +X): rotation by -90 degrees about +Y.
V2_TO_V1 = trimesh.transformations.rotation_matrix(-math.pi / 2, [0.0, 1.0, 0.0])
# File formats of user meshes (config field mesh_dir); .obj, .glb/.gltf, .ply, .stl and .off.
MESH_EXTENSIONS = (".obj", ".glb", ".gltf", ".ply", ".stl", ".off")
AXES = {"+x": (1, 0, 0), "-x": (-1, 0, 0), "+y": (0, 1, 0), "-y": (0, -1, 0), "+z": (0, 0, 1), "-z": (0, 0, -1)}


def axes_to_object_frame(front, up):
  """The rotation taking a file's `front` axis to +X and its `up` axis to +Y (the object frame).

  Args:
    front, up: keys of AXES ("+x", "-z", ...), perpendicular to each other.
  Returns:
    [4, 4] float64 homogeneous rotation (column vectors), determinant +1.
  Raises:
    ValueError: an unknown or non-perpendicular pair, with the accepted values.
  """
  if front not in AXES or up not in AXES:
    raise ValueError(f"front and up axes must each be one of {sorted(AXES)}. Received: front={front!r}, up={up!r}")
  f, u = np.array(AXES[front], np.float64), np.array(AXES[up], np.float64)
  if abs(f @ u) > 0:
    raise ValueError(f"The front axis {front} and the up axis {up} must be perpendicular.")
  rotation = np.eye(4)
  rotation[:3, :3] = np.stack([f, u, np.cross(f, u)])  # rows: where +X, +Y, +Z of the object frame come from
  return rotation


@dataclasses.dataclass
class LoadedMesh:
  mesh: trimesh.Trimesh  # normalised, object frame
  keypoints: np.ndarray  # [K, 3] float32 ground truth in the same frame; [0, 3] when there is none
  keypoint_valid: np.ndarray = None  # [K] bool; None: all valid


def load(spec):
  """Loads a mesh spec (see module docstring). Raises ValueError with the path for unusable files."""
  if spec["kind"] == "procedural":
    obj = procedural.generate(spec["category"], spec["index"], spec.get("generator", 1))
    if spec.get("deformation", "none") != "none":
      return LoadedMesh(*procedural.deform(obj.mesh, obj.keypoints, spec["deformation"], spec["amount"]))
    return LoadedMesh(obj.mesh, obj.keypoints)
  if spec["kind"] not in ("shapenet", "file"):
    raise ValueError(f"Unknown mesh spec kind {spec['kind']!r}.")
  path = spec["path"]
  try:
    mesh = trimesh.load(path, force="mesh", process=False)
  except Exception as e:  # pylint: disable=broad-except  (trimesh raises many kinds for unreadable files)
    raise ValueError(f"{path}: cannot be read as a mesh ({type(e).__name__}: {e})") from e
  if (not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0 or len(mesh.vertices) == 0
      or not np.all(np.isfinite(mesh.vertices))):
    raise ValueError(f"{path}: no usable triangles")
  extent = mesh.bounds[1] - mesh.bounds[0]
  if not np.max(extent) > 0:
    raise ValueError(f"{path}: the mesh has zero size")
  # Human keypoints (the KeypointNet dataset's, in model_normalized.obj's raw frame) go through the mesh's transform.
  points = np.asarray(spec.get("keypoints", np.zeros([0, 3])), np.float64).reshape(-1, 3)
  if spec["kind"] == "file":
    mesh.apply_transform(axes_to_object_frame(spec.get("front", "+x"), spec.get("up", "+y")))
  elif spec.get("version", 2) == 2:
    mesh.apply_transform(V2_TO_V1)
    points = trimesh.transform_points(points, V2_TO_V1) if len(points) else points
  elif len(points):
    raise ValueError(f"{path}: keypoint annotations are in ShapeNetCore.v2's frame; this is a v1 model.obj "
                     "(use ShapeNetCore.v2 meshes with annotations)")
  mesh, keypoints = procedural.normalise(mesh, points, spec.get("scale", 1.0))
  valid = spec.get("keypoint_valid")
  return LoadedMesh(mesh, keypoints, None if valid is None else np.asarray(valid, np.bool_))
