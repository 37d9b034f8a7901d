"""Conversion against the phantom re-rendered from its seed (exact, deterministic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ctp_steps.io import read_json, read_series, read_status
from ctp_steps.validation.rows import patient_keys, patient_rows


def conversion_metrics(
    truth_dir: Path, series_path: Path, frames_path: Path, status_path: Path, params_json: str
) -> pd.DataFrame:
    """Converted series vs the phantom re-rendered from its seed (exact, deterministic)."""
    from ctp_steps.phantom import PatientSpec, PhantomParams, generate_patient

    patient_id, center = patient_keys(truth_dir)
    truth = read_json(truth_dir / "truth.json")
    rows = [("conversion_ok", "all", 0.0)]
    if read_status(status_path).status == "ok":
        spec = PatientSpec(
            patient_id=patient_id,
            center=center,
            vendor_style=truth["vendor_style"],
            seed=truth["seed"],
            role=truth.get("role", "cohort"),
        )
        phantom = generate_patient(spec, PhantomParams.model_validate_json(params_json))
        hu, geometry = read_series(series_path)
        frames = read_json(frames_path)
        same_shape = hu.shape == phantom.frames_hu.shape
        rows = [
            ("conversion_ok", "all", float(same_shape)),
            (
                "conversion_max_abs_error_hu",
                "all",
                float(np.abs(hu - phantom.frames_hu).max()) if same_shape else np.nan,
            ),
            (
                "frame_time_error_s",
                "all",
                float(np.abs(np.subtract(frames["frame_times_s"], phantom.frame_times_s)).max())
                if len(frames["frame_times_s"]) == len(phantom.frame_times_s)
                else np.nan,
            ),
            (
                "origin_error_mm",
                "all",
                float(np.linalg.norm(np.subtract(geometry.origin, phantom.geometry.origin))),
            ),
        ]
    return patient_rows(truth_dir, "conversion", rows)
