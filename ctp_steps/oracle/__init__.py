"""Validation-only stand-in for segmentation, registration and landmarks, built from phantom truth.

Until the learned stages exist, the MBF and IMV stages still need registered
frames, a myocardium mask, an AHA map and an AIF. This stage derives them from
the phantom's hidden truth (true motion undone, true masks, true segments) so
downstream stages can be developed and validated in isolation. It reads the
truth folder, so it only runs on the synthetic cohort and every patient row it
feeds says `<stage>_source = "oracle"`; it is never a result on real data.

One module per stand-in (`segment_frames`, `register`, `segment_myocardium`,
`landmarks`), each keeping the stage contract (ctp_steps/stages.py) with the
same outputs as the real stage, or a subset; this package holds what they share.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from ctp_steps.types import Geometry

AORTA, LV_BLOOD, MYOCARDIUM = 1, 2, 3


def world_grid(geometry: Geometry, shape_zyx: tuple[int, int, int]) -> np.ndarray:
    """World coordinates (z, y, x, 3) of every voxel centre."""
    z, y, x = np.meshgrid(*(np.arange(n, dtype=float) for n in shape_zyx), indexing="ij")
    return geometry.index_to_world(np.stack([x, y, z], axis=-1))


def sample(volume: np.ndarray, geometry: Geometry, points_world: np.ndarray, order: int = 1) -> np.ndarray:
    """Trilinear (or nearest) interpolation of a (z, y, x) volume at world points (..., 3)."""
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


def aorta_aif(series: np.ndarray, frame_labels: np.ndarray, times_s: list[float]) -> pd.DataFrame:
    """Mean HU per frame inside that frame's aorta, eroded by one voxel to avoid partial volume."""
    rows = []
    for k, (frame, labels) in enumerate(zip(series, frame_labels)):
        core = ndimage.binary_erosion(labels == AORTA)
        rows.append({"frame": k, "time_s": float(times_s[k]), "hu": float(frame[core].mean())})
    return pd.DataFrame(rows)


def check_grid(truth_file: Path, geometry: Geometry, reference: Geometry) -> None:
    if not geometry.allclose(reference):
        raise ValueError(f"{truth_file}: truth grid differs from the converted series")
