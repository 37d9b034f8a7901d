"""Who enters the risk analysis: cohort counts and the frame every model is fit on.

The patients table is read here and nowhere else, so the columns the stage
needs and the checks on follow-up and event live in one place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ctp_steps.risk.config import RiskConfig

DURATION = "followup_days"
EVENT = "event"
CENTER = "center"


@dataclass(frozen=True)
class CohortCounts:
    """Who is in the cohort and who can enter a model, before any complete-case step."""

    n_patients: int
    n_excluded: int  # excluded for known input problems (status `excluded`)
    exclusion_reasons: dict[str, int]
    n_no_outcome: int
    n_usable: int
    n_events: int
    median_followup_days: float
    # Patients a stage failed on unexpectedly (status `failed`): (center, patient_id, stage, reason).
    failed: tuple[tuple[str, str, str, str], ...] = ()

    @property
    def n_failed(self) -> int:
        return len(self.failed)


def cohort_counts(patients: pd.DataFrame) -> CohortCounts:
    """Cohort size, pipeline exclusions by reason, patients without outcome, usable patients and events."""
    _require_columns(patients, ["status", DURATION, EVENT])
    ok = patients["status"] == "ok"
    failed = patients["status"] == "failed"
    reasons = patients.get("reason", pd.Series(None, index=patients.index)).fillna("no reason recorded").astype(str)
    reason_counts = reasons[~ok & ~failed].value_counts()
    stages = patients.get("excluded_at", pd.Series(None, index=patients.index)).fillna("?").astype(str)
    failed_rows = tuple(
        (str(patients.at[i, CENTER]), str(patients.at[i, "patient_id"]), stages[i], reasons[i])
        for i in patients.index[failed]
    )
    outcome = _outcome(patients[ok])
    usable = outcome.dropna()
    return CohortCounts(
        n_patients=len(patients),
        n_excluded=int((~ok & ~failed).sum()),
        failed=failed_rows,
        exclusion_reasons={str(k): int(v) for k, v in reason_counts.items()},
        n_no_outcome=int(ok.sum()) - len(usable),
        n_usable=len(usable),
        n_events=int(usable[EVENT].sum()),
        median_followup_days=float(usable[DURATION].median()) if len(usable) else math.nan,
    )


def analysis_frame(patients: pd.DataFrame, covariates: list[str], cfg: RiskConfig) -> pd.DataFrame:
    """Usable patients (status ok, outcome known) with numeric model columns and the scaled marker term.

    Missing or non-finite values stay NaN here; each model drops its own incomplete rows. The
    marker's standard error column rides along when the table has it (negative values: NaN).
    """
    needed = [CENTER, cfg.marker, *covariates]
    _require_columns(patients, ["status", DURATION, EVENT, *needed])
    ok = patients[patients["status"] == "ok"]
    frame = _outcome(ok)
    for col in [cfg.marker, *covariates]:
        values = pd.to_numeric(ok[col], errors="raise").astype("float64")
        frame[col] = values.where(np.isfinite(values))
    frame[CENTER] = ok[CENTER].astype("string")
    frame[cfg.marker_term] = frame[cfg.marker] / cfg.marker_unit
    if cfg.marker_se in ok.columns:  # the marker's measurement error, for the correction; no model term
        se = pd.to_numeric(ok[cfg.marker_se], errors="raise").astype("float64")
        frame[cfg.marker_se] = se.where(np.isfinite(se) & (se >= 0))
    return frame.dropna(subset=[DURATION, EVENT])


def _outcome(rows: pd.DataFrame) -> pd.DataFrame:
    """Follow-up and event as floats; values no manifest should carry fail loudly."""
    duration = pd.to_numeric(rows[DURATION], errors="raise").astype("float64")
    event = pd.to_numeric(rows[EVENT], errors="raise").astype("float64")
    bad = (duration < 0) | ~(event.isin([0.0, 1.0]) | event.isna()) | np.isinf(duration)
    if bad.any():
        ids = rows.loc[bad].get("patient_id", rows.index[bad].to_series()).astype(str).tolist()
        raise ValueError(f"follow-up must be >= 0 days and event 0/1; violated by: {', '.join(ids)}")
    return pd.DataFrame({DURATION: duration, EVENT: event}, index=rows.index)


def _require_columns(table: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in dict.fromkeys(columns) if c not in table.columns]
    if missing:
        raise ValueError(f"patients table lacks columns: {', '.join(missing)}")
