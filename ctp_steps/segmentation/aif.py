"""Arterial input function: mean HU inside the eroded aorta mask of every (unregistered) frame."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from ctp_steps.types import PatientInputError

AORTA = 1


def aorta_core(mask: np.ndarray, erosion_voxels: int) -> np.ndarray:
    """The mask eroded by `erosion_voxels` (6-connected steps); the mask itself where erosion would empty it."""
    if erosion_voxels == 0:
        return mask
    core = ndimage.binary_erosion(mask, iterations=erosion_voxels)
    return core if core.any() else mask


def aorta_aif(
    series_hu: np.ndarray,
    frame_masks: np.ndarray,
    times_s: list[float],
    erosion_voxels: int = 1,
    baseline_frames: int = 2,
    where: str = "series",
) -> pd.DataFrame:
    """Columns frame, time_s, hu (mean HU in the eroded aorta), enhancement_hu (hu − mean of the baseline frames)."""
    if len(times_s) != len(series_hu):
        raise PatientInputError(f"{where}: {len(series_hu)} frames but {len(times_s)} frame times")
    rows = []
    for k, (frame, labels) in enumerate(zip(series_hu, frame_masks)):
        mask = labels == AORTA
        if not mask.any():
            raise PatientInputError(f"{where}: empty aorta mask in frame {k}, no AIF value")
        core = aorta_core(mask, erosion_voxels)
        rows.append({"frame": k, "time_s": float(times_s[k]), "hu": float(frame[core].mean())})
    aif = pd.DataFrame(rows)
    baseline = float(aif["hu"].iloc[: min(baseline_frames, len(aif))].mean())
    aif["enhancement_hu"] = aif["hu"] - baseline
    return aif


def aif_record(aif: pd.DataFrame) -> dict:
    """AIF figures for patients.parquet."""
    k = int(aif["enhancement_hu"].to_numpy().argmax())
    return {
        "aif_peak_hu": float(aif["enhancement_hu"].iloc[k]),
        "aif_peak_time_s": float(aif["time_s"].iloc[k]),
        "aif_baseline_hu": float(aif["hu"].iloc[k] - aif["enhancement_hu"].iloc[k]),
    }
