"""The LV crop the landmark net sees: a cube around the myocardium, resampled to a fixed isotropic grid.

The cube is centred on the myocardium mask's bounding box (in the image's index
frame), its side is the box's largest extent plus a margin on each side, and it
is sampled on `size`³ voxels, so the crop spacing is isotropic and varies with
the heart's size. The crop is a grid of its own (`Geometry`), so crop voxel
indices map to world millimetres exactly as for any image; training
augmentation only changes that geometry (shift, scale, rotation).

Input channels: the average image in HU scaled by `hu_scale` around `hu_center`
(clipped), and optionally the myocardium mask (0/1).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ctp_steps.types import Geometry

HU_CENTER, HU_SCALE, HU_CLIP = 100.0, 200.0, 3.0


def mask_box_mm(mask_zyx: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """World centre (x, y, z) and extents in mm (along the image's x, y, z axes) of the mask's bounding box."""
    idx = np.argwhere(mask_zyx)
    if idx.size == 0:
        raise ValueError("empty mask")
    lo, hi = idx.min(axis=0)[::-1].astype(float), idx.max(axis=0)[::-1].astype(float)  # (x, y, z) indices
    center = geometry.index_to_world((lo + hi) / 2.0)
    extent = (hi - lo + 1.0) * np.asarray(geometry.spacing)
    return center, extent


def crop_geometry(
    center_world: np.ndarray,
    side_mm: float,
    size: int,
    direction: np.ndarray,
) -> Geometry:
    """Geometry of a `size`³ cube of side `side_mm` centred at `center_world`, index axes along `direction`'s columns."""
    spacing = side_mm / size
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    origin = np.asarray(center_world, dtype=float) - d @ np.full(3, (size - 1) / 2.0 * spacing)
    return Geometry(tuple(origin.tolist()), (spacing,) * 3, tuple(d.ravel().tolist()))


def lv_crop_geometry(mask_zyx: np.ndarray, geometry: Geometry, size: int, margin_mm: float) -> Geometry:
    """The crop of the stage: myocardium bounding box + margin, cube, image's axes."""
    center, extent = mask_box_mm(mask_zyx, geometry)
    return crop_geometry(center, float(extent.max()) + 2.0 * margin_mm, size, geometry.direction_matrix)


def crop_points_world(crop: Geometry, size: int) -> np.ndarray:
    """World coordinates (size, size, size, 3) of the crop's voxel centres, array order (z, y, x)."""
    r = np.arange(size, dtype=float)
    z, y, x = np.meshgrid(r, r, r, indexing="ij")
    return crop.index_to_world(np.stack([x, y, z], axis=-1))


def resample(
    volume_zyx: np.ndarray, geometry: Geometry, points_world: np.ndarray, order: int = 1, cval: float | None = None
) -> np.ndarray:
    """Interpolate a (z, y, x) volume at world points (..., 3); outside: nearest edge value, or `cval`."""
    ijk = geometry.world_to_index(points_world)
    coords = np.moveaxis(ijk[..., ::-1], -1, 0)
    mode = "nearest" if cval is None else "constant"
    return ndimage.map_coordinates(
        np.asarray(volume_zyx, dtype=np.float32), coords, order=order, mode=mode, cval=0.0 if cval is None else cval
    ).astype(np.float32)


def normalize_hu(hu: np.ndarray) -> np.ndarray:
    return np.clip((hu - HU_CENTER) / HU_SCALE, -HU_CLIP, HU_CLIP).astype(np.float32)


def crop_channels(
    image_zyx: np.ndarray,
    mask_zyx: np.ndarray,
    geometry: Geometry,
    crop: Geometry,
    size: int,
    input_mask: bool,
) -> np.ndarray:
    """Network input (C, size, size, size) float32: normalised HU [, myocardium mask]."""
    points = crop_points_world(crop, size)
    channels = [normalize_hu(resample(image_zyx, geometry, points, order=1))]
    if input_mask:
        channels.append(resample(np.asarray(mask_zyx, dtype=np.float32), geometry, points, order=1, cval=0.0))
    return np.stack(channels)


def world_to_crop_zyx(points_world: np.ndarray, crop: Geometry) -> np.ndarray:
    """World (K, 3) → crop continuous indices (K, 3) in array order (z, y, x)."""
    return crop.world_to_index(np.asarray(points_world, dtype=float))[..., ::-1]


def crop_zyx_to_world(points_zyx: np.ndarray, crop: Geometry) -> np.ndarray:
    return crop.index_to_world(np.asarray(points_zyx, dtype=float)[..., ::-1])
