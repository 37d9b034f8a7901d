"""Figures of the risk stage: Kaplan–Meier curves per marker group and the forest plot.

matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ctp_steps.io import atomic_path
from ctp_steps.risk.cohort import DURATION, EVENT
from ctp_steps.risk.config import RiskConfig
from ctp_steps.risk.km import group_label, marker_groups
from ctp_steps.risk.report import _p_phrase


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
