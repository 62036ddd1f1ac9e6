"""Mesh sources: procedural instances, or ShapeNetCore OBJ files, loaded into the common object frame.

A mesh spec is a small picklable dict (it travels to rendering workers):
- {"kind": "procedural", "category": "planes", "index": 17}
- {"kind": "shapenet", "path": ".../model_normalized.obj", "version": 2, "scale": 1.0}

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


@dataclasses.dataclass
class LoadedMesh:
  mesh: trimesh.Trimesh  # normalised, object frame
  keypoints: np.ndarray  # [K, 3] float32 ground truth in the same frame; [0, 3] when there is none


def load(spec):
  """Loads a mesh spec (see module docstring). Raises ValueError with the path for unusable files."""
  if spec["kind"] == "procedural":
    obj = procedural.generate(spec["category"], spec["index"])
    return LoadedMesh(obj.mesh, obj.keypoints)
  if spec["kind"] != "shapenet":
    raise ValueError(f"Unknown mesh spec kind {spec['kind']!r}.")
  path = spec["path"]
  mesh = trimesh.load(path, force="mesh", process=False)
  if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0 or not np.all(np.isfinite(mesh.vertices)):
    raise ValueError(f"{path}: no usable triangles")
  extent = mesh.bounds[1] - mesh.bounds[0]
  if not np.max(extent) > 0:
    raise ValueError(f"{path}: the mesh has zero size")
  if spec.get("version", 2) == 2:
    mesh.apply_transform(V2_TO_V1)
  mesh, keypoints = procedural.normalise(mesh, np.zeros([0, 3]), spec.get("scale", 1.0))
  return LoadedMesh(mesh, keypoints)
