"""Procedural meshes: determinism, frames, keypoints on the surface, generator 2, deformations."""

import numpy as np
import pytest

from keypointnet_datasets.shapenet_pairs import procedural
from keypointnet_tf import geometry


@pytest.mark.parametrize("generator", procedural.GENERATORS)
@pytest.mark.parametrize("category", ["planes", "cars", "chairs"])
def test_procedural_is_deterministic_varied_normalised_and_keypoints_on_surface(category, generator):
  first, again, other = (procedural.generate(category, index, generator) for index in (3, 3, 4))
  np.testing.assert_array_equal(first.mesh.vertices, again.mesh.vertices)
  np.testing.assert_array_equal(first.keypoints, again.keypoints)
  assert first.params != other.params  # different instances have different shape parameters
  extents = first.mesh.bounds[1] - first.mesh.bounds[0]
  assert np.max(extents) == pytest.approx(2.0 * procedural.CATEGORY_SCALE[category])
  np.testing.assert_allclose(first.mesh.bounds.mean(axis=0), 0.0, atol=1e-9)
  assert first.keypoints.shape == (len(procedural.KEYPOINT_NAMES[category]), 3)
  _, distance, _ = first.mesh.nearest.on_surface(first.keypoints)
  assert np.max(distance) < 1e-4
  # Left/right keypoints mirror each other through the X-Y symmetry plane (right is +Z).
  names = procedural.KEYPOINT_NAMES[category]
  for i, name in enumerate(names):
    if "left" in name:
      j = names.index(name.replace("left", "right"))
      assert first.keypoints[i, 2] < 0 < first.keypoints[j, 2]
  # mirror_parts pairs each with its mirror image: reflected through the plane, every keypoint lands on its pair's
  # (both generators build mirror-symmetric objects), and the parts on the plane pair with themselves.
  mirror = procedural.mirror_parts(category)
  reflected = first.keypoints * np.array([1.0, 1.0, -1.0])
  assert procedural.SYMMETRY_AXIS == geometry.SYMMETRY_AXIS == 2  # the library's lateral anchor reads Z
  np.testing.assert_allclose(reflected, first.keypoints[mirror], atol=1e-6)
  assert sorted(mirror) == list(range(len(names))) and all(mirror[mirror] == np.arange(len(names)))
  assert sum(mirror == np.arange(len(names))) == {"planes": 3, "cars": 2, "chairs": 0}[category]


@pytest.mark.parametrize("generator", procedural.GENERATORS)
def test_procedural_front_is_plus_x(generator):
  plane = procedural.generate("planes", 0, generator)
  names = procedural.KEYPOINT_NAMES["planes"]
  assert plane.keypoints[names.index("nose"), 0] > plane.keypoints[names.index("tail"), 0]
  car = procedural.generate("cars", 0, generator)
  names = procedural.KEYPOINT_NAMES["cars"]
  assert car.keypoints[names.index("front_bumper"), 0] > car.keypoints[names.index("rear_bumper"), 0]


def _faces_of_colour(mesh, rgba):
  return mesh.triangles_center[np.all(mesh.visual.face_colors == rgba, axis=1)]


def test_generator_2_tells_front_from_back_and_varies_like_real_objects():
  count = 120
  cars = [procedural.generate("cars", i, 2) for i in range(count)]
  first_cars = [procedural.generate("cars", i, 1) for i in range(count)]
  # Generator 1's hood and trunk ranges overlap (the flips of issue 12); generator 2's hood is always longer.
  assert 0.05 < np.mean([c.params["trunk"] >= c.params["hood"] for c in first_cars]) < 0.4
  assert all(c.params["hood"] > c.params["trunk"] + 0.05 * c.params["length"] for c in cars)
  for car in cars[:20]:
    # White headlamps only at the front (+X), red tail lamps only at the back, and the windshield raked more
    # than the rear window: the roof's front edge is further from the front wheels than its rear edge from the
    # rear wheels would be in a mirrored car.
    assert np.all(_faces_of_colour(car.mesh, procedural._LAMP)[:, 0] > 0.8)
    assert np.all(_faces_of_colour(car.mesh, procedural._TAIL_LAMP)[:, 0] < -0.8)
    assert car.params["windshield_rake"] > car.params["rear_rake"]
  assert {c.params["style"] for c in cars} == {"sedan", "hatchback", "wagon"}
  planes = [procedural.generate("planes", i, 2) for i in range(count)]
  assert {p.params["kind"] for p in planes} == {"airliner", "fighter", "light"}
  assert {p.params["engines"] for p in planes} == {"wing2", "wing4", "rear2", "none", "propeller"}
  assert any(p.params["t_tail"] for p in planes) and not all(p.params["t_tail"] for p in planes)
  names = procedural.KEYPOINT_NAMES["planes"]
  for plane in planes:  # the tail cone rises to the tail: the tail keypoint sits above the nose
    assert plane.keypoints[names.index("tail"), 1] > plane.keypoints[names.index("nose"), 1]
  chairs = [procedural.generate("chairs", i, 2) for i in range(count)]
  assert {c.params["base"] for c in chairs} == {"square", "round", "splayed", "swivel"}
  assert {c.params["back_style"] for c in chairs} == {"solid", "slats", "frame"}
  for chair in chairs:  # the four foot keypoints stand on the floor (the mesh's lowest level; splayed legs' end
    # caps tilt, so their rims reach a few thousandths lower than the caps' centres)
    assert np.allclose(chair.keypoints[:4, 1], chair.mesh.bounds[0, 1], atol=0.01)
  with pytest.raises(ValueError, match="generator"):
    procedural.generate("cars", 0, 3)


def test_deformations_bend_stretch_and_taper_with_keypoints_on_the_surface():
  plane = procedural.generate("planes", 3)
  names = procedural.KEYPOINT_NAMES["planes"]
  nose, tail, root = names.index("nose"), names.index("tail"), names.index("left_wing_root_leading_edge")
  extents = np.ptp(plane.mesh.bounds, axis=0)
  for kind in procedural.DEFORMATIONS:
    mesh, points = procedural.deform(plane.mesh, plane.keypoints, kind, 0.3)
    _, distance, _ = mesh.nearest.on_surface(points)
    assert np.max(distance) < 1e-4, kind  # the keypoints moved with the surface
    assert np.max(np.ptp(mesh.bounds, axis=0)) == pytest.approx(2.0)  # renormalised
    assert len(np.unique(mesh.visual.face_colors, axis=0)) == len(np.unique(plane.mesh.visual.face_colors, axis=0))
    if kind == "bend":  # nose and tail rise against the wing root
      for end in (nose, tail):
        assert points[end, 1] - points[root, 1] > plane.keypoints[end, 1] - plane.keypoints[root, 1] + 0.1
    elif kind == "stretch":  # 1.3 times longer against the height and the span
      after = np.ptp(mesh.bounds, axis=0)
      np.testing.assert_allclose(after[0] / after[1:], 1.3 * extents[0] / extents[1:], rtol=1e-6)
    else:  # taper: the section grows towards the nose; the x positions stay in order
      front = mesh.vertices[mesh.vertices[:, 0] > 0.5]
      back = mesh.vertices[mesh.vertices[:, 0] < -0.5]
      before_front = plane.mesh.vertices[plane.mesh.vertices[:, 0] > 0.5]
      assert np.ptp(front[:, 1]) / np.ptp(back[:, 1]) > np.ptp(before_front[:, 1]) / np.ptp(
          plane.mesh.vertices[plane.mesh.vertices[:, 0] < -0.5][:, 1])
  with pytest.raises(ValueError, match="Unknown deformation"):
    procedural.deform(plane.mesh, plane.keypoints, "twist", 0.3)
