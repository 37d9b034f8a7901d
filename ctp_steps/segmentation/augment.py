"""Domain randomisation of training crops: the nets must see more than one generator's images.

A crop is drawn from a training phantom at the network's grid, then changed in
ways a scanner, protocol or patient changes an image, so that a net never sees
the same contrast, sharpness or pose twice (SynthSeg's idea, with nnU-Net's
published augmentation ranges where one exists):

- pose and size: rotation up to ±30° about each axis and scaling 0.7–1.4
  (nnU-Net's 3-D defaults), plus a per-axis stretch (anisotropic anatomy);
- contrast: the HU around soft tissue (40 HU) scaled by 0.7–1.4 (iodine HU
  roughly doubles from 120 to 70 kVp; the tube voltage and the bolus both vary),
  a HU offset, and nnU-Net's gamma (0.7–1.5) on the windowed intensities;
- sharpness: Gaussian blur (σ 0.5–1.0 voxel) or a simulated lower resolution
  (zoom 0.5–1: down and back up), nnU-Net's ranges: other reconstructions,
  other native voxels resampled to the net's grid;
- noise: white or spatially correlated (Gaussian-filtered, σ up to 1.5 voxels),
  at an SD drawn per crop.

Every range is a generic imaging range, none is read off the training phantom;
the ranges live in `AugmentationConfig` and the model card prints them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ctp_steps.segmentation.config import AugmentationConfig

SOFT_TISSUE_HU = 40.0  # pivot of the contrast scaling: unenhanced blood and muscle sit near it


def rotation_matrix(angles_rad: np.ndarray) -> np.ndarray:
    """Product of rotations about x, y, z (in that order) by the given angles."""
    rot = np.eye(3)
    for axis, a in enumerate(angles_rad):
        c, s = math.cos(a), math.sin(a)
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rot = r @ rot
    return rot


def random_affine(rng: np.random.Generator, aug: AugmentationConfig, extent_mm: np.ndarray) -> np.ndarray:
    """3x3 matrix on grid_sample coordinates (x, y, z in [-1, 1]): a physical rotation, scaling and stretch.

    `extent_mm` is the crop's physical size along (x, y, z); the matrix maps output to input coordinates,
    so a scale above 1 shows the anatomy larger.
    """
    rot = rotation_matrix(np.radians(rng.uniform(-aug.rotation_deg, aug.rotation_deg, size=3)))
    scale = rng.uniform(*aug.scale) * rng.uniform(1 - aug.stretch, 1 + aug.stretch, size=3)
    m = rot @ np.diag(1 / scale)
    half = np.asarray(extent_mm, dtype=float) / 2
    return np.diag(1 / half) @ m @ np.diag(half)


def gaussian_kernel(sigma_vox: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma_vox)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma_vox**2))
    return k / k.sum()


def blur(volume: torch.Tensor, sigma_vox: float) -> torch.Tensor:
    """Separable Gaussian blur of (C, z, y, x), edges replicated."""
    if sigma_vox <= 0:
        return volume
    k = gaussian_kernel(sigma_vox)
    r = (len(k) - 1) // 2
    out = volume[:, None]  # (C, 1, z, y, x)
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = len(k)
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
        out = F.conv3d(F.pad(out, pad, mode="replicate"), k.view(shape))
    return out[:, 0]


def lower_resolution(volume: torch.Tensor, zoom: float) -> torch.Tensor:
    """(C, z, y, x) sampled down by `zoom` (nearest) and back up (trilinear): a coarser acquisition."""
    size = volume.shape[-3:]
    small = [max(2, int(round(n * zoom))) for n in size]
    down = F.interpolate(volume[None], size=small, mode="nearest")
    return F.interpolate(down, size=list(size), mode="trilinear", align_corners=False)[0]


def correlated_noise(rng: np.random.Generator, shape, sd: float, sigma_vox: float) -> torch.Tensor:
    """Gaussian noise of the given SD, blurred by σ voxels (white for σ = 0) and rescaled to keep its SD."""
    noise = torch.from_numpy(rng.normal(size=shape).astype(np.float32))
    if sigma_vox > 0:
        noise = blur(noise[None], sigma_vox)[0]
        noise = noise / noise.std().clamp_min(1e-6)
    return noise * sd


def augment_hu(image: torch.Tensor, rng: np.random.Generator, aug: AugmentationConfig) -> torch.Tensor:
    """Contrast, sharpness and noise of one (C, z, y, x) crop in HU (every channel changed alike)."""
    gain = rng.uniform(*aug.contrast_gain)
    image = SOFT_TISSUE_HU + gain * (image - SOFT_TISSUE_HU) + rng.uniform(-aug.offset_hu, aug.offset_hu)
    if rng.random() < aug.blur_probability:
        image = blur(image, rng.uniform(*aug.blur_sigma_vox))
    if rng.random() < aug.low_resolution_probability:
        image = lower_resolution(image, rng.uniform(*aug.low_resolution_zoom))
    sd = rng.uniform(*aug.noise_sd_hu)
    if sd > 0:
        sigma = rng.uniform(0, aug.noise_correlation_max_vox)
        image = image + correlated_noise(rng, tuple(image.shape[-3:]), sd, sigma)[None]
    return image


def augment_gamma(x: torch.Tensor, rng: np.random.Generator, aug: AugmentationConfig) -> torch.Tensor:
    """nnU-Net's gamma on an input already windowed to [-1, 1]: x ↦ 2·((x+1)/2)^γ − 1."""
    if rng.random() >= aug.gamma_probability:
        return x
    gamma = rng.uniform(*aug.gamma)
    return 2 * ((x + 1) / 2).clamp(0, 1) ** gamma - 1
