"""Where a run's keypoints sit relative to the part each tracks: sharpness, image-plane offset, depth (a diagnostic).

Examples:
  python bench/keypoint_placement.py --model_dir=/tmp/trials/silwarm4k_12k_seed0
  python bench/keypoint_placement.py --model_dir=RUN --checkpoint=RUN/milestones/ckpt-5000   # an earlier step
Over both views of every test pair, for each keypoint k and the ground-truth part p nearest to it in most views
(evaluation.keypoint_parts; data with ground-truth keypoints only), prints: the share of views where p is nearest;
the heatmap's root-mean-square radius around its mean, in pixels (under 1: a sharp peak, so the soft-argmax is not
what places the keypoint); the median 3D distance to p when (u, v) is the heatmap's expectation and when it is its
highest pixel; the median distance to p in the image plane (object units at the object's depth); and the slope of
k's depth, relative to the mean depth of the view's keypoints, against p's relative depth (1 when k follows p in
depth, under 1 when it sits nearer the object's centre in depth). On the procedural categories, which are mirror
symmetric, also: k's median distance from the symmetry plane, its share with each part and its mirror image
counted as one (a keypoint on the plane between two mirror parts flips between them from view to view), and how
many keypoints sit nearer the plane than every part off it does.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np

from keypointnet_tf import evaluation
from keypointnet_tf import geometry
from keypointnet_tf import runs
from keypointnet_datasets.shapenet_pairs import procedural

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Training run directory.", required=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Checkpoint prefix to measure instead of the run's latest, "
                                  "e.g. <model_dir>/milestones/ckpt-5000.")


def main(argv):
  del argv
  net, config = runs.load_trained_model(_MODEL_DIR.value, _CHECKPOINT.value)
  dataset = runs.ordered_split(config)
  size = config.image_size
  grid = geometry.ndc_grid(size, size).numpy().reshape(size * size, 2)  # [HW, 2]
  found = {name: [] for name in ("soft", "peak", "parts_camera", "valid", "parts", "z", "uv", "radius", "focal")}
  for batch in dataset:
    for view in ("0", "1"):
      out = net(batch["image" + view], training=False)
      prob = out["prob"].numpy().reshape(*out["prob"].shape[:2], -1)  # [B, K, HW]
      uv = out["uv"].numpy()
      offsets = np.sum((grid[None, None] - uv[:, :, None]) ** 2, axis=-1)  # [B, K, HW]
      found["radius"].append(np.sqrt(np.sum(prob * offsets, axis=-1)) * size / 2)  # NDC spans 2 = size pixels
      z = out["z"].numpy()[..., None]
      for name, keypoint_uv in (("soft", uv), ("peak", grid[prob.argmax(axis=-1)])):
        camera = geometry.unproject(np.concatenate([keypoint_uv, z], axis=-1).astype(np.float32), batch["focal"])
        found[name].append(geometry.transform_points(batch["mvi" + view], camera).numpy())
      found["parts_camera"].append(geometry.transform_points(batch["mv" + view], batch["keypoints"]).numpy())
      found["parts"].append(batch["keypoints"].numpy())
      found["valid"].append(batch["keypoint_valid"].numpy())
      found["z"].append(z[..., 0])
      found["uv"].append(uv)
      found["focal"].append(np.broadcast_to(batch["focal"].numpy(), z.shape[:1]))
  a = {name: np.concatenate(values) for name, values in found.items()}
  if not a["parts"].shape[1]:
    raise SystemExit(f"{_MODEL_DIR.value}: the data has no ground-truth keypoints.")
  names = procedural.KEYPOINT_NAMES.get(config.category, ())
  mirror = procedural.mirror_parts(config.category) if len(names) == a["parts"].shape[1] else None
  placement = evaluation.keypoint_parts(a["soft"], a["parts"], a["valid"], mirror=mirror)
  across = np.abs(a["soft"][..., procedural.SYMMETRY_AXIS])  # [V, K] distance from the symmetry plane
  # Image-plane offsets in object units at the keypoint's depth: NDC * |z| / focal.
  scale = -a["z"] / a["focal"][:, None]  # [V, K]
  part_uv = geometry.project(a["parts_camera"].astype(np.float32), a["focal"]).numpy()[..., :2]
  print(f"{_CHECKPOINT.value or _MODEL_DIR.value} ({config.category}, {size} px, {len(a['z'])} views):")
  if mirror is not None:
    off_plane = [np.median(np.abs(a["parts"][a["valid"][:, p], p, procedural.SYMMETRY_AXIS]))
                 for p in range(len(names)) if mirror[p] != p]
    on_plane = int(np.sum(np.median(across, axis=0) < min(off_plane)))
    shares = [(k["share"], k["share_mirrored"]) for k in placement["keypoints"]]
    print(f"  forward half of DAS {np.mean([s for s, _ in shares]):.3f}, {np.mean([m for _, m in shares]):.3f} with "
          f"mirror parts as one; {on_plane} of {len(shares)} keypoints nearer the symmetry plane than every part "
          f"off it (the nearest of those parts: median {min(off_plane):.2f} from it)")
  for k, keypoint in enumerate(placement["keypoints"]):
    p, seen = keypoint["part"], a["valid"][:, keypoint["part"]]
    soft, peak = (np.median(np.linalg.norm(a[name][seen, k] - a["parts"][seen, p], axis=-1)) for name in ("soft", "peak"))
    image = np.median(np.linalg.norm(a["uv"][seen, k] - part_uv[seen, p], axis=-1) * scale[seen, k])
    depth_k = a["z"][seen, k] - a["z"][seen].mean(axis=1)
    depth_p = a["parts_camera"][seen, p, 2] - a["parts_camera"][seen, :, 2].mean(axis=1)
    slope = np.polyfit(depth_p, depth_k, 1)[0]
    print(f"  keypoint {k}: part {p} in {keypoint['share']:.0%} of views; heatmap radius "
          f"{a['radius'][seen, k].mean():.2f} px; to the part {soft:.2f} (expectation) / {peak:.2f} (peak pixel), "
          f"{image:.2f} in the image plane; depth slope {slope:.2f}" +
          ("" if mirror is None else f"; {np.median(across[:, k]):.2f} from the symmetry plane, part or its mirror "
           f"in {keypoint['share_mirrored']:.0%} of views"))


if __name__ == "__main__":
  app.run(main)
