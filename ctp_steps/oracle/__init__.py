"""Validation-only stand-in for segmentation, registration and landmarks, built from phantom truth.

Until the learned stages exist, the MBF and IMV stages still need registered
frames, a myocardium mask, an AHA map and an AIF. This stage derives them from
the phantom's hidden truth (true motion undone, true masks, true segments) so
downstream stages can be developed and validated in isolation. It reads the
truth folder, so it only runs on the synthetic cohort and every patient row it
feeds says `upstream_source = "oracle"`; it is never a result on real data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from ctp_steps.io import (
    read_json,
    read_series,
    read_volume,
    write_json,
    write_parquet,
    write_series,
    write_volume,
)
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


def _check_grid(truth_file: Path, geometry: Geometry, reference: Geometry) -> None:
    if not geometry.allclose(reference):
        raise ValueError(f"{truth_file}: truth grid differs from the converted series")


def oracle_segment_frames(series_path: Path, frames_path: Path, truth_dir: Path, out_dir: Path) -> dict:
    """frame_masks.nii.gz (1 aorta, 2 LV blood pool per frame) and aif.parquet from the true moved labels."""
    series, geometry = read_series(series_path)
    frame_labels, label_geometry = read_series(truth_dir / "frame_labels.nii.gz")
    _check_grid(truth_dir / "frame_labels.nii.gz", label_geometry, geometry)
    masks = np.where(np.isin(frame_labels, (AORTA, LV_BLOOD)), frame_labels, 0).astype(np.uint8)
    write_series(out_dir / "frame_masks.nii.gz", masks, geometry)
    aif = aorta_aif(series, frame_labels, read_json(frames_path)["frame_times_s"])
    write_parquet(out_dir / "aif.parquet", aif)
    return {}


def oracle_register(series_path: Path, truth_dir: Path, out_dir: Path) -> dict:
    """registered.nii.gz and average.nii.gz: every frame moved back by the inverse true motion."""
    from ctp_steps.phantom import displacement_field_mm

    series, geometry = read_series(series_path)
    motion = read_json(truth_dir / "truth.json")["motion"]["frames"]
    registered = np.stack(
        [
            undo_motion(frame, displacement_field_mm(m, geometry, frame.shape), geometry)
            for frame, m in zip(series, motion)
        ]
    )
    write_series(out_dir / "registered.nii.gz", registered, geometry)
    write_volume(out_dir / "average.nii.gz", registered.mean(axis=0), geometry)
    return {}


def oracle_segment_myocardium(average_path: Path, truth_dir: Path, out_dir: Path) -> dict:
    """myocardium.nii.gz: the true myocardium in the reference anatomy."""
    _, geometry = read_volume(average_path)
    labels, label_geometry = read_volume(truth_dir / "labels.nii.gz")
    _check_grid(truth_dir / "labels.nii.gz", label_geometry, geometry)
    write_volume(out_dir / "myocardium.nii.gz", (labels == MYOCARDIUM).astype(np.uint8), geometry)
    return {}


def oracle_landmarks(average_path: Path, truth_dir: Path, out_dir: Path) -> dict:
    """landmarks.json (true apex, base, RV insertion, confidence 1) and the true aha17.nii.gz."""
    _, geometry = read_volume(average_path)
    aha, aha_geometry = read_volume(truth_dir / "aha17.nii.gz")
    _check_grid(truth_dir / "aha17.nii.gz", aha_geometry, geometry)
    landmarks = read_json(truth_dir / "truth.json")["landmarks"]
    write_json(
        out_dir / "landmarks.json",
        {name: {"world_mm": list(map(float, xyz)), "confidence": 1.0} for name, xyz in landmarks.items()},
    )
    write_volume(out_dir / "aha17.nii.gz", aha.astype(np.uint8), geometry)
    return {}
