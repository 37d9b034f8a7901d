"""Cohort risk models of MACE: Cox regression, concordance, PH checks, Kaplan–Meier, a report.

Every estimate comes from lifelines. Only patients with status `ok`, a known
outcome and complete data for the model at hand enter a fit. The stage never
stops on a degenerate cohort and never writes a silent NaN: what cannot be
estimated is written as a row whose `note` says why, and the report repeats it.

Models (the `model` column of the tables):
  univariable                  marker per `marker_unit`, unadjusted
  groups                       marker groups vs the lowest group, unadjusted
  clinical                     the clinical covariates only
  multivariable                clinical covariates + marker per `marker_unit`
  multivariable_center_strata  the same, one baseline hazard per center (when configured)
Covariates enter per unit of their column (age: per year).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ctp_steps import __version__
from ctp_steps.io import atomic_path, write_parquet

if TYPE_CHECKING:
    from lifelines import CoxPHFitter

    from ctp_steps.phantom.outcomes import OutcomeParams

DURATION = "followup_days"
EVENT = "event"
CENTER = "center"

UNIVARIABLE = "univariable"
GROUPS = "groups"
CLINICAL = "clinical"
MULTIVARIABLE = "multivariable"
STRATIFIED = "multivariable_center_strata"
GAIN = "multivariable_minus_clinical"

COX_COLUMNS = [
    "model", "term", "coef", "se", "hr", "hr_lower", "hr_upper", "z", "p", "n", "events", "penalizer", "note",
]
CONCORDANCE_COLUMNS = ["model", "c_index", "c_lower", "c_upper", "n", "events", "bootstrap", "note"]
PH_COLUMNS = ["model", "term", "test_statistic", "p", "n", "events", "note"]
KM_COLUMNS = ["group", "n", "events"]
NOTE_SEP = "; "  # joins the notes of a row; no single note contains it


class RiskConfig(BaseModel):
    """Settings of the risk stage; saved in the metadata of every table it writes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    marker: str = Field(
        "imv_pct", min_length=1, description="Column of patients.parquet holding the prognostic marker."
    )
    marker_unit: float = Field(
        10.0, gt=0, description="Marker hazard ratios are per this many units (IMV%: per 10 percentage points)."
    )
    group_cuts: list[float] = Field(
        default_factory=lambda: [0.0, 10.0],
        min_length=1,
        description=(
            "Strictly increasing cut points c0 < c1 < ... < ck of the marker groups: x <= c0 (the reference), "
            "c0 < x < c1, c1 <= x < c2, ..., x >= ck. The default gives IMV% == 0, 0 < IMV% < 10, IMV% >= 10."
        ),
    )
    covariates: list[str] | None = Field(
        None, description="Clinical covariates of the adjusted models; null: the pipeline's configured covariates."
    )
    stratify_by_center: bool = Field(
        False, description="Also fit the multivariable model with one baseline hazard per center (strata)."
    )
    bootstrap: int = Field(200, ge=0, description="Bootstrap resamples of the C-index CIs; 0: no CIs.")
    seed: int = Field(0, ge=0, description="Seed of the bootstrap resampling.")
    alpha: float = Field(
        0.05, gt=0, lt=1, description="CIs are at level 1 - alpha; PH-test p-values below alpha are flagged."
    )
    min_events_per_variable: float = Field(
        10.0, ge=0, description="Fewer events per model term than this: a warning in the report; still fit."
    )
    penalizer: float = Field(0.0, ge=0, description="Ridge penalizer of every Cox fit (lifelines `penalizer`).")
    retry_penalizer: float = Field(
        0.01,
        gt=0,
        description="Ridge penalizer of the single retry after a failed fit (collinearity, 'delta contains nan'); "
        "no retry when not above `penalizer`.",
    )

    @field_validator("group_cuts")
    @classmethod
    def _increasing_cuts(cls, cuts: list[float]) -> list[float]:
        if not all(math.isfinite(c) for c in cuts):
            raise ValueError("group_cuts must be finite")
        if any(b <= a for a, b in zip(cuts, cuts[1:])):
            raise ValueError("group_cuts must be strictly increasing")
        return cuts

    @model_validator(mode="after")
    def _covariates_distinct(self) -> "RiskConfig":
        if self.covariates is not None:
            if len(set(self.covariates)) != len(self.covariates):
                raise ValueError("covariates: names repeat")
            if self.marker in self.covariates:
                raise ValueError(f"covariates: the marker {self.marker!r} is not a clinical covariate")
        return self

    @property
    def marker_term(self) -> str:
        """Name of the scaled marker term, e.g. `imv_pct_per_10` (matches the phantom's truth keys)."""
        return f"{self.marker}_per_{self.marker_unit:g}"

    @property
    def ci_level(self) -> str:
        return f"{100 * (1 - self.alpha):g} %"


@dataclass(frozen=True)
class ModelFit:
    """One Cox model: its tidy rows, and the fitter with its complete cases when it was estimated."""

    name: str
    description: str
    rows: pd.DataFrame
    n: int
    events: int
    missing: dict[str, int]
    notes: tuple[str, ...]
    failure: str | None
    fitter: CoxPHFitter | None
    data: pd.DataFrame | None
    strata: tuple[str, ...] = ()


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


@dataclass(frozen=True)
class RiskSummary:
    """Headline numbers for the main job's printed summary (marker HR and C-index: multivariable model)."""

    n_patients: int
    n_usable: int
    n_excluded: int
    n_failed: int
    n_events: int
    model: str
    marker_term: str
    hr: float
    hr_lower: float
    hr_upper: float
    hr_note: str
    c_index: float
    c_lower: float
    c_upper: float
    ci_level: str
    report_path: Path

    def format(self) -> str:
        hr = (
            f"{self.hr:.2f} ({self.ci_level} CI {self.hr_lower:.2f}-{self.hr_upper:.2f})"
            if math.isfinite(self.hr_lower) and math.isfinite(self.hr_upper)
            else self.hr_note
        )
        if math.isfinite(self.c_index):
            ci = f" ({self.ci_level} CI {self.c_lower:.3f}-{self.c_upper:.3f})"
            c = f"{self.c_index:.3f}{ci if math.isfinite(self.c_lower) else ''}"
        else:
            c = "not estimated"
        return "\n".join(
            [
                f"patients: {self.n_patients} ({self.n_usable} usable, {self.n_excluded} excluded, "
                f"{self.n_failed} failed), "
                f"events: {self.n_events}",
                f"HR of {self.marker_term} ({self.model} Cox): {hr}",
                f"C-index ({self.model}): {c}",
                f"report: {self.report_path}",
            ]
        )


def run_risk_analysis(
    patients: pd.DataFrame, covariates: list[str], cfg: RiskConfig, out_dir: Path
) -> RiskSummary:
    """Fit every model, write the tables, figures and report under out_dir; return the headline numbers."""
    covs = list(cfg.covariates if cfg.covariates is not None else covariates)
    if cfg.marker in covs:
        raise ValueError(f"the marker {cfg.marker!r} is listed among the clinical covariates")
    counts = cohort_counts(patients)
    frame = analysis_frame(patients, covs, cfg)
    fits = fit_models(frame, covs, cfg)
    cox = cox_table(fits)
    concordance = concordance_table(fits, cfg)
    ph = ph_table(fits, cfg)
    km, logrank = km_groups(frame, cfg)

    out_dir = Path(out_dir)
    metadata = {"ctp_risk_config": cfg.model_dump_json(), "software_version": __version__}
    write_parquet(out_dir / "cox.parquet", cox, metadata)
    write_parquet(out_dir / "concordance.parquet", concordance, metadata)
    write_parquet(out_dir / "ph_test.parquet", ph, metadata)
    plot_km(out_dir / "km.png", frame, cfg, logrank)
    plot_forest(out_dir / "forest.png", cox, cfg)
    report_path = out_dir / "report.md"
    with atomic_path(report_path) as tmp:
        tmp.write_text(render_report(counts, fits, cox, concordance, ph, km, logrank, covs, cfg))
    return summarize(counts, cox, concordance, cfg, report_path)


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

    Missing or non-finite values stay NaN here; each model drops its own incomplete rows.
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


def fit_models(frame: pd.DataFrame, covariates: list[str], cfg: RiskConfig) -> list[ModelFit]:
    """All configured Cox models on the usable patients, each on its own complete cases."""
    per_unit = f"{cfg.marker} per {cfg.marker_unit:g}"
    adjusted = [*covariates, cfg.marker_term]
    fits = [
        fit_cox(UNIVARIABLE, f"{per_unit}, unadjusted", frame, [cfg.marker_term], [], cfg),
        fit_groups(frame, cfg),
        fit_cox(CLINICAL, "clinical covariates only", frame, covariates, [], cfg),
        fit_cox(MULTIVARIABLE, f"clinical covariates + {per_unit}", frame, adjusted, [], cfg),
    ]
    if cfg.stratify_by_center:
        description = f"clinical covariates + {per_unit}, stratified by center"
        fits.append(fit_cox(STRATIFIED, description, frame, adjusted, [CENTER], cfg))
    return fits


def not_estimable(n: int, events: int) -> str | None:
    """Why a Cox model cannot be fit on n complete cases with this many events, or None."""
    if n < 2:
        return f"not estimated: {n} complete case{'' if n == 1 else 's'}, at least 2 needed"
    if events == 0:
        return f"not estimated: no events among the {n} complete cases"
    return None


def fit_cox(
    name: str, description: str, frame: pd.DataFrame, terms: list[str], strata: list[str], cfg: RiskConfig
) -> ModelFit:
    """One Cox model on its complete cases, with the guard rails that keep every row explained.

    Terms without variance are dropped with a note; low events per variable is noted but
    fit; a failed fit is retried once with `retry_penalizer`, then recorded as a failure.
    """
    columns = [*terms, *strata]
    source = {cfg.marker_term: cfg.marker}  # report the patients table's column, not the scaled term
    missing = {source.get(c, c): int(frame[c].isna().sum()) for c in columns if frame[c].isna().any()}
    data = frame.dropna(subset=columns)
    n, events = len(data), int(data[EVENT].sum())
    term_notes: dict[str, str] = {}
    failure = not_estimable(n, events)
    kept: list[str] = []
    if failure is None:
        for term in terms:
            values = data[term].unique()
            if len(values) < 2:
                term_notes[term] = f"dropped: no variance (all {n} values = {values[0]:g})"
            else:
                kept.append(term)
        if not kept:
            failure = "not estimated: no term with variance left"
    notes: list[str] = []
    fitter, penalizer = None, math.nan
    if failure is None:
        epv = events / len(kept)
        if epv < cfg.min_events_per_variable:
            notes.append(
                f"{events} events for {len(kept)} term{'s' if len(kept) > 1 else ''} ({epv:.1f} events per "
                f"variable, below {cfg.min_events_per_variable:g}), estimates may be unstable"
            )
        fit_data = data[[*kept, *strata, DURATION, EVENT]]
        fitter, penalizer, fit_notes, failure = _fit_with_retry(fit_data, strata, cfg)
        notes += fit_notes
    rows = []
    summary = fitter.summary if fitter is not None else None
    for term in terms:
        note = NOTE_SEP.join(filter(None, [*notes, term_notes.get(term, failure)]))
        if summary is not None and term in summary.index:
            rows.append(_estimate_row(name, term, summary.loc[term], n, events, penalizer, note))
        else:
            rows.append(_empty_row(name, term, n, events, note))
    return ModelFit(
        name=name,
        description=description,
        rows=pd.DataFrame(rows, columns=COX_COLUMNS),
        n=n,
        events=events,
        missing=missing,
        notes=tuple(notes),
        failure=failure,
        fitter=fitter,
        data=data if fitter is not None else None,
        strata=tuple(strata),
    )


def _fit_with_retry(
    data: pd.DataFrame, strata: list[str], cfg: RiskConfig
) -> tuple[CoxPHFitter | None, float, list[str], str | None]:
    """Fit with `penalizer`; on ConvergenceError or non-finite estimates retry once, penalized."""
    from lifelines.exceptions import ConvergenceError

    penalizers = [cfg.penalizer] + ([cfg.retry_penalizer] if cfg.retry_penalizer > cfg.penalizer else [])
    errors: list[str] = []
    for penalizer in penalizers:
        try:
            fitter, fit_warnings = _fit_once(data, strata, penalizer, cfg.alpha)
        except ConvergenceError as exc:
            errors.append(_first_sentence(str(exc)))
            continue
        estimates = fitter.summary[["coef", "se(coef)", "p"]].to_numpy()
        if not np.isfinite(estimates).all():
            errors.append("non-finite estimates")
            continue
        if errors:
            retry = f"refit with penalizer {penalizer:g} after the fit with penalizer {penalizers[0]:g} failed"
            fit_warnings.insert(0, f"{retry}: {errors[0]}")
        return fitter, penalizer, fit_warnings, None
    tried = " and ".join(f"{p:g}" for p in penalizers)
    why = " / ".join(dict.fromkeys(errors))
    return None, math.nan, [], f"not estimated: fit failed with penalizer {tried} ({why})"


def _fit_once(
    data: pd.DataFrame, strata: list[str], penalizer: float, alpha: float
) -> tuple[CoxPHFitter, list[str]]:
    """One lifelines fit; its convergence warnings become notes, other warnings pass through."""
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        fitter = CoxPHFitter(penalizer=penalizer, alpha=alpha)
        fitter.fit(data, duration_col=DURATION, event_col=EVENT, strata=strata or None)
    notes = []
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            notes.append(f"lifelines: {_first_sentence(str(w.message))}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return fitter, list(dict.fromkeys(notes))


def _first_sentence(message: str) -> str:
    return message.strip().split(". ")[0].split("\n")[0].rstrip(".")


def _estimate_row(model: str, term: str, s: pd.Series, n: int, events: int, penalizer: float, note: str) -> dict:
    lower = next(c for c in s.index if c.startswith("exp(coef) lower"))
    upper = next(c for c in s.index if c.startswith("exp(coef) upper"))
    return {
        "model": model,
        "term": term,
        "coef": float(s["coef"]),
        "se": float(s["se(coef)"]),
        "hr": float(s["exp(coef)"]),
        "hr_lower": float(s[lower]),
        "hr_upper": float(s[upper]),
        "z": float(s["z"]),
        "p": float(s["p"]),
        "n": n,
        "events": events,
        "penalizer": penalizer,
        "note": note,
    }


def _empty_row(model: str, term: str, n: int, events: int, note: str, **numbers: float) -> dict:
    row: dict[str, Any] = {c: math.nan for c in COX_COLUMNS}
    row.update(model=model, term=term, n=n, events=events, note=note, **numbers)
    return row


def marker_groups(values: Sequence[float] | np.ndarray | pd.Series, cuts: Sequence[float]) -> np.ndarray:
    """Group index per value for cuts c0 < ... < ck; -1 where the value is missing.

    0: x <= c0; 1: c0 < x < c1; i (2 <= i < k+1): c(i-1) <= x < c(i); k: x >= ck
    (k = 1: x > c0). The first group is closed above so that with c0 = 0 it is exactly
    'no ischemia' (IMV% == 0).
    """
    x = np.asarray(values, dtype=float)
    codes = np.where(x <= cuts[0], 0, np.searchsorted(np.asarray(cuts, dtype=float), x, side="right"))
    return np.where(np.isnan(x), -1, codes)


def group_label(marker: str, cuts: Sequence[float], first: int, last: int | None = None) -> str:
    """Readable interval of groups first..last (merged groups share one label), e.g. `0 < imv_pct < 10`."""
    last = first if last is None else last
    k = len(cuts)
    lo, lo_closed = (-math.inf, False) if first == 0 else (cuts[first - 1], first >= 2)
    hi, hi_closed = (math.inf, False) if last == k else (cuts[last], last == 0)
    if lo == -math.inf and hi == math.inf:
        return f"any {marker}"
    if lo == -math.inf:
        return f"{marker} {'<=' if hi_closed else '<'} {hi:g}"
    if hi == math.inf:
        return f"{marker} {'>=' if lo_closed else '>'} {lo:g}"
    return f"{lo:g} {'<=' if lo_closed else '<'} {marker} {'<=' if hi_closed else '<'} {hi:g}"


def merge_groups(
    marker: str, cuts: Sequence[float], n_g: Sequence[int], events_g: Sequence[int]
) -> tuple[list[list[int]], dict[int, list[str]]]:
    """Non-empty groups as runs of adjacent group indices, each run with at least one event.

    A group without events has no finite hazard ratio, so it joins its lower neighbour
    (the lowest joins the next one up); the notes, keyed by a run's first group, say so.
    """
    blocks = [[g] for g in range(len(n_g)) if n_g[g] > 0]
    notes: dict[int, list[str]] = {}
    while len(blocks) > 1 and any(sum(events_g[g] for g in b) == 0 for b in blocks):
        i = next(i for i, b in enumerate(blocks) if sum(events_g[g] for g in b) == 0)
        j = i + 1 if i == 0 else i - 1
        gone, into = group_label(marker, cuts, blocks[i][0], blocks[i][-1]), blocks[j]
        note = f"merged {gone} into {group_label(marker, cuts, into[0], into[-1])}: no events in {gone}"
        merged = sorted(blocks[i] + into)
        notes[merged[0]] = notes.pop(blocks[i][0], []) + notes.pop(into[0], []) + [note]
        blocks[min(i, j)] = merged
        del blocks[max(i, j)]
    return blocks, notes


def fit_groups(frame: pd.DataFrame, cfg: RiskConfig) -> ModelFit:
    """Marker groups vs the lowest non-empty group; empty groups omitted, groups without events merged."""
    cuts, marker = cfg.group_cuts, cfg.marker
    codes = pd.Series(marker_groups(frame[marker], cuts), index=frame.index)
    has_marker = codes >= 0
    n, events = int(has_marker.sum()), int(frame.loc[has_marker, EVENT].sum())
    missing = {marker: int((~has_marker).sum())} if not has_marker.all() else {}
    n_g = [int((codes == g).sum()) for g in range(len(cuts) + 1)]
    events_g = [int(frame.loc[codes == g, EVENT].sum()) for g in range(len(cuts) + 1)]
    failure = not_estimable(n, events)
    blocks, merge_notes = merge_groups(marker, cuts, n_g, events_g) if failure is None else ([], {})
    if failure is None and len(blocks) < 2:
        failure = "not estimated: fewer than two marker groups with patients and events"
    labels = [group_label(marker, cuts, b[0], b[-1]) for b in blocks]
    omitted = [
        _empty_row(GROUPS, group_label(marker, cuts, g), n, events, "omitted: no patients in this group")
        for g in range(len(cuts) + 1)
        if n_g[g] == 0
    ]
    description = f"{marker} groups vs {labels[0] if labels else 'the lowest group'}, unadjusted"
    if failure is not None:
        note = NOTE_SEP.join([*(m for ms in merge_notes.values() for m in ms), failure])
        failed = _empty_row(GROUPS, f"{marker} groups", n, events, note)
        rows = pd.DataFrame([failed, *omitted], columns=COX_COLUMNS)
        return ModelFit(GROUPS, description, rows, n, events, missing, (), failure, None, None)
    dummies = frame.copy()
    for label, block in zip(labels[1:], blocks[1:]):
        dummies[label] = codes.isin(block).astype(float).where(has_marker)
    fit = fit_cox(GROUPS, description, dummies, labels[1:], [], cfg)
    extra = {label: merge_notes.get(block[0], []) for label, block in zip(labels, blocks)}
    if fit.failure is None:
        reference_note = NOTE_SEP.join(["reference group", *fit.notes, *extra[labels[0]]])
        reference = _empty_row(GROUPS, labels[0], n, events, reference_note, coef=0.0, hr=1.0)
    else:
        reference = _empty_row(GROUPS, labels[0], n, events, NOTE_SEP.join(["reference group", fit.failure]))
    estimated = [
        {**r, "note": NOTE_SEP.join(filter(None, [r["note"], *extra[r["term"]]]))}
        for r in fit.rows.to_dict("records")
    ]
    rows = pd.DataFrame([reference, *estimated, *omitted], columns=COX_COLUMNS)
    return ModelFit(GROUPS, description, rows, n, events, missing, fit.notes, fit.failure, fit.fitter, fit.data)


def cox_table(fits: list[ModelFit]) -> pd.DataFrame:
    """One row per term per model; rows without finite estimates carry a note."""
    table = pd.concat([f.rows for f in fits], ignore_index=True)
    table["note"] = table["note"].fillna("").astype(str)
    table[["n", "events"]] = table[["n", "events"]].astype("int64")
    return table[COX_COLUMNS]


def linear_predictor(fitter: CoxPHFitter, data: pd.DataFrame) -> np.ndarray:
    """x·β of each patient (uncentred: the C-index only uses its order)."""
    params = fitter.params_
    return data[list(params.index)].to_numpy(dtype=float) @ params.to_numpy()


def harrell_c(durations: np.ndarray, lp: np.ndarray, events: np.ndarray) -> float:
    """Harrell's C of a risk score (higher lp = higher hazard = shorter survival), by lifelines."""
    from lifelines.utils import concordance_index

    return float(concordance_index(durations, -lp, events))


def c_indices(
    durations: np.ndarray, lps: list[np.ndarray], events: np.ndarray, idx: np.ndarray
) -> list[float] | None:
    """Harrell's C of each score on the patients idx; None when no pair is comparable (no event)."""
    try:
        return [harrell_c(durations[idx], lp[idx], events[idx]) for lp in lps]
    except ZeroDivisionError:  # lifelines: "No admissable pairs in the dataset."
        return None


def bootstrap_c(
    durations: np.ndarray, lps: list[np.ndarray], events: np.ndarray, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """C-index of each score on the same patient resamples, shape (resamples kept, scores).

    The scores are held fixed (apparent C): the interval shows sampling variation of C
    for these models, not the optimism of refitting. Resamples without a comparable
    pair are skipped; the table says how many were kept.
    """
    n = len(durations)
    draws = (c_indices(durations, lps, events, rng.integers(0, n, n)) for _ in range(n_boot))
    kept = [d for d in draws if d is not None]
    return np.asarray(kept, dtype=float).reshape(len(kept), len(lps))


def concordance_table(fits: list[ModelFit], cfg: RiskConfig) -> pd.DataFrame:
    """Harrell's C per model with bootstrap percentile CI, and the marker's C gain on the same patients."""
    by_name = {f.name: f for f in fits}
    rows = [concordance_row(f.name, [f], cfg, stream=i) for i, f in enumerate(fits)]
    rows.append(concordance_row(GAIN, [by_name[MULTIVARIABLE], by_name[CLINICAL]], cfg, stream=len(fits)))
    return pd.DataFrame(rows, columns=CONCORDANCE_COLUMNS)


def concordance_row(name: str, models: list[ModelFit], cfg: RiskConfig, stream: int) -> dict:
    """C of one model, or C(first) - C(second) of two, scored on the first model's patients.

    Both scores of a difference are evaluated on the same resamples (paired bootstrap).
    """
    first = models[0]
    failed = [m for m in models if m.fitter is None]
    if failed:
        note = NOTE_SEP.join(m.failure if len(models) == 1 else f"{m.name} {m.failure}" for m in failed)
        return _c_row(name, math.nan, math.nan, math.nan, 0, first.n, first.events, note)
    t, e = first.data[DURATION].to_numpy(), first.data[EVENT].to_numpy()
    lps = [linear_predictor(m.fitter, first.data) for m in models]
    whole = c_indices(t, lps, e, np.arange(len(t)))
    if whole is None:
        note = "not estimated: no comparable pair of patients"
        return _c_row(name, math.nan, math.nan, math.nan, 0, first.n, first.events, note)
    boot = bootstrap_c(t, lps, e, cfg.bootstrap, np.random.default_rng([cfg.seed, stream]))
    stat = boot[:, 0] - boot[:, 1] if len(models) == 2 else boot[:, 0]
    c = whole[0] - whole[1] if len(models) == 2 else whole[0]
    if len(stat) >= 2:
        lower, upper = (float(q) for q in np.quantile(stat, [cfg.alpha / 2, 1 - cfg.alpha / 2]))
        return _c_row(name, c, lower, upper, len(stat), first.n, first.events, "")
    note = (
        "no bootstrap CI: bootstrap disabled"
        if cfg.bootstrap == 0
        else f"no bootstrap CI: {len(stat)} of {cfg.bootstrap} resamples had a comparable pair"
    )
    return _c_row(name, c, math.nan, math.nan, len(stat), first.n, first.events, note)


def _c_row(
    model: str, c: float, lower: float, upper: float, resamples: int, n: int, events: int, note: str
) -> dict:
    return {
        "model": model,
        "c_index": c,
        "c_lower": lower,
        "c_upper": upper,
        "n": n,
        "events": events,
        "bootstrap": resamples,
        "note": note,
    }


def ph_table(fits: list[ModelFit], cfg: RiskConfig) -> pd.DataFrame:
    """lifelines' proportional_hazard_test (rank time transform) per model and term."""
    from lifelines.statistics import proportional_hazard_test

    rows = []
    for fit in fits:
        base = {"model": fit.name, "n": fit.n, "events": fit.events}
        if fit.fitter is None:
            for term in fit.rows.loc[~fit.rows["note"].str.startswith("omitted"), "term"]:
                note = f"not tested: {fit.failure}"
                rows.append({**base, "term": term, "test_statistic": math.nan, "p": math.nan, "note": note})
            continue
        columns = [*fit.fitter.params_.index, *fit.strata, DURATION, EVENT]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 on tiny samples; reported as a note below
            result = proportional_hazard_test(fit.fitter, fit.data[columns], time_transform="rank").summary
        for term, r in result.iterrows():
            statistic, p = float(r["test_statistic"]), float(r["p"])
            note = "" if math.isfinite(statistic) and math.isfinite(p) else "not estimable: too few events"
            rows.append({**base, "term": str(term), "test_statistic": statistic, "p": p, "note": note})
    return pd.DataFrame(rows, columns=PH_COLUMNS)


def km_groups(frame: pd.DataFrame, cfg: RiskConfig) -> tuple[pd.DataFrame, dict]:
    """Patients and events per non-empty marker group, and the log-rank test across those groups."""
    from lifelines.statistics import multivariate_logrank_test

    codes = marker_groups(frame[cfg.marker], cfg.group_cuts)
    table = pd.DataFrame(
        [
            {"group": group_label(cfg.marker, cfg.group_cuts, g), "n": int((codes == g).sum()),
             "events": int(frame.loc[codes == g, EVENT].sum())}
            for g in range(len(cfg.group_cuts) + 1)
        ],
        columns=KM_COLUMNS,
    )
    present = table[table["n"] > 0]
    if len(present) < 2 or present["events"].sum() == 0:
        why = "fewer than two groups with patients" if len(present) < 2 else "no events"
        return table, {"p": math.nan, "statistic": math.nan, "df": 0, "note": f"log-rank not tested: {why}"}
    sel = codes >= 0
    labels = np.asarray([group_label(cfg.marker, cfg.group_cuts, g) for g in codes[sel]])
    test = multivariate_logrank_test(frame.loc[sel, DURATION], labels, frame.loc[sel, EVENT])
    return table, {"p": float(test.p_value), "statistic": float(test.test_statistic),
                   "df": int(test.degrees_of_freedom), "note": ""}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_km(path: Path, frame: pd.DataFrame, cfg: RiskConfig, logrank: dict) -> None:
    """Kaplan–Meier event-free survival per marker group with at-risk counts; log-rank p in the title."""
    from lifelines import KaplanMeierFitter
    from lifelines.plotting import add_at_risk_counts

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    codes = marker_groups(frame[cfg.marker], cfg.group_cuts)
    fitters = []
    for g in range(len(cfg.group_cuts) + 1):
        sel = codes == g
        if sel.any():
            kmf = KaplanMeierFitter(alpha=cfg.alpha, label=group_label(cfg.marker, cfg.group_cuts, g))
            kmf.fit(frame.loc[sel, DURATION], frame.loc[sel, EVENT])
            kmf.plot_survival_function(ax=ax, ci_show=False)
            fitters.append(kmf)
    if fitters:
        add_at_risk_counts(*fitters, ax=ax, fig=fig, rows_to_show=["At risk", "Events"])
    else:
        ax.text(0.5, 0.5, f"no usable patient with {cfg.marker}", ha="center", va="center", transform=ax.transAxes)
    test = logrank["note"] or f"log-rank {_p_phrase(logrank['p'])}"
    ax.set_title(f"MACE-free survival by {cfg.marker} group ({test})")
    ax.set_xlabel("follow-up (days)")
    ax.set_ylabel("event-free probability")
    ax.set_ylim(0, 1.02)
    fig.tight_layout()
    _save(fig, path, plt)


def plot_forest(path: Path, cox: pd.DataFrame, cfg: RiskConfig) -> None:
    """Hazard ratios with CIs, one line per estimated term, grouped by model, on a log axis."""
    plt = _pyplot()
    with_ci = np.isfinite(cox["hr_lower"]) & np.isfinite(cox["hr_upper"])
    shown = cox[np.isfinite(cox["hr"]) & (with_ci | cox["note"].str.startswith("reference"))]
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.35 * max(len(shown), 1)))
    if len(shown):
        y = np.arange(len(shown))[::-1]
        err = np.vstack([shown["hr"] - shown["hr_lower"], shown["hr_upper"] - shown["hr"]]).astype(float)
        ax.errorbar(shown["hr"], y, xerr=np.nan_to_num(err), fmt="s", color="black", capsize=3)
        ax.set_yticks(y, [f"{m}: {t}" for m, t in zip(shown["model"], shown["term"])])
        ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        lo, hi = ax.get_xlim()
        ticks = [t for t in (0.05, 0.1, 0.2, 0.5, 1, 1.5, 2, 3, 5, 10, 20, 50) if lo <= t <= hi]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_xticks([], minor=True)
        for yi, r in zip(y, shown.itertuples()):
            text = f"{r.hr:.2f} ({r.hr_lower:.2f}–{r.hr_upper:.2f})" if math.isfinite(r.hr_lower) else "reference"
            ax.annotate(text, (1.01, yi), xycoords=("axes fraction", "data"), va="center", fontsize=8)
        ax.set_xlabel(f"hazard ratio ({cfg.ci_level} CI); {cfg.marker_term}: per {cfg.marker_unit:g} units")
    else:
        ax.text(0.5, 0.5, "no hazard ratio could be estimated (see report)", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
    ax.set_title(f"Cox models of MACE: {cfg.marker}")
    fig.tight_layout()
    _save(fig, path, plt)


def _save(fig, path: Path, plt) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def _cell(text: str) -> str:
    """A Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _fmt(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}" if math.isfinite(x) else "–"


def _fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _p_phrase(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {_fmt_p(p)}"


def render_report(
    counts: CohortCounts,
    fits: list[ModelFit],
    cox: pd.DataFrame,
    concordance: pd.DataFrame,
    ph: pd.DataFrame,
    km: pd.DataFrame,
    logrank: dict,
    covariates: list[str],
    cfg: RiskConfig,
) -> str:
    """The report as Markdown: cohort, each model with its numbers, concordance, PH checks, KM, warnings."""
    level = cfg.ci_level
    lines = [
        f"# Risk analysis: {cfg.marker} and MACE",
        "",
        f"ctp_steps {__version__}. Confidence intervals are {level}. Hazard ratios of `{cfg.marker_term}` are per "
        f"{cfg.marker_unit:g} units of `{cfg.marker}`; clinical covariates ({', '.join(covariates) or 'none'}) "
        "per unit of their column (age: per year).",
        "",
        "## Cohort",
        "",
        "| | patients |",
        "| --- | ---: |",
        f"| in the cohort table | {counts.n_patients} |",
        f"| failed (unexpected error; see below) | {counts.n_failed} |",
        f"| excluded by the pipeline | {counts.n_excluded} |",
    ]
    lines += [f"| excluded: {_cell(reason)} | {k} |" for reason, k in counts.exclusion_reasons.items()]
    lines += [
        f"| status ok but follow-up or event missing | {counts.n_no_outcome} |",
        f"| usable (status ok, outcome known) | {counts.n_usable} |",
        f"| events (MACE) among usable | {counts.n_events} |",
        f"| median follow-up of usable (days) | {_fmt(counts.median_followup_days, 0)} |",
        "",
    ]
    if counts.failed:
        lines += [
            "## Failed patients",
            "",
            "A stage raised an unexpected error on these patients (a bug or an unforeseen input, not a known "
            "data problem). They are left out of every model below; each reason names its log, under the "
            "results folder.",
            "",
            "| center | patient | stage | reason |",
            "| --- | --- | --- | --- |",
        ]
        lines += [f"| {_cell(c)} | {_cell(p)} | {_cell(st)} | {_cell(r)} |" for c, p, st, r in counts.failed]
        lines.append("")
    lines += [
        "## Cox models",
        "",
    ]
    for fit in fits:
        lost = counts.n_usable - fit.n
        detail = ", ".join(f"{col} missing for {k}" for col, k in fit.missing.items())
        lines.append(
            f"- **{fit.name}** ({fit.description}): {fit.n} patients, {fit.events} events; "
            f"{lost} usable patient{'s' if lost != 1 else ''} excluded as incomplete"
            + (f" ({detail})" if detail else "")
            + "".join(f"; {note}" for note in [*fit.notes, fit.failure] if note)
        )
    lines += [
        "",
        f"| model | term | HR | {level} CI | p | n | events | note |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    model_notes = {fit.name: set(fit.notes) for fit in fits}  # stated once, in the list above
    for r in cox.itertuples():
        ci = f"{_fmt(r.hr_lower)}–{_fmt(r.hr_upper)}" if math.isfinite(r.hr_lower) else "–"
        note = NOTE_SEP.join(n for n in r.note.split(NOTE_SEP) if n not in model_notes[r.model])
        lines.append(
            f"| {r.model} | `{r.term}` | {_fmt(r.hr)} | {ci} | {_fmt_p(r.p)} | {r.n} | {r.events} | {note} |"
        )
    lines += [
        "",
        "## Concordance (Harrell's C)",
        "",
        f"Percentile bootstrap CIs over {cfg.bootstrap} patient resamples (seed {cfg.seed}) with each model's "
        f"fitted risk score held fixed. `{GAIN}` is C({MULTIVARIABLE}) − C({CLINICAL}), both scored on the "
        f"{MULTIVARIABLE} model's patients with paired resamples. Scores are x·β; a stratified model's "
        "per-center baselines are not part of its score.",
        "",
        f"| model | C-index | {level} CI | n | events | resamples | note |",
        "| --- | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for r in concordance.itertuples():
        ci = f"{_fmt(r.c_lower, 3)}–{_fmt(r.c_upper, 3)}" if math.isfinite(r.c_lower) else "–"
        c = _fmt(r.c_index, 3)
        lines.append(f"| {r.model} | {c} | {ci} | {r.n} | {r.events} | {r.bootstrap} | {r.note} |")
    lines += [
        "",
        "## Proportional hazards (lifelines `proportional_hazard_test`, rank time transform)",
        "",
        "| model | term | statistic | p | note |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    lines += [
        f"| {r.model} | `{r.term}` | {_fmt(r.test_statistic)} | {_fmt_p(r.p)} | {r.note} |"
        for r in ph.itertuples()
    ]
    lines += [
        "",
        f"## Kaplan–Meier by {cfg.marker} group",
        "",
        "| group | patients | events |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| `{r.group}` | {r.n} | {r.events} |" for r in km.itertuples()]
    lines += [
        "",
        logrank["note"]
        or f"Log-rank test across the non-empty groups: χ² = {logrank['statistic']:.2f}, "
        f"df = {logrank['df']}, {_p_phrase(logrank['p'])}.",
        "",
        "Figures: [km.png](km.png), [forest.png](forest.png).",
        "",
        "## Warnings",
        "",
    ]
    warns = report_warnings(counts, fits, cox, ph, cfg)
    lines += [f"- {w}" for w in warns] or ["None."]
    return "\n".join(lines) + "\n"


def report_warnings(
    counts: CohortCounts, fits: list[ModelFit], cox: pd.DataFrame, ph: pd.DataFrame, cfg: RiskConfig
) -> list[str]:
    """Plain-language warnings: no events, failed or fragile models, dropped terms, PH violations."""
    warns = []
    if counts.failed:
        warns.append(f"{counts.n_failed} patient(s) failed with an unexpected error (section Failed patients)")
    if counts.n_usable < 2:
        warns.append(f"only {counts.n_usable} usable patient(s): no model can be estimated")
    elif counts.n_events == 0:
        warns.append("no events among the usable patients: no hazard ratio or C-index can be estimated")
    for fit in fits:
        warns += [f"{fit.name}: {n}" for n in fit.notes]
        if fit.failure:
            warns.append(f"{fit.name}: {fit.failure}")
    term_changes = ("dropped", "omitted", "merged")
    for r in cox.itertuples():
        warns += [f"{r.model}, `{r.term}`: {n}" for n in r.note.split(NOTE_SEP) if n.startswith(term_changes)]
    warns += [
        f"{r.model}: proportional hazards questionable for `{r.term}` ({_p_phrase(r.p)})"
        for r in ph[ph["p"] < cfg.alpha].itertuples()
    ]
    return list(dict.fromkeys(warns))


def summarize(
    counts: CohortCounts, cox: pd.DataFrame, concordance: pd.DataFrame, cfg: RiskConfig, report_path: Path
) -> RiskSummary:
    """Marker HR and C-index of the multivariable model, with the cohort counts."""
    hr = cox[(cox["model"] == MULTIVARIABLE) & (cox["term"] == cfg.marker_term)].iloc[0]
    c = concordance[concordance["model"] == MULTIVARIABLE].iloc[0]
    return RiskSummary(
        n_patients=counts.n_patients,
        n_usable=counts.n_usable,
        n_excluded=counts.n_excluded,
        n_failed=counts.n_failed,
        n_events=counts.n_events,
        model=MULTIVARIABLE,
        marker_term=cfg.marker_term,
        hr=float(hr["hr"]),
        hr_lower=float(hr["hr_lower"]),
        hr_upper=float(hr["hr_upper"]),
        hr_note=str(hr["note"]).split(NOTE_SEP)[-1],  # the row's own reason comes after model-wide notes
        c_index=float(c["c_index"]),
        c_lower=float(c["c_lower"]),
        c_upper=float(c["c_upper"]),
        ci_level=cfg.ci_level,
        report_path=Path(report_path),
    )


def simulate_table_cohort(n: int, outcome: OutcomeParams, seed: int) -> pd.DataFrame:
    """Table-level patients from the phantom's outcome model (no images), for checking the risk stage.

    IMV% follows an ischemia prior: about 45 % of patients have none (a point mass at 0);
    the rest draw 40·Beta(1.3, 4) %, right-skewed up to 40 %. Ischemia is mildly more
    likely with diabetes, male sex and age, so the adjusted and unadjusted HRs differ.
    """
    from ctp_steps.phantom.outcomes import draw_covariates, draw_outcomes

    rng = np.random.default_rng(seed)
    cov = draw_covariates(rng, n, outcome)
    logit = -0.1 + 0.4 * cov["diabetes"] + 0.3 * cov["sex"] + 0.02 * (cov["age"] - outcome.age_mean)
    ischemic = rng.random(n) < 1.0 / (1.0 + np.exp(-logit.to_numpy()))
    imv = np.where(ischemic, np.maximum(40.0 * rng.beta(1.3, 4.0, n), 0.1), 0.0).round(1)
    outcomes = draw_outcomes(rng, cov, imv, outcome)
    return pd.DataFrame(
        {
            "patient_id": [f"SIM{i:05d}" for i in range(n)],
            "center": rng.choice(["SIM-A", "SIM-B", "SIM-C", "SIM-D"], n),
            "status": "ok",
            "reason": None,
            **cov.astype(float),
            "imv_pct": imv,
            **outcomes,
        }
    )
