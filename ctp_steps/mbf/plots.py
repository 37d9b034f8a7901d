"""QC figure of the MBF stage: AIF and segment curves with their fits, and the MBF bull's-eye."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ctp_steps.aha import SEGMENT_TERRITORY
from ctp_steps.bullseye import draw_bullseye
from ctp_steps.figures import save_png, subplots

TERRITORY_COLOURS = {"LAD": "tab:blue", "RCA": "tab:green", "LCX": "tab:red"}


def mbf_figure(est, tac: pd.DataFrame, segments: pd.DataFrame, out_png: Path) -> None:
    """AIF (measured and model), segment mean curves with fits (`tac`: the stage's tac_table), MBF bull's-eye."""
    fig, axes = subplots(1, 3, figsize=(15, 4.2))
    aif = tac[tac.curve == "aif"]
    for kind, style in (("measured", "o"), ("model", "-")):
        part = aif[aif.kind == kind]
        axes[0].plot(part.time_s, part.hu, style, color="k", ms=4, label=f"AIF {kind}")
    axes[0].axvline(est.aif.arrival_s, color="0.5", ls=":", label="bolus arrival")
    axes[0].set(xlabel="time (s)", ylabel="enhancement (HU)", title="arterial input")
    axes[0].legend(fontsize=7)
    seg = tac[tac.curve == "segment"]
    for s, part in seg.groupby("segment"):
        colour = TERRITORY_COLOURS[SEGMENT_TERRITORY[int(s)]]
        measured, fitted = part[part.kind == "measured"], part[part.kind == "fitted"]
        axes[1].plot(measured.time_s, measured.hu, "o", color=colour, ms=2.5, alpha=0.7)
        axes[1].plot(fitted.time_s, fitted.hu, "-", color=colour, lw=0.8, alpha=0.8)
    for terr, colour in TERRITORY_COLOURS.items():
        axes[1].plot([], [], color=colour, label=terr)
    axes[1].set(xlabel="time (s)", ylabel="enhancement (HU)", title=f"segment curves, {est.method} fits")
    axes[1].legend(fontsize=7)
    values = dict(zip(segments.segment, segments.mbf_mean))
    finite = np.asarray([v for v in values.values() if math.isfinite(v)])
    draw_bullseye(axes[2], values, "MBF (segment mean)", "inferno", 0.0,
                  float(max(300.0, finite.max())) if finite.size else 300.0, "mL/100mL/min")
    save_png(fig, out_png, dpi=100, bbox_inches="tight")
