"""Image formation: contrast-enhanced fine anatomy → motion warp → partial volume → PSF → noise.

Each frame is built at the reference anatomy on the padded fine grid, pulled
back through that frame's displacement (trilinear, torch grid_sample),
block-averaged to the reconstruction grid and blurred by the scanner PSF. The
truth labels of a frame go through the same warp as one-hot volume fractions,
so with zero motion they equal the reference labels exactly.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from ctp_steps.phantom.anatomy import LABEL_OF_CLASS, N_LABELS, Scene
from ctp_steps.phantom.grid import PhantomGrid
from ctp_steps.phantom.motion import displacement_field_mm
from ctp_steps.types import Geometry


def _sampling_base(grid: PhantomGrid) -> tuple[torch.Tensor, torch.Tensor, Geometry]:
    """grid_sample coordinates of the unmoved fine voxels of the output box, the mm → coordinate
    scale per world axis, and the geometry of those voxels."""
    box = grid.output_box()
    n = np.asarray(grid.fine_shape, dtype=float)  # (z, y, x)
    axes = [2.0 * np.arange(b.start, b.stop) / (m - 1.0) - 1.0 for b, m in zip(box, n)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    base = torch.from_numpy(np.stack([xx, yy, zz], axis=-1).astype(np.float32))
    fine = grid.fine_geometry
    scale = 2.0 / ((n[::-1] - 1.0) * np.asarray(fine.spacing))  # per world x, y, z (identity direction)
    origin = np.asarray(fine.origin) + np.array([b.start for b in box[::-1]]) * np.asarray(fine.spacing)
    box_geometry = Geometry(tuple(origin.tolist()), fine.spacing, fine.direction)
    return base, torch.from_numpy(scale.astype(np.float32)), box_geometry


def render_frames(
    scene: Scene,
    grid: PhantomGrid,
    static_hu: np.ndarray,
    class_enhancement: np.ndarray,
    myo_enhancement: np.ndarray,
    motion: list[dict],
    psf_sigma_mm: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free frames (t, z, y, x) float32 HU and the labels of each frame (t, z, y, x) uint8.

    class_enhancement: (frames, classes) HU added to every voxel of a class;
    myo_enhancement: (frames, myocardium voxels) HU per myocardium voxel of scene.heart.
    Intensity and one-hot labels are warped together (trilinear); a frame's
    label is the one with the largest volume fraction in the voxel, counted in
    fine voxels and rounded to 1e-3 so that ties break as in block_majority.
    """
    k = grid.factor
    classes = scene.classes
    myo = scene.myo_index()
    base_hu = static_hu[classes]
    labels = LABEL_OF_CLASS[classes]
    channels = torch.empty((1, N_LABELS, *classes.shape), dtype=torch.float32)  # intensity, then labels 1..4
    for lab in range(1, N_LABELS):
        channels[0, lab] = torch.from_numpy(labels == lab)
    base, scale, box_geometry = _sampling_base(grid)
    sigma = psf_sigma_mm / grid.spacing_zyx
    n_frames = len(motion)
    frames = np.empty((n_frames, *grid.shape), dtype=np.float32)
    frame_labels = np.empty((n_frames, *grid.shape), dtype=np.uint8)
    for f in range(n_frames):
        vol = base_hu + class_enhancement[f].astype(np.float32)[classes]
        vol.ravel()[myo] += myo_enhancement[f].astype(np.float32)
        channels[0, 0] = torch.from_numpy(vol)
        u = torch.from_numpy(displacement_field_mm(motion[f], box_geometry, base.shape[:3]))
        warped = F.grid_sample(
            channels, (base + u * scale)[None], mode="bilinear", padding_mode="border", align_corners=True
        )
        pooled = F.avg_pool3d(warped, k)[0].numpy()
        frames[f] = gaussian_filter(pooled[0], sigma, mode="nearest")
        counts = np.round(pooled[1:] * k**3, 3)
        frame_labels[f] = np.argmax(
            np.concatenate([k**3 - counts.sum(axis=0, keepdims=True), counts]), axis=0
        )
    return frames, frame_labels


def add_noise(
    frames: np.ndarray, sd_hu: float, rng: np.random.Generator, correlation_sigma_vox: float
) -> np.ndarray:
    """Gaussian noise of SD sd_hu, blurred in-plane (CT noise is correlated), rescaled to keep the SD."""
    noise = rng.standard_normal(frames.shape, dtype=np.float32)
    if correlation_sigma_vox > 0:
        sigma = (0, 0, correlation_sigma_vox, correlation_sigma_vox)
        noise = gaussian_filter(noise, sigma, mode="wrap")
        impulse = np.zeros((1, 1, 33, 33), dtype=np.float64)
        impulse[0, 0, 16, 16] = 1.0
        noise /= np.float32(np.sqrt((gaussian_filter(impulse, sigma) ** 2).sum()))
    return frames + np.float32(sd_hu) * noise
