"""Shared figure helpers of the stages' QC PNGs (the bull's-eye plot: ctp_steps.bullseye)."""

from __future__ import annotations

from pathlib import Path


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], squeeze: bool = True, **kw):
    """A figure and its axes without pyplot (as `plt.subplots`).

    pyplot would pick a GUI backend and keep every figure in a global registry; a stage process writes one or two
    PNGs, and importing pyplot cost each of them 0.4-0.7 s of start-up (BENCHMARKS.md, "Start-up and
    allocator, per stage").
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze, **kw)


def save_png(fig, out_png: str | Path, dpi: int, **savefig) -> None:
    """Write `fig` as a PNG atomically (no partial file on failure); `savefig` as matplotlib's."""
    from ctp_steps.io import atomic_path

    with atomic_path(Path(out_png)) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", **savefig)
