"""Cox models of MACE: fitting with guard rails, the tidy Cox table and the PH tests.

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
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ctp_steps.risk.cohort import CENTER, DURATION, EVENT
from ctp_steps.risk.config import RiskConfig
from ctp_steps.risk.km import group_label, marker_groups

if TYPE_CHECKING:
    from lifelines import CoxPHFitter

UNIVARIABLE = "univariable"
GROUPS = "groups"
CLINICAL = "clinical"
MULTIVARIABLE = "multivariable"
STRATIFIED = "multivariable_center_strata"

COX_COLUMNS = [
    "model", "term", "coef", "se", "hr", "hr_lower", "hr_upper", "z", "p", "n", "events", "penalizer", "note",
]
PH_COLUMNS = ["model", "term", "test_statistic", "p", "n", "events", "note"]
NOTE_SEP = "; "  # joins the notes of a row; no single note contains it


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
