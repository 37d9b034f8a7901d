"""Spatial transformer in physical space: sampling, warping and resampling by world coordinates.

Convention (the same as the phantom's motion and ITK's displacement fields): a
displacement field u on a grid maps each fixed-grid point p to the moving-image
point p + u(p), and the warped image is moving(p + u(p)). Fields are world LPS
millimetres, last axis (x, y, z), arrays (z, y, x, 3) or batched (B, z, y, x, 3).

Everything is torch (CPU or CUDA, one code path); `torch.nn.functional.grid_sample`
with align_corners=True samples voxel centres exactly, so an identity field and
whole-voxel shifts reproduce the input (to float rounding; exact in float64).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ctp_steps.types import Geometry

IDENTITY_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def crop_geometry(center_xyz_mm, size: int, spacing_mm: float) -> Geometry:
    """A cubic, LPS-aligned grid of `size`³ voxels of `spacing_mm`, centred on a world point."""
    center = np.asarray(center_xyz_mm, dtype=float)
    origin = center - (size - 1) / 2.0 * spacing_mm
    return Geometry(tuple(origin.tolist()), (spacing_mm,) * 3, IDENTITY_DIRECTION)


def _affine(geometry: Geometry, device, dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    origin = torch.tensor(geometry.origin, device=device, dtype=dtype)
    spacing = torch.tensor(geometry.spacing, device=device, dtype=dtype)
    direction = torch.tensor(geometry.direction_matrix, device=device, dtype=dtype)
    return origin, spacing, direction


def world_points(geometry: Geometry, shape_zyx, device=None, dtype=torch.float32) -> torch.Tensor:
    """World coordinates (z, y, x, 3) of the voxel centres of a grid."""
    origin, spacing, direction = _affine(geometry, device, dtype)
    axes = [torch.arange(n, device=device, dtype=dtype) for n in shape_zyx]
    z, y, x = torch.meshgrid(*axes, indexing="ij")
    ijk = torch.stack([x, y, z], dim=-1) * spacing
    return ijk @ direction.T + origin


def world_to_index(points: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """World mm (..., 3) → continuous voxel indices (..., 3) in (x, y, z) order."""
    origin, spacing, direction = _affine(geometry, points.device, points.dtype)
    return ((points - origin) @ direction) / spacing


def world_vectors_to_index(vectors: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Displacements in world mm (..., 3) → displacements in voxels along the grid's (x, y, z) axes."""
    _, spacing, direction = _affine(geometry, vectors.device, vectors.dtype)
    return (vectors @ direction) / spacing


def index_vectors_to_world(vectors: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Displacements in voxels along the grid's (x, y, z) axes (..., 3) → world mm."""
    _, spacing, direction = _affine(geometry, vectors.device, vectors.dtype)
    return (vectors * spacing) @ direction.T


def _normalise(index_xyz: torch.Tensor, shape_zyx) -> torch.Tensor:
    size = torch.tensor([shape_zyx[2], shape_zyx[1], shape_zyx[0]], device=index_xyz.device, dtype=index_xyz.dtype)
    return 2.0 * index_xyz / (size - 1).clamp(min=1) - 1.0


def sample_index(
    volume: torch.Tensor, index_xyz: torch.Tensor, mode: str = "bilinear", padding: str = "border"
) -> torch.Tensor:
    """Sample (B, C, z, y, x) at continuous voxel indices (B, Z, Y, X, 3) in (x, y, z) order → (B, C, Z, Y, X)."""
    grid = _normalise(index_xyz, volume.shape[2:]).to(volume.dtype)
    return F.grid_sample(volume, grid, mode=mode, padding_mode=padding, align_corners=True)


def sample_world(
    volume: torch.Tensor, geometry: Geometry, points: torch.Tensor, mode: str = "bilinear", padding: str = "border"
) -> torch.Tensor:
    """Sample (B, C, z, y, x) on `geometry` at world points (B, Z, Y, X, 3) → (B, C, Z, Y, X)."""
    return sample_index(volume, world_to_index(points, geometry), mode, padding)


def warp(
    volume: torch.Tensor, field_mm: torch.Tensor, geometry: Geometry, mode: str = "bilinear", padding: str = "border"
) -> torch.Tensor:
    """moving(p + u(p)) for a (B, C, z, y, x) volume and a (B, z, y, x, 3) world field on the same grid."""
    base = world_points(geometry, volume.shape[2:], volume.device, field_mm.dtype)
    return sample_world(volume, geometry, base + field_mm, mode, padding)


def warp_labels(labels: torch.Tensor, field_mm: torch.Tensor, geometry: Geometry, n_labels: int) -> torch.Tensor:
    """Warp an integer label map (B, z, y, x) linearly per label and take the arg-max (≡ threshold 0.5 for one label)."""
    onehot = F.one_hot(labels.long(), n_labels).permute(0, 4, 1, 2, 3).to(field_mm.dtype)
    return warp(onehot, field_mm, geometry).argmax(dim=1).to(labels.dtype)


def resample(
    volume: torch.Tensor,
    geometry: Geometry,
    target: Geometry,
    target_shape,
    shift_mm=None,
    mode: str = "bilinear",
    padding: str = "border",
) -> torch.Tensor:
    """(B, C, z, y, x) on `geometry` → the `target` grid, optionally displaced by a world shift (B, 3) or (3,)."""
    points = world_points(target, target_shape, volume.device, volume.dtype)[None]
    if shift_mm is not None:
        shift = torch.as_tensor(shift_mm, device=volume.device, dtype=volume.dtype).reshape(-1, 1, 1, 1, 3)
        points = points + shift
    points = points.expand(volume.shape[0], *points.shape[1:])
    return sample_world(volume, geometry, points, mode, padding)


class SpatialTransformer(torch.nn.Module):
    """Warps the network's input-size moving crop by a voxel field predicted on its central output region.

    field: (B, 3, M, M, M) displacement in voxels along (x, y, z); the output voxel q of the
    field sits at input voxel q + offset. Returns the moving crop sampled at those points, (B, C, M, M, M).
    """

    def __init__(self, offset: int):
        super().__init__()
        self.offset = offset

    def forward(self, moving: torch.Tensor, field_vox: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        m = field_vox.shape[2:]
        axes = [torch.arange(n, device=field_vox.device, dtype=field_vox.dtype) + self.offset for n in m]
        z, y, x = torch.meshgrid(*axes, indexing="ij")
        base = torch.stack([x, y, z], dim=-1)
        return sample_index(moving, base + field_vox.permute(0, 2, 3, 4, 1), mode=mode)


def jacobian_determinant(field_mm: np.ndarray, geometry: Geometry) -> np.ndarray:
    """det(I + ∂u/∂p) of a world field (z, y, x, 3) on `geometry` (central differences; one-sided at edges)."""
    spacing = np.asarray(geometry.spacing, dtype=float)  # x, y, z
    direction = geometry.direction_matrix
    # ∂u/∂index along array axes (z, y, x) → columns in (x, y, z) order
    grads = np.gradient(field_mm.astype(np.float64), axis=(0, 1, 2))
    g = np.stack([grads[2], grads[1], grads[0]], axis=-1)  # (..., 3 components, 3 index axes x,y,z)
    jac = np.eye(3) + (g / spacing) @ direction.T
    return np.linalg.det(jac)
