"""Marker groups and their Kaplan–Meier table with the log-rank test.

The grouping of the marker by the configured cut points is shared by the
groups Cox model and the Kaplan–Meier figure, so it lives here with the
Kaplan–Meier counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ctp_steps.risk.cohort import DURATION, EVENT
from ctp_steps.risk.config import RiskConfig

KM_COLUMNS = ["group", "n", "events"]


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
