"""Validation of the landmark stage against the phantom's truth (the `validate` target only).

Metrics (stage `landmarks`, long rows of ctp_steps.validation.rows):
- `landmark_error_mm`, targets apex / base / rv_insertion: distance to the true landmark;
- `segment_label_agreement`, target `all`: fraction of true myocardium voxels
  whose label in aha17.nii.gz equals the true segment (segmentation and
  landmark errors together); target `same_mask`: the same on the voxels both
  maps call myocardium (landmark error alone);
- `long_axis_angle_error_deg` (target long_axis) and `rv_angle_error_deg`
  (target rv_insertion): angle between the true and detected long axes, and
  between the true and detected angular origins (θ = 0) about the true axis.
The truth is taken into the registered series' reference frame (ctp_steps.validation.truth):
unchanged for the oracle registration (un-moved anatomy).
An excluded patient gets NaN rows (counted out of n in the summary).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ctp_steps.io import read_json, read_status, read_volume
from ctp_steps.validation.rows import patient_rows
from ctp_steps.validation.truth import landmarks_in_reference_frame, reference_motion, truth_in_reference_frame

STAGE = "landmarks"
NAMES = ("apex", "base", "rv_insertion")


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    c = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def landmark_metric_values(truth: dict, found: dict, truth_aha: np.ndarray, aha: np.ndarray | None) -> list[tuple]:
    """(metric, target, value) rows from true/detected landmark dicts (name → xyz) and segment maps."""
    rows = [("landmark_error_mm", n, float(np.linalg.norm(np.subtract(found[n], truth[n])))) for n in NAMES]
    t = {n: np.asarray(truth[n], dtype=float) for n in NAMES}
    f = {n: np.asarray(found[n], dtype=float) for n in NAMES}
    u_t, u_f = t["apex"] - t["base"], f["apex"] - f["base"]
    rows.append(("long_axis_angle_error_deg", "long_axis", _angle_deg(u_t, u_f)))
    u = u_t / np.linalg.norm(u_t)

    def origin(frame: dict) -> np.ndarray:
        d = frame["rv_insertion"] - frame["base"]
        return d - (d @ u) * u

    rows.append(("rv_angle_error_deg", "rv_insertion", _angle_deg(origin(t), origin(f))))
    if aha is not None:
        myo = truth_aha > 0
        both = myo & (aha > 0)
        rows.append(("segment_label_agreement", "all", float((aha[myo] == truth_aha[myo]).mean()) if myo.any() else np.nan))
        rows.append(
            ("segment_label_agreement", "same_mask", float((aha[both] == truth_aha[both]).mean()) if both.any() else np.nan)
        )
    return rows


def landmark_metrics(
    truth_dir: Path, landmarks_json: Path, aha_path: Path, status_path: Path, register_status: Path | None = None
) -> pd.DataFrame:
    """Rows of one patient. The truth (landmarks, AHA map) is taken where the registered series shows it:
    moved by the true motion of the reference frame that `register_status` records (none: un-moved anatomy)."""
    if read_status(status_path).status == "ok":
        motion = reference_motion(truth_dir, status_path=register_status) if register_status else None
        truth = landmarks_in_reference_frame(read_json(truth_dir / "truth.json")["landmarks"], motion)
        found = {n: v["world_mm"] for n, v in read_json(landmarks_json).items()}
        truth_aha, geometry = read_volume(truth_dir / "aha17.nii.gz")
        aha, aha_geometry = read_volume(aha_path)
        truth_aha = truth_in_reference_frame(truth_aha, geometry, motion, aha_geometry, aha.shape)
        rows = landmark_metric_values(truth, found, truth_aha, aha)
    else:
        rows = [("landmark_error_mm", n, np.nan) for n in NAMES]
        rows += [("long_axis_angle_error_deg", "long_axis", np.nan), ("rv_angle_error_deg", "rv_insertion", np.nan)]
        rows += [("segment_label_agreement", "all", np.nan), ("segment_label_agreement", "same_mask", np.nan)]
    return patient_rows(truth_dir, STAGE, rows)
