"""Procedural planes, cars and chairs with exact semantic keypoints (the data set's embedded default).

Every instance is assembled with trimesh from parametric parts whose dimensions are drawn from a generator
seeded by (category, index), so the collection is deterministic and instances really differ in shape (not one
template plus noise). Frame: ShapeNetCore v1's, the one the paper's released data was rendered in: +Y up, the
object's front along +X, its bilateral symmetry plane X-Y, its right side (for a driver or pilot facing +X)
along +Z. The orientation network's targets are the projections of (+-1, 0, 0), i.e. the front and back ends.
Meshes are normalised like the paper's renders: bounding-box centre at the origin and longest side
2 * scale (scale 0.8 for chairs, as the released chairs data used).

Only numpy and trimesh are imported (rendering workers import this module).
"""

import colorsys
import dataclasses
import hashlib
import math

import numpy as np
import trimesh

KEYPOINT_NAMES = {
    "planes": ("nose", "tail", "left_wingtip", "right_wingtip", "left_wing_root_leading_edge",
               "right_wing_root_leading_edge", "fin_top", "left_stabilizer_tip", "right_stabilizer_tip"),
    "cars": ("front_left_wheel", "front_right_wheel", "rear_left_wheel", "rear_right_wheel",
             "roof_front_left", "roof_front_right", "roof_rear_left", "roof_rear_right", "front_bumper",
             "rear_bumper"),
    "chairs": ("front_left_foot", "front_right_foot", "rear_left_foot", "rear_right_foot",
               "seat_front_left", "seat_front_right", "seat_rear_left", "seat_rear_right", "back_top_left",
               "back_top_right"),
}
CATEGORY_SCALE = {"planes": 1.0, "cars": 1.0, "chairs": 0.8}


@dataclasses.dataclass
class ProceduralObject:
  """One generated instance.

  Attributes:
    mesh: trimesh.Trimesh with per-face colours, normalised (see module docstring).
    keypoints: [K, 3] float32, the category's semantic keypoints in the same object frame, on the surface.
    keypoint_names: tuple of K names, fixed order per category.
    params: dict of the shape parameters drawn for this instance (for inspection and tests).
  """
  mesh: trimesh.Trimesh
  keypoints: np.ndarray
  keypoint_names: tuple
  params: dict


def _color(rng, saturation=(0.3, 0.9), value=(0.35, 0.95)):
  rgb = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*saturation), rng.uniform(*value))
  return np.array([*(int(255 * c) for c in rgb), 255], np.uint8)


def _paint(mesh, color):
  mesh.visual.face_colors = np.tile(color, (len(mesh.faces), 1))
  return mesh


def _hexahedron(corners, color):
  """Closed six-faced solid from 8 corners: [0:4] the bottom quad and [4:8] the top quad, same winding."""
  faces = [[0, 2, 1], [0, 3, 2], [4, 5, 6], [4, 6, 7], [0, 1, 5], [0, 5, 4], [1, 2, 6], [1, 6, 5],
           [2, 3, 7], [2, 7, 6], [3, 0, 4], [3, 4, 7]]
  mesh = trimesh.Trimesh(np.asarray(corners, np.float64), faces, process=False)
  mesh.fix_normals()
  return _paint(mesh, color)


def _box(center, extents, color):
  return _paint(trimesh.creation.box(extents=extents,
                                     transform=trimesh.transformations.translation_matrix(center)), color)


def _cylinder(start, end, radius, color, sections=16):
  return _paint(trimesh.creation.cylinder(radius=radius, segment=[start, end], sections=sections), color)


def _ellipsoid(center, radii, color):
  mesh = trimesh.creation.icosphere(subdivisions=2)
  mesh.apply_scale(radii)
  mesh.apply_translation(center)
  return _paint(mesh, color)


def _wing(root_leading, span, root_chord, tip_chord, sweep, dihedral, thickness, side, color):
  """A tapered, swept wing panel from the root (at z = root_leading[2]) out to z + side * span.

  Returns the mesh, the tip's centre point (on the tip face) and the leading edge's root and tip midpoints.
  """
  x0, y0, z0 = root_leading
  tip_z = z0 + side * span
  tip_lead_x = x0 - span * math.tan(sweep)
  tip_y = y0 + span * math.tan(dihedral)
  t = thickness / 2
  bottom = [[x0, y0 - t, z0], [x0 - root_chord, y0 - t, z0],
            [tip_lead_x - tip_chord, tip_y - t * 0.5, tip_z], [tip_lead_x, tip_y - t * 0.5, tip_z]]
  top = [[p[0], p[1] + (2 * t if i < 2 else t), p[2]] for i, p in enumerate(bottom)]
  tip_centre = np.array([tip_lead_x - tip_chord / 2, tip_y, tip_z])
  return _hexahedron(bottom + top, color), tip_centre, (np.array(bottom[0]) + np.array(top[0])) / 2, (
      np.array(bottom[3]) + np.array(top[3])) / 2


def _plane(rng):
  length = rng.uniform(3.5, 5.0)
  radius = rng.uniform(0.16, 0.3)
  span = rng.uniform(2.8, 5.2) / 2
  root_chord = rng.uniform(0.6, 1.3)
  taper = rng.uniform(0.25, 0.9)
  sweep = math.radians(rng.uniform(0, 40))
  dihedral = math.radians(rng.uniform(-4, 10))
  wing_x = rng.uniform(-0.15, 0.25) * length
  wing_y = rng.choice([-0.6, 0.0, 0.6]) * radius
  tail_span = rng.uniform(0.25, 0.45) * span
  fin_height = rng.uniform(0.45, 1.0)
  fin_sweep = math.radians(rng.uniform(20, 50))
  engines = int(rng.choice([0, 2, 2, 4]))
  body, wings = _color(rng, value=(0.5, 0.95)), _color(rng, value=(0.4, 0.9))
  parts = []
  fuselage = trimesh.creation.capsule(height=length - 2 * radius, radius=radius, count=[16, 16])
  fuselage.apply_transform(trimesh.transformations.rotation_matrix(math.pi / 2, [0, 1, 0]))
  parts.append(_paint(fuselage, body))
  nose, tail = np.array([length / 2, 0, 0]), np.array([-length / 2, 0, 0])
  root_leading = {}
  tips = {}
  for side, name in ((-1, "left"), (1, "right")):
    root = np.array([wing_x + root_chord / 2, wing_y, side * radius * 0.7])
    wing, tip, lead_root, lead_tip = _wing(root, span, root_chord, root_chord * taper, sweep, dihedral, 0.08,
                                           side, wings)
    parts.append(wing)
    # Where the leading edge leaves the fuselage: a little outside its radius, on the wing's front face.
    fraction = 0.4 * radius / span
    root_leading[name], tips[name] = (1 - fraction) * lead_root + fraction * lead_tip, tip
    stab_root = np.array([-length / 2 + 0.55 * radius + 0.5, 0.2 * radius, side * radius * 0.3])
    stab, stab_tip, _, _ = _wing(stab_root, tail_span, 0.5, 0.25, sweep * 0.8, 0.0, 0.05, side, wings)
    parts.append(stab)
    tips[name + "_stab"] = stab_tip
    for e in range(engines // 2):
      z = side * span * (0.35 + 0.3 * e)
      x = wing_x + root_chord / 2 - abs(z) * math.tan(sweep)
      y = wing_y + abs(z) * math.tan(dihedral) - 0.15
      parts.append(_cylinder([x + 0.25, y, z], [x - 0.45, y, z], 0.12, body, sections=12))
  fin_root_x = -length / 2 + 0.6
  fin_top_x = fin_root_x - fin_height * math.tan(fin_sweep)
  fin_base, fin_tip = 0.5 * radius, fin_height + radius
  fin = _hexahedron([[fin_root_x, fin_base, -0.03], [fin_root_x - 0.55, fin_base, -0.03],
                     [fin_top_x - 0.3, fin_tip, -0.02], [fin_top_x, fin_tip, -0.02],
                     [fin_root_x, fin_base, 0.03], [fin_root_x - 0.55, fin_base, 0.03],
                     [fin_top_x - 0.3, fin_tip, 0.02], [fin_top_x, fin_tip, 0.02]], wings)
  parts.append(fin)
  fin_top = np.array([fin_top_x - 0.15, fin_tip, 0.0])
  keypoints = [nose, tail, tips["left"], tips["right"], root_leading["left"], root_leading["right"], fin_top,
               tips["left_stab"], tips["right_stab"]]
  params = dict(length=length, radius=radius, span=2 * span, root_chord=root_chord, taper=taper,
                sweep_deg=math.degrees(sweep), dihedral_deg=math.degrees(dihedral), wing_x=wing_x,
                wing_y=wing_y, tail_span=2 * tail_span, fin_height=fin_height, engines=engines)
  return parts, keypoints, params


def _car(rng):
  length = rng.uniform(3.6, 4.9)
  width = rng.uniform(1.55, 2.0)
  clearance = rng.uniform(0.12, 0.3)
  body_height = rng.uniform(0.45, 0.8)
  hood = rng.uniform(0.18, 0.32) * length
  trunk = rng.uniform(0.08, 0.28) * length
  cabin_height = rng.uniform(0.4, 0.7)
  roof_inset = rng.uniform(0.1, 0.35)
  wheel_radius = rng.uniform(0.28, 0.42)
  wheel_width = rng.uniform(0.18, 0.3)
  track_out = rng.uniform(0.02, 0.1)
  wheelbase = rng.uniform(0.55, 0.68) * length
  body, cabin_color = _color(rng, value=(0.45, 0.95)), _color(rng, saturation=(0.0, 0.3), value=(0.3, 0.6))
  tyre = np.array([40, 40, 45, 255], np.uint8)
  bottom, top = clearance, clearance + body_height
  half_l, half_w = length / 2, width / 2
  parts = [_box([0, (bottom + top) / 2, 0], [length, body_height, width], body)]
  cabin_front = half_l - hood
  cabin_rear = -half_l + trunk
  roof_front = cabin_front - roof_inset * (cabin_front - cabin_rear)
  roof_rear = cabin_rear + 0.5 * roof_inset * (cabin_front - cabin_rear)
  roof_y = top + cabin_height
  roof_half_w = half_w * rng.uniform(0.8, 0.95)
  parts.append(_hexahedron(
      [[cabin_front, top, -half_w * 0.95], [cabin_rear, top, -half_w * 0.95], [cabin_rear, top, half_w * 0.95],
       [cabin_front, top, half_w * 0.95], [roof_front, roof_y, -roof_half_w], [roof_rear, roof_y, -roof_half_w],
       [roof_rear, roof_y, roof_half_w], [roof_front, roof_y, roof_half_w]], cabin_color))
  wheels = {}
  for x_name, x in (("front", wheelbase / 2), ("rear", -wheelbase / 2)):
    for side, name in ((-1, "left"), (1, "right")):
      outer = side * (half_w + track_out)  # the hub sticks out of the body, so it is on the surface
      inner = outer - side * wheel_width
      parts.append(_cylinder([x, wheel_radius, inner], [x, wheel_radius, outer], wheel_radius, tyre))
      wheels[f"{x_name}_{name}"] = np.array([x, wheel_radius, outer])  # hub centre on the outer face
  keypoints = [wheels["front_left"], wheels["front_right"], wheels["rear_left"], wheels["rear_right"],
               np.array([roof_front, roof_y, -roof_half_w]), np.array([roof_front, roof_y, roof_half_w]),
               np.array([roof_rear, roof_y, -roof_half_w]), np.array([roof_rear, roof_y, roof_half_w]),
               np.array([half_l, (bottom + top) / 2, 0.0]), np.array([-half_l, (bottom + top) / 2, 0.0])]
  params = dict(length=length, width=width, body_height=body_height, clearance=clearance, hood=hood, trunk=trunk,
                cabin_height=cabin_height, roof_inset=roof_inset, wheel_radius=wheel_radius,
                wheelbase=wheelbase)
  return parts, keypoints, params


def _chair(rng):
  width = rng.uniform(0.8, 1.2)
  depth = rng.uniform(0.75, 1.1)
  seat_height = rng.uniform(0.75, 1.1)
  seat_thickness = rng.uniform(0.06, 0.14)
  back_height = rng.uniform(0.7, 1.4)
  back_tilt = math.radians(rng.uniform(0, 20))
  leg_style = str(rng.choice(["square", "round", "splayed"]))
  leg = rng.uniform(0.05, 0.12)
  arms = bool(rng.uniform() < 0.35)
  wood, cushion = _color(rng, value=(0.35, 0.8)), _color(rng, value=(0.45, 0.95))
  half_d, half_w = depth / 2, width / 2
  seat_top = seat_height
  parts = [_box([0, seat_top - seat_thickness / 2, 0], [depth, seat_thickness, width], cushion)]
  feet = {}
  splay = 0.08 if leg_style == "splayed" else 0.0
  for x_name, sx in (("front", 1), ("rear", -1)):
    for name, sz in (("left", -1), ("right", 1)):
      top = np.array([sx * (half_d - leg), seat_top - seat_thickness, sz * (half_w - leg)])
      foot = top + [sx * splay, -(seat_top - seat_thickness), sz * splay]
      if leg_style == "square":
        parts.append(_box((top + foot) / 2, [leg, top[1], leg], wood))
      else:
        parts.append(_cylinder(foot, top, leg / 2, wood, sections=10))
      feet[f"{x_name}_{name}"] = foot
  back_bottom_x = -half_d + 0.04
  back_top = np.array([back_bottom_x - back_height * math.sin(back_tilt), seat_top + back_height * math.cos(back_tilt)])
  t = 0.05
  parts.append(_hexahedron(
      [[back_bottom_x - t, seat_top, -half_w], [back_bottom_x + t, seat_top, -half_w],
       [back_bottom_x + t, seat_top, half_w], [back_bottom_x - t, seat_top, half_w],
       [back_top[0] - t, back_top[1], -half_w], [back_top[0] + t, back_top[1], -half_w],
       [back_top[0] + t, back_top[1], half_w], [back_top[0] - t, back_top[1], half_w]], wood))
  if arms:
    arm_y = seat_top + rng.uniform(0.2, 0.35)
    for sz in (-1, 1):
      z = sz * (half_w - 0.04)
      parts.append(_box([0, arm_y, z], [depth * 0.9, 0.05, 0.08], wood))
      parts.append(_box([half_d * 0.8, (seat_top + arm_y) / 2, z], [0.05, arm_y - seat_top, 0.05], wood))
  keypoints = [feet["front_left"], feet["front_right"], feet["rear_left"], feet["rear_right"],
               np.array([half_d, seat_top, -half_w]), np.array([half_d, seat_top, half_w]),
               np.array([-half_d, seat_top, -half_w]), np.array([-half_d, seat_top, half_w]),
               np.array([back_top[0], back_top[1], -half_w]), np.array([back_top[0], back_top[1], half_w])]
  params = dict(width=width, depth=depth, seat_height=seat_height, back_height=back_height,
                back_tilt_deg=math.degrees(back_tilt), leg_style=leg_style, leg_thickness=leg, armrests=arms)
  return parts, keypoints, params


_BUILDERS = {"planes": _plane, "cars": _car, "chairs": _chair}


def model_seed(category, index):
  """Stable 64-bit seed for instance `index` of `category` (independent of Python's hash randomisation)."""
  digest = hashlib.sha256(f"keypointnet-procedural/{category}/{index}".encode()).digest()
  return int.from_bytes(digest[:8], "little")


def normalise(mesh, points, scale=1.0):
  """Centres the bounding box at the origin and scales the longest side to 2 * scale (in place on `mesh`).

  Args:
    mesh: trimesh.Trimesh.
    points: [K, 3] float points carried along with the mesh (may be empty).
    scale: float. 1.0 for cars and planes, 0.8 for chairs (as the released data).
  Returns:
    (mesh, points transformed the same way as [K, 3] float32).
  """
  lo, hi = mesh.bounds
  centre = (lo + hi) / 2
  factor = 2.0 * scale / float(np.max(hi - lo))
  mesh.apply_translation(-centre)
  mesh.apply_scale(factor)
  return mesh, ((np.asarray(points, np.float64).reshape(-1, 3) - centre) * factor).astype(np.float32)


def generate(category, index):
  """Builds instance `index` of `category` ("planes", "cars" or "chairs"). Deterministic.

  Returns:
    ProceduralObject.
  """
  if category not in _BUILDERS:
    raise ValueError(f"Unknown category {category!r}; expected one of {sorted(_BUILDERS)}.")
  rng = np.random.default_rng(model_seed(category, index))
  parts, keypoints, params = _BUILDERS[category](rng)
  mesh = trimesh.util.concatenate(parts)
  mesh, keypoints = normalise(mesh, np.stack(keypoints), CATEGORY_SCALE[category])
  return ProceduralObject(mesh=mesh, keypoints=keypoints, keypoint_names=KEYPOINT_NAMES[category],
                          params=params)
