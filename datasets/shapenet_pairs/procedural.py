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
SYMMETRY_AXIS = 2  # the object frame's axis across the symmetry plane X-Y (module docstring): Z


def mirror_parts(category):
  """[P] int: for each of the category's keypoints, the index of its mirror image across the symmetry plane (the
  "left_" part of a "right_" one and back; itself for a part on the plane, such as the nose)."""
  names = KEYPOINT_NAMES[category]
  swapped = [name.replace("left", "\0").replace("right", "left").replace("\0", "right") for name in names]
  return np.array([names.index(name) for name in swapped])


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


# --- Generator 2: the cues real objects have (issue 12). Generator 1 above stays as it was, so data sets built
# with it (every trial before generator 2) can be rebuilt byte for byte.

_LAMP = np.array([250, 245, 200, 255], np.uint8)
_TAIL_LAMP = np.array([200, 20, 25, 255], np.uint8)
_DARK = np.array([30, 30, 34, 255], np.uint8)
_GLASS = np.array([60, 80, 100, 255], np.uint8)


def _car2(rng):
  """A car whose front and back differ as on real ones.

  The hood is always longer than the trunk (disjoint ranges), the windshield is raked more than the rear window,
  the hood slopes down to the nose, the front carries white headlamps and a dark grille and the back red tail
  lamps, and the bumpers differ in depth. The bumper keypoints are the centres of the bumpers' outer faces.
  """
  style = str(rng.choice(["sedan", "sedan", "hatchback", "wagon"]))
  length = rng.uniform(3.6, 4.9)
  width = rng.uniform(1.55, 2.0)
  clearance = rng.uniform(0.12, 0.3)
  body_height = rng.uniform(0.45, 0.8)
  hood = rng.uniform(0.25, 0.34) * length
  trunk = {"sedan": rng.uniform(0.1, 0.18), "hatchback": rng.uniform(0.03, 0.07),
           "wagon": rng.uniform(0.02, 0.05)}[style] * length
  cabin_height = rng.uniform(0.4, 0.7)
  rake = rng.uniform(0.45, 0.75)  # horizontal run of the windshield, as a share of the cabin height
  rear_rake = {"sedan": rng.uniform(0.25, 0.5), "hatchback": rng.uniform(0.15, 0.35),
               "wagon": rng.uniform(0.0, 0.1)}[style]
  hood_drop = rng.uniform(0.1, 0.3) * body_height
  wheel_radius = min(rng.uniform(0.28, 0.42), 0.45 * (clearance + body_height))  # tyres below the body's top
  wheel_width = rng.uniform(0.18, 0.3)
  track_out = rng.uniform(0.02, 0.1)
  wheelbase = rng.uniform(0.55, 0.68) * length
  front_bumper_depth, rear_bumper_depth = rng.uniform(0.08, 0.14), rng.uniform(0.03, 0.06)
  body, cabin_color = _color(rng, value=(0.45, 0.95)), _color(rng, saturation=(0.0, 0.3), value=(0.3, 0.6))
  tyre = np.array([40, 40, 45, 255], np.uint8)
  bottom, top = clearance, clearance + body_height
  half_l, half_w = length / 2, width / 2
  cabin_front, cabin_rear = half_l - hood, -half_l + trunk
  # Body: the rear block at full height, then the hood sloping down to the nose.
  parts = [_box([(cabin_front - half_l) / 2, (bottom + top) / 2, 0], [cabin_front + half_l, body_height, width],
                body),
           _hexahedron([[cabin_front, bottom, -half_w], [half_l, bottom, -half_w], [half_l, bottom, half_w],
                        [cabin_front, bottom, half_w], [cabin_front, top, -half_w], [half_l, top - hood_drop, -half_w],
                        [half_l, top - hood_drop, half_w], [cabin_front, top, half_w]], body)]
  roof_y = top + cabin_height
  roof_front = cabin_front - rake * cabin_height
  roof_rear = cabin_rear + rear_rake * cabin_height
  roof_half_w = half_w * rng.uniform(0.8, 0.95)
  parts.append(_hexahedron(
      [[cabin_front, top, -half_w * 0.95], [cabin_rear, top, -half_w * 0.95], [cabin_rear, top, half_w * 0.95],
       [cabin_front, top, half_w * 0.95], [roof_front, roof_y, -roof_half_w], [roof_rear, roof_y, -roof_half_w],
       [roof_rear, roof_y, roof_half_w], [roof_front, roof_y, roof_half_w]], cabin_color))
  # Bumpers: dark bars across the lower front and back, the front one deeper.
  bumper_h = 0.3 * body_height
  bumper_y = bottom + bumper_h / 2
  parts.append(_box([half_l + front_bumper_depth / 2, bumper_y, 0], [front_bumper_depth, bumper_h, width * 0.96],
                    _DARK))
  parts.append(_box([-half_l - rear_bumper_depth / 2, bumper_y, 0], [rear_bumper_depth, bumper_h, width * 0.96],
                    _DARK))
  # Lamps and grille, standing 0.03 proud of the front and rear faces above the bumpers.
  lamp_h = 0.22 * body_height
  lamp_y = bottom + bumper_h + 0.5 * (body_height - bumper_h - hood_drop)
  for side in (-1, 1):
    parts.append(_box([half_l + 0.015, lamp_y, side * half_w * 0.72], [0.03, lamp_h, half_w * 0.4], _LAMP))
    parts.append(_box([-half_l - 0.015, lamp_y, side * half_w * 0.75], [0.03, lamp_h, half_w * 0.35], _TAIL_LAMP))
  parts.append(_box([half_l + 0.015, lamp_y, 0], [0.03, lamp_h * 1.2, half_w * 0.6], _DARK))
  wheels = {}
  for x_name, x in (("front", wheelbase / 2), ("rear", -wheelbase / 2)):
    for side, name in ((-1, "left"), (1, "right")):
      outer = side * (half_w + track_out)
      inner = outer - side * wheel_width
      parts.append(_cylinder([x, wheel_radius, inner], [x, wheel_radius, outer], wheel_radius, tyre))
      wheels[f"{x_name}_{name}"] = np.array([x, wheel_radius, outer])
  keypoints = [wheels["front_left"], wheels["front_right"], wheels["rear_left"], wheels["rear_right"],
               np.array([roof_front, roof_y, -roof_half_w]), np.array([roof_front, roof_y, roof_half_w]),
               np.array([roof_rear, roof_y, -roof_half_w]), np.array([roof_rear, roof_y, roof_half_w]),
               np.array([half_l + front_bumper_depth, bumper_y, 0.0]),
               np.array([-half_l - rear_bumper_depth, bumper_y, 0.0])]
  params = dict(style=style, length=length, width=width, body_height=body_height, clearance=clearance, hood=hood,
                trunk=trunk, cabin_height=cabin_height, windshield_rake=rake, rear_rake=rear_rake,
                hood_drop=hood_drop, wheel_radius=wheel_radius, wheelbase=wheelbase)
  return parts, keypoints, params


def _plane2(rng):
  """Airliners, fighters and light aircraft.

  Wings low, mid or high, straight, swept or delta; the tail plane on the fuselage or on top of the fin (T-tail);
  engines under the wings, on the rear fuselage, or a propeller at the nose; a rounded nose with dark cockpit
  windows and a tail cone that narrows and rises to the tail, so the nose and the tail differ.
  """
  kind = str(rng.choice(["airliner", "airliner", "fighter", "light"]))
  length = rng.uniform(3.5, 5.0)
  radius = rng.uniform(0.16, 0.3) if kind != "fighter" else rng.uniform(0.14, 0.22)
  if kind == "fighter":  # delta or strongly swept, short span
    span, root_chord = rng.uniform(2.2, 3.2) / 2, rng.uniform(1.2, 1.9)
    taper, sweep = rng.uniform(0.05, 0.3), math.radians(rng.uniform(40, 60))
  elif kind == "light":  # straight wings
    span, root_chord = rng.uniform(3.6, 5.2) / 2, rng.uniform(0.5, 0.8)
    taper, sweep = rng.uniform(0.6, 1.0), math.radians(rng.uniform(0, 5))
  else:
    span, root_chord = rng.uniform(3.2, 5.2) / 2, rng.uniform(0.6, 1.3)
    taper, sweep = rng.uniform(0.25, 0.5), math.radians(rng.uniform(20, 40))
  dihedral = math.radians(rng.uniform(-4, 8))
  wing_x = rng.uniform(-0.1, 0.05 if kind == "fighter" else 0.2) * length
  wing_y = rng.choice([-0.6, 0.0, 0.6]) * radius
  tail_span = rng.uniform(0.25, 0.45) * span
  fin_height = rng.uniform(0.45, 1.0)
  fin_sweep = math.radians(rng.uniform(25, 55))
  t_tail = kind != "fighter" and rng.uniform() < 0.3
  engines = {"airliner": str(rng.choice(["wing2", "wing2", "wing4", "rear2"])), "fighter": "none",
             "light": "propeller"}[kind]
  body, wings = _color(rng, value=(0.5, 0.95)), _color(rng, value=(0.4, 0.9))
  tail_cone = rng.uniform(0.22, 0.32) * length
  tail_rise = rng.uniform(0.3, 0.8) * radius
  nose, tail = np.array([length / 2, 0, 0]), np.array([-length / 2, tail_rise, 0])
  # Fuselage: a cylinder with a hemispherical nose, and a cone from the cylinder's end up to the tail point.
  barrel_front, barrel_rear = length / 2 - radius, -length / 2 + tail_cone
  barrel = trimesh.creation.capsule(height=barrel_front - barrel_rear, radius=radius, count=[16, 16])
  barrel.apply_transform(trimesh.transformations.rotation_matrix(math.pi / 2, [0, 1, 0]))
  barrel.apply_translation([(barrel_front + barrel_rear) / 2, 0, 0])
  parts = [_paint(barrel, body)]
  ring = [[barrel_rear, radius * math.cos(a), radius * math.sin(a)] for a in np.linspace(0, 2 * math.pi, 16, False)]
  parts.append(_paint(trimesh.convex.convex_hull(np.array(ring + [tail.tolist()])), body))
  # Cockpit windows: a dark band on the upper front of the nose.
  parts.append(_ellipsoid([length / 2 - 1.3 * radius, 0.55 * radius, 0], [0.55 * radius, 0.5 * radius,
                                                                        0.75 * radius], _GLASS))
  root_leading, tips = {}, {}
  fin_root_x = -length / 2 + 0.6
  fin_top_x = fin_root_x - fin_height * math.tan(fin_sweep)
  fin_base, fin_tip = 0.25 * radius, fin_height + radius  # the base inside the tail cone
  for side, name in ((-1, "left"), (1, "right")):
    root = np.array([wing_x + root_chord / 2, wing_y, side * radius * 0.7])
    wing, tip, lead_root, lead_tip = _wing(root, span, root_chord, root_chord * taper, sweep, dihedral, 0.08,
                                           side, wings)
    parts.append(wing)
    fraction = 0.4 * radius / span
    root_leading[name], tips[name] = (1 - fraction) * lead_root + fraction * lead_tip, tip
    if t_tail:
      stab_root = np.array([fin_top_x - 0.02, fin_tip - 0.04, side * 0.02])
      stab, stab_tip, _, _ = _wing(stab_root, tail_span, 0.4, 0.2, sweep * 0.6, 0.0, 0.05, side, wings)
    else:
      stab_root = np.array([-length / 2 + 0.55 * radius + 0.5, 0.2 * radius + tail_rise * 0.5,
                            side * radius * 0.3])
      stab, stab_tip, _, _ = _wing(stab_root, tail_span, 0.5, 0.25, sweep * 0.8, 0.0, 0.05, side, wings)
    parts.append(stab)
    tips[name + "_stab"] = stab_tip
    if engines in ("wing2", "wing4"):
      for e in range(1 if engines == "wing2" else 2):
        z = side * span * (0.35 + 0.3 * e)
        x = wing_x + root_chord / 2 - abs(z) * math.tan(sweep)
        y = wing_y + abs(z) * math.tan(dihedral) - 0.15
        parts.append(_cylinder([x + 0.25, y, z], [x - 0.45, y, z], 0.12, _DARK, sections=12))
    elif engines == "rear2":
      x = barrel_rear + 0.2
      parts.append(_cylinder([x + 0.35, 0.3 * radius, side * (radius + 0.1)],
                             [x - 0.35, 0.3 * radius, side * (radius + 0.1)], 0.13, _DARK, sections=12))
  if engines == "propeller":  # a thin disc in front of the nose; the nose keypoint is its spinner's tip
    hub = np.array([length / 2 + 0.04, 0, 0])
    parts.append(_cylinder(nose, hub, 0.06 * radius + 0.04, _DARK, sections=12))
    parts.append(_box(hub - [0.01, 0, 0], [0.02, 0.08, 2.2 * radius + 0.5], _DARK))
    nose = hub
  fin = _hexahedron([[fin_root_x, fin_base, -0.03], [fin_root_x - 0.55, fin_base, -0.03],
                     [fin_top_x - 0.3, fin_tip, -0.02], [fin_top_x, fin_tip, -0.02],
                     [fin_root_x, fin_base, 0.03], [fin_root_x - 0.55, fin_base, 0.03],
                     [fin_top_x - 0.3, fin_tip, 0.02], [fin_top_x, fin_tip, 0.02]], wings)
  parts.append(fin)
  fin_top = np.array([fin_top_x - 0.15, fin_tip, 0.0])
  keypoints = [nose, tail, tips["left"], tips["right"], root_leading["left"], root_leading["right"], fin_top,
               tips["left_stab"], tips["right_stab"]]
  params = dict(kind=kind, length=length, radius=radius, span=2 * span, root_chord=root_chord, taper=taper,
                sweep_deg=math.degrees(sweep), dihedral_deg=math.degrees(dihedral), wing_x=wing_x,
                wing_y=wing_y, tail_span=2 * tail_span, fin_height=fin_height, t_tail=bool(t_tail),
                engines=engines, tail_cone=tail_cone, tail_rise=tail_rise)
  return parts, keypoints, params


def _chair2(rng):
  """Four-legged chairs (square, round or splayed legs, with or without stretchers) and swivel chairs (a column on
  a four-armed star base), with solid or slatted backs and optional armrests. The foot keypoints are the ends of
  the legs or of the star's arms (front left, front right, ...), on the floor."""
  width = rng.uniform(0.8, 1.2)
  depth = rng.uniform(0.75, 1.1)
  seat_height = rng.uniform(0.75, 1.1)
  seat_thickness = rng.uniform(0.06, 0.16)
  back_height = rng.uniform(0.7, 1.4)
  back_tilt = math.radians(rng.uniform(0, 20))
  base = str(rng.choice(["square", "round", "splayed", "swivel"]))
  back_style = str(rng.choice(["solid", "solid", "slats", "frame"]))
  leg = rng.uniform(0.05, 0.12)
  arms = bool(rng.uniform() < 0.4)
  wood, cushion = _color(rng, value=(0.35, 0.8)), _color(rng, value=(0.45, 0.95))
  metal = np.array([90, 90, 95, 255], np.uint8)
  half_d, half_w = depth / 2, width / 2
  seat_top = seat_height
  seat_bottom = seat_top - seat_thickness
  parts = [_box([0, seat_top - seat_thickness / 2, 0], [depth, seat_thickness, width], cushion)]
  feet = {}
  if base == "swivel":
    column_y = 0.18 * seat_bottom
    parts.append(_cylinder([0, column_y, 0], [0, seat_bottom, 0], 0.05, metal, sections=12))
    reach = 0.5 * math.hypot(depth, width) * rng.uniform(0.85, 1.05)
    for x_name, sx in (("front", 1), ("rear", -1)):
      for name, sz in (("left", -1), ("right", 1)):
        direction = np.array([sx * depth, 0.0, sz * width]) / math.hypot(depth, width)
        foot = direction * reach
        parts.append(_cylinder([0, column_y, 0], foot + [0, 0.04, 0], 0.035, metal, sections=8))
        parts.append(_ellipsoid(foot + [0, 0.04, 0], [0.045, 0.04, 0.045], _DARK))  # caster; foot at its bottom
        feet[f"{x_name}_{name}"] = foot
  else:
    splay = 0.08 if base == "splayed" else 0.0
    for x_name, sx in (("front", 1), ("rear", -1)):
      for name, sz in (("left", -1), ("right", 1)):
        top = np.array([sx * (half_d - leg), seat_bottom, sz * (half_w - leg)])
        foot = top + [sx * splay, -seat_bottom, sz * splay]
        if base == "square":
          parts.append(_box((top + foot) / 2, [leg, top[1], leg], wood))
        else:
          parts.append(_cylinder(foot, top, leg / 2, wood, sections=10))
        feet[f"{x_name}_{name}"] = foot
    if base != "splayed" and rng.uniform() < 0.5:  # stretchers between the legs, low on the sides
      y = rng.uniform(0.15, 0.35) * seat_bottom
      for sz in (-1, 1):
        parts.append(_box([0, y, sz * (half_w - leg)], [depth - 2 * leg, 0.03, 0.03], wood))
  back_bottom_x = -half_d + 0.04
  back_top = np.array([back_bottom_x - back_height * math.sin(back_tilt),
                       seat_top + back_height * math.cos(back_tilt)])
  t = 0.05

  def back_panel(z0, z1, y0_share, y1_share):
    """A slab of the back from z0 to z1 and from y0_share to y1_share of the back's height."""
    lo = np.array([back_bottom_x, seat_top]) + y0_share * (back_top - [back_bottom_x, seat_top])
    hi = np.array([back_bottom_x, seat_top]) + y1_share * (back_top - [back_bottom_x, seat_top])
    return _hexahedron([[lo[0] - t, lo[1], z0], [lo[0] + t, lo[1], z0], [lo[0] + t, lo[1], z1],
                        [lo[0] - t, lo[1], z1], [hi[0] - t, hi[1], z0], [hi[0] + t, hi[1], z0],
                        [hi[0] + t, hi[1], z1], [hi[0] - t, hi[1], z1]], wood if back_style != "solid" else
                       cushion if base == "swivel" else wood)

  if back_style == "solid":
    parts.append(back_panel(-half_w, half_w, 0.0, 1.0))
  else:  # a top rail over uprights at both sides, with vertical slats (slats) or a bottom rail (frame) between
    parts.append(back_panel(-half_w, half_w, 0.82, 1.0))
    for sz in (-1, 1):
      parts.append(back_panel(sz * half_w - (0.07 if sz > 0 else 0), sz * half_w + (0.07 if sz < 0 else 0),
                              0.0, 0.85))
    if back_style == "slats":
      count = int(rng.integers(2, 6))
      for z in np.linspace(-half_w, half_w, count + 2)[1:-1]:
        parts.append(back_panel(z - 0.03, z + 0.03, 0.0, 0.85))
    else:
      parts.append(back_panel(-half_w, half_w, 0.0, 0.15))
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
                back_tilt_deg=math.degrees(back_tilt), base=base, back_style=back_style, leg_thickness=leg,
                armrests=arms)
  return parts, keypoints, params


# {generator version: {category: builder}}.
_BUILDERS = {1: {"planes": _plane, "cars": _car, "chairs": _chair},
             2: {"planes": _plane2, "cars": _car2, "chairs": _chair2}}
GENERATORS = tuple(_BUILDERS)


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


def generate(category, index, generator=1):
  """Builds instance `index` of `category` ("planes", "cars" or "chairs"). Deterministic.

  Args:
    category: str.
    index: int >= 0.
    generator: one of GENERATORS. 1: the first collection (boxy cars whose front and back look alike, one plane
      layout, four-legged chairs); 2: the cues real objects have (see _car2, _plane2, _chair2).
  Returns:
    ProceduralObject.
  """
  if generator not in _BUILDERS:
    raise ValueError(f"Unknown procedural generator {generator!r}; expected one of {GENERATORS}.")
  if category not in _BUILDERS[generator]:
    raise ValueError(f"Unknown category {category!r}; expected one of {sorted(_BUILDERS[generator])}.")
  rng = np.random.default_rng(model_seed(category, index))
  parts, keypoints, params = _BUILDERS[generator][category](rng)
  mesh = trimesh.util.concatenate(parts)
  mesh, keypoints = normalise(mesh, np.stack(keypoints), CATEGORY_SCALE[category])
  return ProceduralObject(mesh=mesh, keypoints=keypoints, keypoint_names=KEYPOINT_NAMES[category],
                          params=params)


DEFORMATIONS = ("bend", "stretch", "taper")


def deform(mesh, points, kind, amount):
  """A non-rigid deformation of a normalised object and its keypoints (the paper's Fig. 8 test), renormalised.

  The mesh is first subdivided to edges of at most 0.1 (so flat parts such as wings really bend), then every
  vertex and keypoint goes through the same map of the object frame (x along the length, y up):
  - "bend": y += amount * x^2 (nose and tail rise: a banana);
  - "stretch": x *= 1 + amount (longer, hence thinner once renormalised);
  - "taper": y and z *= 1 + amount * x (the front grows, the back shrinks).
  Keypoints on vertices stay exactly on the surface; inside a small face they stay within the face's curvature.

  Args:
    mesh: trimesh.Trimesh with face colours, normalised (see normalise).
    points: [K, 3] keypoints in the same frame.
    kind: one of DEFORMATIONS.
    amount: float, e.g. 0.3.
  Returns:
    (mesh, points): a new mesh and [K, 3] float32 keypoints, renormalised to the input's longest side.
  """
  if kind not in DEFORMATIONS:
    raise ValueError(f"Unknown deformation {kind!r}; expected one of {DEFORMATIONS}.")

  def warp(xyz):
    x, y, z = np.asarray(xyz, np.float64).reshape(-1, 3).T
    if kind == "bend":
      y = y + amount * x ** 2
    elif kind == "stretch":
      x = x * (1 + amount)
    else:
      y, z = y * (1 + amount * x), z * (1 + amount * x)
    return np.stack([x, y, z], axis=1)

  longest = float(np.max(mesh.bounds[1] - mesh.bounds[0]))
  vertices, faces, index = trimesh.remesh.subdivide_to_size(mesh.vertices, mesh.faces, max_edge=0.1,
                                                             return_index=True)
  warped = trimesh.Trimesh(warp(vertices), faces, process=False)
  warped.visual.face_colors = np.asarray(mesh.visual.face_colors)[index]
  return normalise(warped, warp(points), longest / 2)
