"""The long metric-row format of every validation table, built in one place.

Per-patient metric files are long tables (patient_id, center, stage, metric,
target, value); the cohort's segment agreement uses patient_id = center = "all".
Later stages add their own per-patient metric files; the summary needs no change.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ctp_steps.io import write_parquet

METRIC_COLUMNS = ["patient_id", "center", "stage", "metric", "target", "value"]


def patient_keys(truth_dir: Path) -> tuple[str, str]:
    """(patient_id, center) of a truth folder `<truth>/<center>/<patient_id>`."""
    truth_dir = Path(truth_dir)
    return truth_dir.name, truth_dir.parent.name


def metric_frame(patient_id: str, center: str, stage: str, rows: list[tuple]) -> pd.DataFrame:
    """(metric, target, value) rows of one stage → the long metric frame."""
    return pd.DataFrame([(patient_id, center, stage, *r) for r in rows], columns=METRIC_COLUMNS)


def patient_rows(truth_dir: Path, stage: str, rows: list[tuple]) -> pd.DataFrame:
    """(metric, target, value) rows of one patient (keys from its truth folder) and stage."""
    return metric_frame(*patient_keys(truth_dir), stage, rows)


def write_metrics(rows: pd.DataFrame, out: Path) -> None:
    write_parquet(out, rows[METRIC_COLUMNS])
