"""Validation against the phantom's hidden truth: per-patient metrics and the long summary.

Only the `validate` target reads the truth folder; pipeline stages never do.
Per-patient metric files are long tables (patient_id, center, stage, metric,
target, value); the summary aggregates them to the design's format
(stage, metric, target, n, mean, median, p05, p95). Later stages add their own
per-patient metric files; the summary needs no change.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ctp_steps.io import read_json, read_series, read_status, write_parquet

METRIC_COLUMNS = ["patient_id", "center", "stage", "metric", "target", "value"]
SUMMARY_COLUMNS = ["stage", "metric", "target", "n", "mean", "median", "p05", "p95"]


def _patient_keys(truth_dir: Path) -> tuple[str, str]:
    return truth_dir.name, truth_dir.parent.name


def conversion_metrics(
    truth_dir: Path, series_path: Path, frames_path: Path, status_path: Path, params_json: str
) -> pd.DataFrame:
    """Converted series vs the phantom re-rendered from its seed (exact, deterministic)."""
    from ctp_steps.phantom import PatientSpec, PhantomParams, generate_patient

    patient_id, center = _patient_keys(truth_dir)
    truth = read_json(truth_dir / "truth.json")
    rows = [("conversion", "conversion_ok", "all", 0.0)]
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
            ("conversion", "conversion_ok", "all", float(same_shape)),
            (
                "conversion",
                "conversion_max_abs_error_hu",
                "all",
                float(np.abs(hu - phantom.frames_hu).max()) if same_shape else np.nan,
            ),
            (
                "conversion",
                "frame_time_error_s",
                "all",
                float(np.abs(np.subtract(frames["frame_times_s"], phantom.frame_times_s)).max())
                if len(frames["frame_times_s"]) == len(phantom.frame_times_s)
                else np.nan,
            ),
            (
                "conversion",
                "origin_error_mm",
                "all",
                float(np.linalg.norm(np.subtract(geometry.origin, phantom.geometry.origin))),
            ),
        ]
    return pd.DataFrame(
        [(patient_id, center, *r) for r in rows], columns=METRIC_COLUMNS
    )


def write_metrics(rows: pd.DataFrame, out: Path) -> None:
    write_parquet(out, rows[METRIC_COLUMNS])


def summarize(metrics: pd.DataFrame) -> pd.DataFrame:
    """Long per-patient metrics → one row per (stage, metric, target), NaNs counted out of n."""
    def stats(values: pd.Series) -> pd.Series:
        v = values.dropna().to_numpy(dtype=float)
        if v.size == 0:
            return pd.Series({"n": 0, "mean": np.nan, "median": np.nan, "p05": np.nan, "p95": np.nan})
        return pd.Series(
            {
                "n": v.size,
                "mean": v.mean(),
                "median": np.median(v),
                "p05": np.percentile(v, 5),
                "p95": np.percentile(v, 95),
            }
        )

    grouped = metrics.groupby(["stage", "metric", "target"], sort=True)["value"].apply(stats).unstack()
    summary = grouped.reset_index()
    summary["n"] = summary["n"].astype("int64")
    return summary[SUMMARY_COLUMNS]


def summarize_metrics(inputs: list[Path], out_dir: Path) -> None:
    """Write per-stage per-patient tables and summary.parquet under results/validation/."""
    metrics = pd.concat([pd.read_parquet(p) for p in inputs], ignore_index=True)
    for stage, part in metrics.groupby("stage"):
        write_parquet(out_dir / f"{stage}.parquet", part.reset_index(drop=True))
    write_parquet(out_dir / "summary.parquet", summarize(metrics))
