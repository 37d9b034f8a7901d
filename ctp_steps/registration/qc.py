"""Quality of a registration without ground truth: LV overlap with the reference, folding, displacement size."""

from __future__ import annotations

import numpy as np

from ctp_steps.registration.warp import jacobian_determinant
from ctp_steps.types import Geometry


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return float(2.0 * np.logical_and(a, b).sum() / total) if total else 1.0


def frame_qc(
    field_mm: np.ndarray,
    geometry: Geometry,
    region: np.ndarray,
    lv_reference: np.ndarray,
    lv_before: np.ndarray,
    lv_after: np.ndarray,
) -> dict:
    """QC of one frame's field (z, y, x, 3): Jacobian and displacement inside `region` (the LV box)."""
    det, norm = np.ones(0), np.zeros(0)
    if region.any():
        # the region's bounding block (one voxel of margin keeps the central differences of the full grid)
        idx = np.argwhere(region)
        block = tuple(slice(max(lo - 1, 0), hi + 2) for lo, hi in zip(idx.min(axis=0), idx.max(axis=0)))
        sub = region[block]
        det = jacobian_determinant(field_mm[block], geometry)[sub]
        norm = np.linalg.norm(field_mm[block][sub], axis=-1)
    return {
        "lv_dice_before": dice(lv_before, lv_reference),
        "lv_dice_after": dice(lv_after, lv_reference),
        "jacobian_nonpos_frac": float(np.mean(det <= 0)) if det.size else 0.0,
        "jacobian_min": float(det.min()) if det.size else 1.0,
        "max_displacement_mm": float(norm.max()) if norm.size else 0.0,
        "n_region_voxels": int(region.sum()),
    }


def summarise(frames: list[dict], reference: int) -> dict:
    """Patient-level figures over the moving frames (the reference frame is left out)."""
    moving = [f for k, f in enumerate(frames) if k != reference]
    if not moving:
        return {"lv_dice_before": 1.0, "lv_dice_after": 1.0, "lv_dice_after_min": 1.0, "jacobian_nonpos_frac": 0.0, "max_displacement_mm": 0.0}
    voxels = np.array([f["n_region_voxels"] for f in moving], dtype=float)
    folding = np.array([f["jacobian_nonpos_frac"] for f in moving])
    return {
        "lv_dice_before": float(np.mean([f["lv_dice_before"] for f in moving])),
        "lv_dice_after": float(np.mean([f["lv_dice_after"] for f in moving])),
        "lv_dice_after_min": float(np.min([f["lv_dice_after"] for f in moving])),
        "jacobian_nonpos_frac": float((folding * voxels).sum() / max(voxels.sum(), 1.0)),
        "max_displacement_mm": float(np.max([f["max_displacement_mm"] for f in moving])),
    }


def lv_dice_checked(report: dict, min_contrast_sd: float) -> list[bool]:
    """Per frame: does the LV Dice check apply (a moving frame whose LV boundary is visible; config
    `registration.min_lv_contrast_sd`)? The reference frame is never checked against itself."""
    contrast = report["enhancement_curves"]["lv_contrast_sd"]
    return [k != report["reference_frame"] and contrast[k] >= min_contrast_sd for k in range(len(contrast))]
