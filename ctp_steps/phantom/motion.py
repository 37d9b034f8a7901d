"""Frame-to-frame motion: a rigid shift (mostly breathing, along z) plus smooth Gaussian-bump modes.

Convention: frame i at world point p shows the reference (un-moved) anatomy at
p + u_i(p), i.e. u_i is the pull-back displacement that resamples the
reference into frame i; a structure at reference position q appears in frame i
near q − u_i(q). One frame's motion is a small JSON-able dict:
    {"translation_mm": [x, y, z],
     "modes": [{"center_mm": [x, y, z], "sigma_mm": s, "vector_mm": [x, y, z]}, ...]}
    u(p) = translation + Σ_m vector_m · exp(−|p − center_m|² / (2 sigma_m²))   (world LPS mm)
Mode gradients stay below |vector|/sigma ≈ 0.1, so every field is invertible.
"""

from __future__ import annotations

import numpy as np

from ctp_steps.phantom.params import PhantomParams, uniform
from ctp_steps.types import Geometry


def draw_motion(
    rng: np.random.Generator, params: PhantomParams, heart_center: np.ndarray, n_frames: int
) -> list[dict]:
    """Per-frame motion; a per-patient severity in [0.2, 1] scales all amplitudes."""
    severity = rng.uniform(0.2, 1.0)
    centers = [heart_center + rng.uniform(-20.0, 20.0, size=3) for _ in range(params.n_deformation_modes)]
    sigmas = [uniform(rng, params.deformation_sigma_mm) for _ in range(params.n_deformation_modes)]
    frames = []
    for _ in range(n_frames):
        shift = (
            severity * params.rigid_shift_max_mm * rng.uniform(-1.0, 1.0, size=3) * np.array([0.4, 0.4, 1.0])
        )
        modes = []
        for c, s in zip(centers, sigmas):
            direction = rng.normal(size=3)
            size = severity * params.deformation_max_mm * rng.uniform(0.0, 1.0)
            modes.append(
                {
                    "center_mm": c.tolist(),
                    "sigma_mm": s,
                    "vector_mm": (size * direction / np.linalg.norm(direction)).tolist(),
                }
            )
        frames.append({"translation_mm": shift.tolist(), "modes": modes})
    return frames


def displacement_field_mm(motion_params: dict, geometry: Geometry, shape_zyx) -> np.ndarray:
    """u(p) (z, y, x, 3) float32 at the voxel centres of a grid; last axis = world (x, y, z) mm.

    Gaussians are evaluated as products of 1-D factors along the index axes,
    exact for any orthonormal direction since |D·v + w| = |v + Dᵀ·w|.
    """
    nz, ny, nx = (int(n) for n in shape_zyx)
    d = geometry.direction_matrix
    sp = np.asarray(geometry.spacing, dtype=float)
    origin = np.asarray(geometry.origin, dtype=float)
    index = [np.arange(n, dtype=float) * s for n, s in zip((nx, ny, nz), sp)]
    u = [np.full((nz, ny, nx), t, dtype=np.float32) for t in motion_params["translation_mm"]]
    for mode in motion_params["modes"]:
        off = d.T @ (origin - np.asarray(mode["center_mm"], dtype=float))
        g = [
            np.exp(-((off[a] + index[a]) ** 2) / (2.0 * mode["sigma_mm"] ** 2)).astype(np.float32)
            for a in range(3)
        ]
        bump = g[2][:, None, None] * g[1][None, :, None] * g[0][None, None, :]
        for c, v in enumerate(mode["vector_mm"]):
            u[c] += np.float32(v) * bump
    return np.stack(u, axis=-1)


# The inverse: a moved frame resampled back onto the un-moved anatomy with the TRUE motion.
# Used by the oracle registration and by the segmentation training data (never by a pipeline stage).


def world_grid(geometry: Geometry, shape_zyx: tuple[int, int, int]) -> np.ndarray:
    """World coordinates (z, y, x, 3) of every voxel centre."""
    z, y, x = np.meshgrid(*(np.arange(n, dtype=float) for n in shape_zyx), indexing="ij")
    return geometry.index_to_world(np.stack([x, y, z], axis=-1))


def sample(volume: np.ndarray, geometry: Geometry, points_world: np.ndarray, order: int = 1) -> np.ndarray:
    """Trilinear (or nearest) interpolation of a (z, y, x) volume at world points (..., 3)."""
    from scipy import ndimage

    ijk = geometry.world_to_index(points_world)
    coords = np.moveaxis(ijk[..., ::-1], -1, 0)  # (3, ...) in (z, y, x) order
    return ndimage.map_coordinates(volume, coords, order=order, mode="nearest")


def undo_motion(
    frame: np.ndarray, displacement_mm: np.ndarray, geometry: Geometry, iterations: int = 4
) -> np.ndarray:
    """Resample a moved frame back onto the reference anatomy.

    The phantom's convention: the frame at world p shows the anatomy at p + u(p).
    The anatomy point q is therefore seen at the p solving p + u(p) = q, found by
    fixed-point iteration p ← q − u(p) (converges: u is smooth and small).
    """
    q = world_grid(geometry, frame.shape)
    p = q.copy()
    for _ in range(iterations):
        u = np.stack([sample(displacement_mm[..., c], geometry, p) for c in range(3)], axis=-1)
        p = q - u
    return sample(frame, geometry, p).astype(np.float32)
