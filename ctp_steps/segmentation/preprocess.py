"""What the network sees: windowed intensities, optional temporal context, its own voxel spacing.

Shared by training and inference so both see exactly the same input. All
functions are torch, on whatever device the tensors live.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normalize_hu(hu: torch.Tensor, window: tuple[float, float]) -> torch.Tensor:
    """HU clipped to the window and mapped linearly to [-1, 1]."""
    lo, hi = window
    return (hu.float().clamp(lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)


def frame_inputs(frames_hu: torch.Tensor, window: tuple[float, float], context: str) -> torch.Tensor:
    """(t, z, y, x) HU → (t, channels, z, y, x) network inputs of every frame.

    context `none`: the frame alone; `temporal_max`: the frame and the series'
    voxelwise maximum over time (the same for every frame of the patient).
    """
    x = normalize_hu(frames_hu, window)[:, None]
    if context == "none":
        return x
    if context == "temporal_max":
        ctx = x.amax(dim=0, keepdim=True).expand_as(x)
        return torch.cat([x, ctx], dim=1)
    raise ValueError(f"unknown frames context {context!r}")


def in_channels(context: str) -> int:
    return {"none": 1, "temporal_max": 2}[context]


def resampled_size(shape_zyx, spacing_zyx, target_spacing_zyx) -> tuple[int, int, int]:
    """Grid size covering the same field of view at the target spacing."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape_zyx, spacing_zyx, target_spacing_zyx))


def needs_resampling(spacing_zyx, target_spacing_zyx, rtol: float = 0.01) -> bool:
    return any(abs(s - t) > rtol * t for s, t in zip(spacing_zyx, target_spacing_zyx))


def resample(x: torch.Tensor, size_zyx: tuple[int, int, int]) -> torch.Tensor:
    """Trilinear resampling of (N, C, z, y, x) onto a grid of the same field of view (voxel edges aligned)."""
    if tuple(x.shape[2:]) == tuple(size_zyx):
        return x
    return F.interpolate(x, size=tuple(size_zyx), mode="trilinear", align_corners=False)
