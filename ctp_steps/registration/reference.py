"""Which frame the others are aligned to: peak enhancement around the LV (default), peak LV blood, or a fixed one."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ctp_steps.types import Geometry, PatientInputError

# The myocardium is not segmented yet: a shell just outside the LV blood pool stands in for it.
SHELL_MM = (2.5, 7.0)


def _shell(lv: np.ndarray, spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """Voxels SHELL_MM away from the LV. The distance transform runs on the LV's bounding box grown by the
    shell's reach (the same distances there: every LV voxel is inside it), not on the whole field of view."""
    shell = np.zeros(lv.shape, dtype=bool)
    idx = np.argwhere(lv)
    if idx.size == 0:
        return shell
    reach = np.ceil(SHELL_MM[1] / np.asarray(spacing_zyx)).astype(int) + 1
    box = tuple(slice(max(lo - r, 0), min(hi + r + 1, n)) for lo, hi, r, n in zip(idx.min(0), idx.max(0), reach, lv.shape))
    dist = ndimage.distance_transform_edt(~lv[box], sampling=spacing_zyx)
    shell[box] = (dist > SHELL_MM[0]) & (dist <= SHELL_MM[1])
    return shell


def enhancement_curves(frames: np.ndarray, lv_masks: np.ndarray, geometry: Geometry) -> dict[str, list[float]]:
    """Per frame: mean HU in the LV blood pool (eroded by one voxel) and in the shell around it, and the LV
    boundary's contrast in voxel noise SDs (`lv_contrast_sd`, see `boundary_contrast_sd`)."""
    spacing_zyx = tuple(geometry.spacing[::-1])
    lv_core, shell, contrast = [], [], []
    for frame, lv in zip(frames, lv_masks):
        core = ndimage.binary_erosion(lv)
        blood = frame[core if core.any() else lv]
        around = frame[_shell(lv, spacing_zyx)]
        lv_core.append(float(blood.mean()))
        shell.append(float(around.mean()) if around.size else float("nan"))
        contrast.append(boundary_contrast_sd(blood, around))
    return {"lv_blood_hu": lv_core, "lv_shell_hu": shell, "lv_contrast_sd": contrast}


def boundary_contrast_sd(blood_hu: np.ndarray, shell_hu: np.ndarray) -> float:
    """How visible the LV boundary is in a frame: (mean blood − median shell) / the blood's voxel noise SD.

    The shell's median, not its mean, stands for the wall: the shell also crosses lung and RV blood. The noise
    is the blood pool's robust SD (1.4826 × MAD; the pool is uniform). Before the bolus and late in the washout
    blood and myocardium hold about the same HU, the value is ~0 and a mask of the LV there is the
    segmentation's guess of its shape rather than a measurement of it.
    """
    if blood_hu.size == 0 or shell_hu.size == 0:
        return 0.0
    median = float(np.median(blood_hu))
    noise = max(1.4826 * float(np.median(np.abs(blood_hu - median))), 1e-3)
    return float((blood_hu.mean() - np.median(shell_hu)) / noise)


def choose_reference(
    frames: np.ndarray, lv_masks: np.ndarray, geometry: Geometry, how: str | int
) -> tuple[int, dict[str, list[float]]]:
    """(reference frame index, the enhancement curves it was chosen from)."""
    n = len(frames)
    curves = enhancement_curves(frames, lv_masks, geometry)
    if isinstance(how, int):
        if not -n <= how < n:
            raise PatientInputError(f"series.nii.gz: reference frame {how} requested, the series has {n} frames")
        return how % n, curves
    if how == "first":
        return 0, curves
    if how == "middle":
        return n // 2, curves
    if how == "peak_lv":
        return int(np.argmax(curves["lv_blood_hu"])), curves
    if how == "peak_myocardium":
        return int(np.argmax(curves["lv_shell_hu"])), curves
    raise ValueError(f"unknown reference_frame choice {how!r}")
