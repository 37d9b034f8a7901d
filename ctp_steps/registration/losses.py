"""Unsupervised registration losses: local NCC (robust to contrast change), soft Dice, field smoothness."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def local_ncc(a: torch.Tensor, b: torch.Tensor, window: int = 9, eps: float = 1e-5) -> torch.Tensor:
    """Mean squared local normalised cross-correlation of (B, 1, z, y, x) images, in [0, 1].

    Squared as in VoxelMorph: invariant to a local affine change of intensity
    (including a flip of edge polarity), so frames with different enhancement compare.
    """
    window = min(window, *a.shape[2:])
    window -= 1 - window % 2  # odd, at most the image

    def box(x: torch.Tensor) -> torch.Tensor:  # separable box mean: 3·window operations per voxel
        for k in ((window, 1, 1), (1, window, 1), (1, 1, window)):
            x = F.avg_pool3d(x, k, stride=1, padding=tuple(w // 2 for w in k), count_include_pad=False)
        return x

    mu_a, mu_b = box(a), box(b)
    var_a = (box(a * a) - mu_a * mu_a).clamp(min=0)
    var_b = (box(b * b) - mu_b * mu_b).clamp(min=0)
    cov = box(a * b) - mu_a * mu_b
    return (cov * cov / (var_a * var_b + eps)).mean()


def soft_dice(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Soft Dice of (B, 1, ...) masks in [0, 1], averaged over the batch."""
    dims = tuple(range(1, a.ndim))
    inter = (a * b).sum(dims)
    return ((2 * inter + eps) / (a.sum(dims) + b.sum(dims) + eps)).mean()


def gradient_l2(field: torch.Tensor) -> torch.Tensor:
    """Mean squared forward difference of a (B, 3, z, y, x) field along each spatial axis."""
    dz = field[:, :, 1:] - field[:, :, :-1]
    dy = field[:, :, :, 1:] - field[:, :, :, :-1]
    dx = field[..., 1:] - field[..., :-1]
    return (dz.pow(2).mean() + dy.pow(2).mean() + dx.pow(2).mean()) / 3.0


def registration_loss(
    warped: torch.Tensor,
    fixed: torch.Tensor,
    warped_mask: torch.Tensor,
    fixed_mask: torch.Tensor,
    field: torch.Tensor,
    weights: tuple[float, float, float],
    window: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    """w_sim·(1 − LNCC²) + w_dice·(1 − Dice) + w_smooth·|∇u|²; returns the total and its parts."""
    ncc = local_ncc(warped, fixed, window)
    dice = soft_dice(warped_mask, fixed_mask)
    smooth = gradient_l2(field)
    w_sim, w_dice, w_smooth = weights
    total = w_sim * (1 - ncc) + w_dice * (1 - dice) + w_smooth * smooth
    parts = {"loss": total, "ncc": ncc, "dice": dice, "smooth": smooth}
    return total, {k: float(v.detach()) for k, v in parts.items()}
