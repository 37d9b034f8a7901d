"""Harrell's C of each Cox model with bootstrap CIs, and the marker's gain over the clinical model.

Each model's fitted risk score is held fixed and only the patients are resampled.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ctp_steps.risk.cohort import DURATION, EVENT
from ctp_steps.risk.config import RiskConfig
from ctp_steps.risk.cox import CLINICAL, MULTIVARIABLE, NOTE_SEP, ModelFit

if TYPE_CHECKING:
    from lifelines import CoxPHFitter

GAIN = "multivariable_minus_clinical"
CONCORDANCE_COLUMNS = ["model", "c_index", "c_lower", "c_upper", "n", "events", "bootstrap", "note"]


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
