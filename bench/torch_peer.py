"""The same KeypointNet train step in PyTorch (CPU), the peer `bench/train_step.py` times ours against.

A bench extra, never a dependency of the library: `pip install torch` (the machine's page says which build).
Same network as `keypointnet_tf.model` (both backbones: 12 dilated 3x3 conv without bias + batch norm without scale
+ LeakyReLU 0.1; the 3x3 heads; spatial softmax; the flag channel), same six losses as `keypointnet_tf.losses`
(relative pose through a batched 3x3 SVD, consistency, separation, silhouette, variance, orientation; pose noise
0.1), global-norm clipping at 5 and Adam, for both views of a batch. `step_loss_matches_tensorflow` checks the
port: with the TensorFlow model's weights copied in and no pose noise, the loss of one batch matches ours.
"""

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

RATES = (1, 1, 2, 4, 8, 16, 1, 2, 4, 8, 16, 1)


class Backbone(nn.Module):
  """[B, C_in, H, W] -> [B, filters, H, W]."""

  def __init__(self, c_in, filters, momentum=0.99):
    super().__init__()
    self.convs = nn.ModuleList()
    self.norms = nn.ModuleList()
    self.betas = nn.ParameterList()
    for i, rate in enumerate(RATES):
      self.convs.append(nn.Conv2d(c_in if i == 0 else filters, filters, 3, padding=rate, dilation=rate, bias=False))
      self.norms.append(nn.BatchNorm2d(filters, eps=1e-3, momentum=1.0 - momentum, affine=False))
      self.betas.append(nn.Parameter(torch.zeros(filters)))

  def forward(self, x):
    for conv, norm, beta in zip(self.convs, self.norms, self.betas):
      x = F.leaky_relu(norm(conv(x)) + beta[None, :, None, None], 0.1)
    return x


def ndc_grid(height, width):
  u = (torch.arange(width, dtype=torch.float32) + 0.5) / (width / 2) - 1
  v = -((torch.arange(height, dtype=torch.float32) + 0.5) / (height / 2) - 1)
  vv, uu = torch.meshgrid(v, u, indexing="ij")
  return torch.stack([uu, vv], -1)  # [H, W, 2]


def spatial_softmax(logits):
  """[B, C, H, W] -> prob [B, C, H, W], uv [B, C, 2]."""
  b, c, h, w = logits.shape
  prob = F.softmax(logits.reshape(b, c, h * w), -1)
  uv = prob @ ndc_grid(h, w).reshape(h * w, 2)
  return prob.reshape(b, c, h, w), uv


class KeypointNet(nn.Module):
  def __init__(self, num_keypoints=10, filters=64, camera_distance=30.0, momentum=0.99):
    super().__init__()
    self.orientation_backbone = Backbone(3, filters // 2, momentum)
    self.orientation_head = nn.Conv2d(filters // 2, 2, 3, padding=1)
    self.keypoint_backbone = Backbone(4, filters, momentum)
    self.uv_head = nn.Conv2d(filters, num_keypoints, 3, padding=1)
    self.z_head = nn.Conv2d(filters, num_keypoints, 3, padding=1)
    self.camera_distance = camera_distance

  def forward(self, images, flag):
    """images [B, 4, H, W] RGBA; flag [B] (the ground-truth flag, as training with flag_mix 1)."""
    rgb = images[:, :3]
    _, orientation = spatial_softmax(self.orientation_head(self.orientation_backbone(rgb)))
    flag_channel = torch.ones_like(rgb[:, :1]) * flag[:, None, None, None]
    features = self.keypoint_backbone(torch.cat([rgb, flag_channel], 1))
    prob, uv = spatial_softmax(self.uv_head(features))
    z = (prob * (self.z_head(features) - self.camera_distance)).sum((2, 3))
    return {"uv": uv, "z": z, "uvz": torch.cat([uv, z[..., None]], -1), "prob": prob, "orientation": orientation}


def unproject(uvz, focal):
  z = uvz[..., 2:3]
  return torch.cat([-uvz[..., :2] * z / focal, z], -1)


def project(xyz, focal):
  z = xyz[..., 2:3]
  return torch.cat([-focal * xyz[..., :2] / (z + 1e-8), z], -1)


def transform(matrix, xyz):
  return torch.einsum("bij,bkj->bki", matrix[:, :3, :3], xyz) + matrix[:, None, :3, 3]


def estimate_rotation(xyz0, xyz1):
  c0 = xyz0 - xyz0.mean(1, keepdim=True)
  c1 = xyz1 - xyz1.mean(1, keepdim=True)
  u, _, vh = torch.linalg.svd(c0.transpose(1, 2) @ c1)  # covariance = U S V^T
  v = vh.transpose(1, 2)
  det = torch.linalg.det((v @ u.transpose(1, 2)).detach())
  fix = torch.diag_embed(torch.stack([torch.ones_like(det), torch.ones_like(det), det], -1))
  return v @ fix @ u.transpose(1, 2)


def angular_distance(r_a, r_b):
  chordal = torch.sqrt(((r_a - r_b) ** 2).sum((1, 2)) + 1e-12)
  return 2 * torch.asin(torch.clamp(chordal / (2 * math.sqrt(2)), 0, 1 - 1e-7))


def total_loss(out0, out1, batch, noise=0.1, delta=0.05):
  """The paper's six terms with the released code's weights (as keypointnet_tf.losses.total_loss)."""
  focal = batch["focal"][:, None, None]
  xyz = [unproject(o["uvz"], focal) for o in (out0, out1)]
  if noise:
    xyz_noisy = [x + noise * torch.randn_like(x) for x in xyz]
  else:
    xyz_noisy = xyz
  rotation = batch["mv1"][:, :3, :3] @ batch["mv0"][:, :3, :3].transpose(1, 2)
  pose = angular_distance(estimate_rotation(*xyz_noisy), rotation).mean()

  def reprojection(uvz_a, uv_b, mvi_a, mv_b):
    xyz_b = transform(mv_b, transform(mvi_a, unproject(uvz_a, focal)))
    return ((project(xyz_b, focal)[..., :2] - uv_b) ** 2).sum(-1).mean()

  consistency = (reprojection(out0["uvz"], out1["uv"], batch["mvi0"], batch["mv1"]) +
                 reprojection(out1["uvz"], out0["uv"], batch["mvi1"], batch["mv0"]))
  separation = 0
  silhouette = 0
  variance = 0
  orientation = 0
  ends = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
  for out, x, image, mv in ((out0, xyz[0], batch["image0"], batch["mv0"]),
                            (out1, xyz[1], batch["image1"], batch["mv1"])):
    b, k, h, w = out["prob"].shape
    distance = ((x[:, :, None] - x[:, None]) ** 2).sum(-1)
    separation = separation + F.relu(delta - distance).sum() / (2 * b * k)
    mask = (image[:, 3] > 0).float()
    silhouette = silhouette - torch.log((out["prob"] * mask[:, None]).sum((2, 3)) + 1e-12).mean()
    diff = ndc_grid(h, w)[None, None] - out["uv"][:, :, None, None]
    variance = variance + (out["prob"] * (diff ** 2).sum(-1)).sum((2, 3)).mean()
    target = project(transform(mv, ends.expand(b, 2, 3)), focal)[..., :2]
    orientation = orientation + ((out["orientation"] - target) ** 2).mean()
  return 0.2 * pose + consistency + separation + silhouette + orientation + 0.5 * variance


def to_torch_batch(batch):
  """A NumPy batch in the input pipeline's format (images [B, H, W, 4]) -> torch tensors (images NCHW)."""
  out = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in batch.items()
         if k not in ("keypoints", "keypoint_valid")}
  for key in ("image0", "image1"):
    out[key] = out[key].permute(0, 3, 1, 2).contiguous()
  return out


def make_step(net, learning_rate=1e-3, clip_norm=5.0):
  optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate, eps=1e-8)

  def step(batch):
    optimizer.zero_grad(set_to_none=True)
    out0 = net(batch["image0"], batch["orientation_flag0"])
    out1 = net(batch["image1"], batch["orientation_flag1"])
    loss = total_loss(out0, out1, batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), clip_norm)
    optimizer.step()
    return loss

  return step


def copy_weights_from_tensorflow(net, tf_net):
  """Copies a built keypointnet_tf KeypointNet's weights into `net` (kernels HWIO -> OIHW)."""
  def kernel(layer):
    return torch.from_numpy(np.transpose(np.asarray(layer.kernel), (3, 2, 0, 1)).copy())

  with torch.no_grad():
    for mine, theirs in ((net.orientation_backbone, tf_net.orientation_backbone),
                         (net.keypoint_backbone, tf_net.keypoint_backbone)):
      for conv, beta, tf_conv, tf_norm in zip(mine.convs, mine.betas, theirs.convs, theirs.norms):
        conv.weight.copy_(kernel(tf_conv))
        beta.copy_(torch.from_numpy(np.asarray(tf_norm.beta)))
    for mine, theirs in ((net.orientation_head, tf_net.orientation_head), (net.uv_head, tf_net.uv_head),
                         (net.z_head, tf_net.z_head)):
      mine.weight.copy_(kernel(theirs))
      mine.bias.copy_(torch.from_numpy(np.asarray(theirs.bias)))


def step_loss_matches_tensorflow(tf_net, batch, tf_loss):
  """The torch loss of `batch` (training-mode batch norm, no pose noise) with tf_net's weights, and TF's value."""
  net = KeypointNet(tf_net.num_keypoints, tf_net.num_filters, tf_net.camera_distance)
  copy_weights_from_tensorflow(net, tf_net)
  tb = to_torch_batch(batch)
  with torch.no_grad():
    loss = total_loss(net(tb["image0"], tb["orientation_flag0"]), net(tb["image1"], tb["orientation_flag1"]), tb,
                      noise=0.0)
  return float(loss), float(tf_loss)
