"""Heatmap targets, the training loss, and decoding a heatmap into a landmark with a confidence.

Each output channel is read as a spatial distribution: a softmax over the
crop's voxels. The target is the Gaussian kernel at the true landmark
(normalised to sum 1), the loss is the cross-entropy between the two (the
study's voxel-class formulation, per landmark, with Gaussian-soft labels).

Decoding: arg-max voxel, refined by the probability-weighted centroid inside a
ball of `radius` voxels around it (a local soft-argmax, sub-voxel and robust
to a far secondary mode). Confidence = the probability mass inside that ball:
about 0.97 for a clean Gaussian at radius 3σ, low when the map is flat or split.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def gaussian_targets(points_zyx: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """(N, K, 3) crop indices → (N, K, size, size, size) Gaussian kernels, each summing to 1."""
    r = torch.arange(size, dtype=points_zyx.dtype, device=points_zyx.device)
    p = points_zyx[..., None]  # (N, K, 3, 1)
    g = torch.exp(-((r - p) ** 2) / (2.0 * sigma**2))  # (N, K, 3, size)
    t = g[:, :, 0, :, None, None] * g[:, :, 1, None, :, None] * g[:, :, 2, None, None, :]
    return t / t.sum(dim=(2, 3, 4), keepdim=True).clamp_min(1e-12)


def heatmap_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy between target distributions and the per-channel spatial softmax (mean over N, K)."""
    n, k = logits.shape[:2]
    logp = F.log_softmax(logits.float().reshape(n, k, -1), dim=-1)
    return -(targets.reshape(n, k, -1) * logp).sum(dim=-1).mean()


def decode(logits: torch.Tensor, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """(K, D, H, W) logits → points (K, 3) crop indices (z, y, x) and confidences (K,)."""
    k = logits.shape[0]
    shape = logits.shape[1:]
    prob = F.softmax(logits.float().reshape(k, -1), dim=-1).reshape(k, *shape)
    flat = prob.reshape(k, -1).argmax(dim=-1)
    _, h, w = shape  # flat index → (z, y, x) by hand: torch.unravel_index imports sympy (0.6 s per process)
    peak = torch.stack([flat // (h * w), (flat // w) % h, flat % w], dim=-1).to(prob.dtype)  # (K, 3)
    axes = [torch.arange(s, dtype=prob.dtype, device=prob.device) for s in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (D, H, W, 3)
    points, conf = [], []
    for c in range(k):
        ball = ((grid - peak[c]) ** 2).sum(-1) <= radius**2
        w = prob[c] * ball
        mass = w.sum()
        points.append((w[..., None] * grid).sum(dim=(0, 1, 2)) / mass.clamp_min(1e-12))
        conf.append(mass)
    return torch.stack(points).cpu().numpy().astype(float), torch.stack(conf).cpu().numpy().astype(float)
