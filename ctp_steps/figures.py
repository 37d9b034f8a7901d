"""Shared figure helpers of the stages' QC PNGs (the bull's-eye plot: ctp_steps.bullseye)."""

from __future__ import annotations

from pathlib import Path


def save_png(fig, out_png: str | Path, dpi: int, **savefig) -> None:
    """Write `fig` as a PNG atomically (no partial file on failure) and close it; `savefig` as matplotlib's."""
    import matplotlib.pyplot as plt

    from ctp_steps.io import atomic_path

    with atomic_path(Path(out_png)) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", **savefig)
    plt.close(fig)
