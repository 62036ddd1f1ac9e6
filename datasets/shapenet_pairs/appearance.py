"""Appearance randomisation for renders meant to transfer to photographs (the builder's `appearance="random"`).

Per object: its part colours turned to random hues, saturations and brightnesses (greys such as tyres stay
grey). Per view: a directional light from a random direction of the upper hemisphere, with a random tint,
intensity and ambient level; and a random background behind the object: a solid colour, a linear gradient,
per-pixel noise around a colour, or an image-like texture (several octaves of smooth value noise through a random
palette). The background fills the RGB channels only: alpha stays the object's mask, so the silhouette loss and
every mask-based measure see exactly the object, while the networks (which see RGB) see a cluttered picture.

Only numpy and trimesh are used (rendering workers import this module); every draw comes from the given
numpy Generator, so a seed reproduces the same appearance in any process.
"""

import colorsys

import numpy as np

BACKGROUNDS = ("solid", "gradient", "noise", "texture")


def recolour(mesh, rng):
  """A copy of `mesh` whose distinct face colours are each replaced by a random colour of the same greyness.

  Args:
    mesh: trimesh.Trimesh with face colours.
    rng: numpy Generator.
  Returns:
    trimesh.Trimesh.
  """
  mesh = mesh.copy()
  colours = np.asarray(mesh.visual.face_colors)
  unique, inverse = np.unique(colours, axis=0, return_inverse=True)
  new = unique.copy()
  for i, rgba in enumerate(unique):
    _, saturation, value = colorsys.rgb_to_hsv(*(rgba[:3] / 255.0))
    if saturation > 0.15:  # coloured parts get any hue; greys (tyres, glass, metal) stay grey
      saturation = rng.uniform(0.2, 1.0)
    rgb = colorsys.hsv_to_rgb(rng.uniform(), saturation, float(np.clip(value * rng.uniform(0.6, 1.3), 0.1, 1.0)))
    new[i, :3] = np.round(np.array(rgb) * 255)
  mesh.visual.face_colors = new[inverse.reshape(-1)]
  return mesh


def random_light(rng):
  """A directional light: {"direction": [3] unit vector the light travels along (object frame, pointing down
  into the upper hemisphere's objects), "color": [3] in [0.6, 1], "intensity": float, "ambient": float}."""
  elevation = rng.uniform(np.radians(15), np.radians(90))
  azimuth = rng.uniform(0, 2 * np.pi)
  towards_light = np.array([np.cos(elevation) * np.cos(azimuth), np.sin(elevation),
                            np.cos(elevation) * np.sin(azimuth)])
  return {"direction": -towards_light, "color": rng.uniform(0.6, 1.0, size=3),
          "intensity": float(rng.uniform(1.5, 4.5)), "ambient": float(rng.uniform(0.15, 0.5))}


def _value_noise(rng, size, cells):
  """[size, size] smooth noise in [0, 1]: a random (cells + 1)^2 grid, bilinearly interpolated."""
  grid = rng.uniform(size=(cells + 1, cells + 1))
  t = np.linspace(0, cells, size, endpoint=False) + 0.5 * cells / size
  i = np.minimum(t.astype(int), cells - 1)
  f = t - i
  f = f * f * (3 - 2 * f)  # smoothstep: no visible grid lines
  top = grid[i][:, i] * (1 - f)[None, :] + grid[i][:, i + 1] * f[None, :]
  bottom = grid[i + 1][:, i] * (1 - f)[None, :] + grid[i + 1][:, i + 1] * f[None, :]
  return top * (1 - f)[:, None] + bottom * f[:, None]


def random_background(rng, size, kind=None):
  """[size, size, 3] uint8 background of a random (or the given) kind in BACKGROUNDS."""
  kind = kind or BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
  if kind not in BACKGROUNDS:
    raise ValueError(f"Background kind must be one of {BACKGROUNDS}. Received: {kind!r}")
  first, second = rng.uniform(size=3), rng.uniform(size=3)
  if kind == "solid":
    image = np.broadcast_to(first, (size, size, 3))
  elif kind == "gradient":
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1) - 0.5
    t = np.clip(0.5 + x * np.cos(angle) + y * np.sin(angle), 0, 1)[..., None]
    image = (1 - t) * first + t * second
  elif kind == "noise":
    image = first + rng.uniform(0.05, 0.35) * rng.standard_normal((size, size, 3))
  else:  # texture: octaves of value noise through a three-colour palette
    octaves = sum(0.5 ** k * _value_noise(rng, size, 2 ** (k + 1)) for k in range(4)) / 1.875
    palette = np.stack([first, second, rng.uniform(size=3)])
    t = np.clip((octaves - octaves.min()) / max(np.ptp(octaves), 1e-6), 0, 1) * 2
    lower = np.minimum(t.astype(int), 1)
    frac = (t - lower)[..., None]
    image = (1 - frac) * palette[lower] + frac * palette[lower + 1]
  return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def composite(rgba, background):
  """The object over `background` in RGB; alpha (the mask) unchanged.

  Args:
    rgba: [S, S, 4] uint8 render on a transparent background.
    background: [S, S, 3] uint8.
  Returns:
    [S, S, 4] uint8.
  """
  alpha = rgba[..., 3:].astype(np.float32) / 255.0
  rgb = alpha * rgba[..., :3] + (1 - alpha) * background
  return np.concatenate([np.round(rgb).astype(np.uint8), rgba[..., 3:]], axis=-1)
