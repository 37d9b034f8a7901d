"""Validation of the segmentation stages against the phantom's hidden truth (the `validate` target only).

Per patient (long rows, `ctp_steps.validation.rows`):
- stage `segment_frames`: `dice` (targets `aorta`, `lv`; pooled over all frames),
  `dice_min_frame` (worst single frame), `aif_peak_rel_error` (|measured − true|
  peak enhancement over the frames / true, the truth sampled at the same frame
  times), `aif_rmse_hu`, and `segment_frames_ok` (0 when the stage excluded the
  patient; then the other metrics are NaN, counted out of n).
- stage `segment_myocardium`: `dice` (target `myocardium`) against the true
  myocardium where the registered series shows it: the un-moved anatomy for the
  oracle registration, or, when the register stage records a reference frame
  (`registration_reference_frame`), the true labels moved by that frame's true
  motion (ctp_steps.validation.truth.truth_map_in_reference_frame).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ctp_steps.io import read_json, read_series, read_status, read_volume
from ctp_steps.validation.rows import patient_rows
from ctp_steps.validation.truth import (
    AORTA,
    LV_BLOOD,
    MYOCARDIUM,
    truth_in_reference_frame,
    truth_map_in_reference_frame,
)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    pred, truth = pred.astype(bool), truth.astype(bool)
    denom = int(pred.sum()) + int(truth.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.logical_and(pred, truth).sum()) / denom


def frames_metrics(truth_dir: Path, masks_path: Path, aif_path: Path, status_path: Path) -> pd.DataFrame:
    stage = "segment_frames"
    names = {AORTA: "aorta", LV_BLOOD: "lv"}
    if read_status(status_path).status != "ok":
        rows = [("segment_frames_ok", "all", 0.0)]
        rows += [(m, n, np.nan) for n in names.values() for m in ("dice", "dice_min_frame")]
        rows += [("aif_peak_rel_error", "aif", np.nan), ("aif_rmse_hu", "aif", np.nan)]
        return patient_rows(truth_dir, stage, rows)
    pred, pred_geometry = read_series(masks_path)
    truth, truth_geometry = read_series(truth_dir / "frame_labels.nii.gz")
    if truth.shape != pred.shape or not truth_geometry.allclose(pred_geometry):  # e.g. a working grid
        truth = np.stack([truth_in_reference_frame(t, truth_geometry, None, pred_geometry, pred.shape[1:]) for t in truth])
    rows = [("segment_frames_ok", "all", 1.0)]
    for label, name in names.items():
        rows.append(("dice", name, dice(pred == label, truth == label)))
        rows.append(("dice_min_frame", name, min(dice(p == label, t == label) for p, t in zip(pred, truth))))
    true_aif = np.asarray(read_json(truth_dir / "truth.json")["aif"], dtype=float)
    measured = pd.read_parquet(aif_path)["enhancement_hu"].to_numpy(dtype=float)
    rows.append(("aif_peak_rel_error", "aif", abs(measured.max() - true_aif.max()) / true_aif.max()))
    rows.append(("aif_rmse_hu", "aif", float(np.sqrt(np.mean((measured - true_aif) ** 2)))))
    return patient_rows(truth_dir, stage, rows)


def myocardium_metrics(
    truth_dir: Path, mask_path: Path, status_path: Path, register_status: Path | None = None
) -> pd.DataFrame:
    stage = "segment_myocardium"
    if read_status(status_path).status != "ok":
        return patient_rows(truth_dir, stage, [("segment_myocardium_ok", "all", 0.0), ("dice", "myocardium", np.nan)])
    pred, pred_geometry = read_volume(mask_path)
    truth, _ = truth_map_in_reference_frame(truth_dir, "labels", register_status, pred_geometry, pred.shape)
    rows = [
        ("segment_myocardium_ok", "all", 1.0),
        ("dice", "myocardium", dice(pred == 1, truth == MYOCARDIUM)),
    ]
    return patient_rows(truth_dir, stage, rows)
