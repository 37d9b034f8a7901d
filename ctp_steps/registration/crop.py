"""The LV box: centroids of the LV masks, network crops around them, and the field pasted back.

Every method registers inside a cubic, LPS-aligned box centred on the reference
frame's LV blood pool. A moving frame's crop is the same box displaced by the
difference of the LV centroids (the initial translation), so the method only
solves the residual motion. Outside the box the frame keeps that translation;
`paste_field` blends the box's field into it over `taper_mm`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ctp_steps.registration import warp as W
from ctp_steps.types import Geometry

AORTA, LV_BLOOD = 1, 2


@dataclass(frozen=True)
class BoxField:
    """A method's answer for one moving frame: a world field on the LV box and the translation outside it."""

    translation_mm: np.ndarray  # (3,) x, y, z
    field_mm: np.ndarray  # (M, M, M, 3) world displacement on `geometry`
    geometry: Geometry  # the box's output grid


def lv_centroid(lv_mask: np.ndarray, geometry: Geometry) -> np.ndarray | None:
    """World centroid (x, y, z mm) of a (z, y, x) boolean mask; None when empty."""
    idx = np.argwhere(lv_mask)
    if idx.size == 0:
        return None
    return geometry.index_to_world(idx.mean(axis=0)[::-1])


def box_geometries(center_mm: np.ndarray, input_size: int, output_size: int, spacing_mm: float) -> tuple[Geometry, Geometry]:
    """(input grid, output grid) of the LV box centred on `center_mm`; output voxel q = input voxel q + margin."""
    return (
        W.crop_geometry(center_mm, input_size, spacing_mm),
        W.crop_geometry(center_mm, output_size, spacing_mm),
    )


def crop_frames(
    volumes: np.ndarray,
    geometry: Geometry,
    box: Geometry,
    size: int,
    shifts_mm: np.ndarray,
    device: torch.device,
    dtype=torch.float32,
) -> torch.Tensor:
    """(n, z, y, x) volumes → (n, 1, size, size, size) samples of the box displaced by per-volume shifts (n, 3)."""
    vol = torch.as_tensor(np.ascontiguousarray(volumes), dtype=dtype, device=device)[:, None]
    return W.resample(vol, geometry, box, (size,) * 3, torch.as_tensor(shifts_mm, dtype=dtype, device=device))


def taper_weight(points_mm: torch.Tensor, box: Geometry, size: int, taper_mm: float) -> torch.Tensor:
    """1 deep inside the box, falling linearly to 0 at its faces over `taper_mm`, 0 outside."""
    idx = W.world_to_index(points_mm, box)
    dist = torch.minimum(idx, (size - 1) - idx) * torch.tensor(box.spacing, dtype=idx.dtype, device=idx.device)
    if taper_mm <= 0:
        return (dist >= 0).all(dim=-1).to(idx.dtype)
    return (dist / taper_mm).clamp(0, 1).prod(dim=-1)


def paste_field(
    box_field: BoxField,
    geometry: Geometry,
    shape_zyx,
    taper_mm: float,
    device: torch.device,
    points: torch.Tensor | None = None,
) -> np.ndarray:
    """The full-grid world field (z, y, x, 3): the box field inside, the translation outside, blended.

    `points`: the grid's world coordinates (z, y, x, 3), when the caller already has them.
    """
    size = box_field.field_mm.shape[0]
    points = W.world_points(geometry, shape_zyx, device) if points is None else points
    t = torch.as_tensor(box_field.translation_mm, dtype=torch.float32, device=device)
    residual = torch.as_tensor(np.array(box_field.field_mm, dtype=np.float32), device=device) - t
    sampled = W.sample_world(residual.permute(3, 0, 1, 2)[None], box_field.geometry, points[None], padding="zeros")
    w = taper_weight(points, box_field.geometry, size, taper_mm)
    return (t + w[..., None] * sampled[0].permute(1, 2, 3, 0)).cpu().numpy().astype(np.float32)


def box_region(geometry: Geometry, shape_zyx, box: Geometry, size: int) -> np.ndarray:
    """Boolean (z, y, x): image voxels inside the LV box (where the deformable part acts)."""
    points = W.world_points(geometry, shape_zyx, torch.device("cpu"), torch.float64)
    return (taper_weight(points, box, size, 0.0) > 0).numpy()
