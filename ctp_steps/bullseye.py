"""Bull's-eye (AHA polar map) plot of any per-segment value: MBF, IMV, volumes, agreement...

Shared by the stages' QC figures (mbf, imv), beside the AHA definition it draws.

Standard AHA layout (Cerqueira et al. 2002): basal ring outside, mid, apical,
segment 17 (apex) in the centre; anterior (1, 7, 13) at the top, septum on the
left, lateral wall on the right. The wedges come from the same sector table as
the segment construction (`ctp_steps.aha.RING_SECTORS`): a sector at angle θ
about the long axis is drawn at polar angle 120° + θ, which puts the basal
anterior segment 1 (θ ∈ [300°, 360°)) at the top.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from ctp_steps.aha import RING_SECTORS

RING_RADII = {"basal": (0.75, 1.0), "mid": (0.5, 0.75), "apical": (0.25, 0.5)}
APEX_RADIUS = 0.25
PLOT_OFFSET_DEG = 120.0


def segment_wedges() -> dict[int, tuple[float, float, float, float]]:
    """Segment → (inner radius, outer radius, start angle°, end angle°) in the plot; 17 is the disc."""
    out = {17: (0.0, APEX_RADIUS, 0.0, 360.0)}
    for ring, sectors in RING_SECTORS.items():
        r0, r1 = RING_RADII[ring]
        for start, width, seg in sectors:
            out[seg] = (r0, r1, PLOT_OFFSET_DEG + start, PLOT_OFFSET_DEG + start + width)
    return out


def draw_bullseye(
    ax,
    values: Mapping[int, float],
    title: str,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    label: str = "",
    annotate: bool = True,
    fmt: str = "{:.0f}",
) -> None:
    """Draw `values` (segment 1..17 → value; missing or NaN: grey, hatched) as an AHA polar map into `ax`."""
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Wedge

    bad = [s for s in values if s not in range(1, 18)]
    if bad:
        raise ValueError(f"segments must be 1..17, got {bad}")
    finite = [float(v) for v in values.values() if v is not None and math.isfinite(float(v))]
    lo = vmin if vmin is not None else (min(finite) if finite else 0.0)
    hi = vmax if vmax is not None else (max(finite) if finite else 1.0)
    norm = Normalize(lo, hi if hi > lo else lo + 1.0)
    colormap = matplotlib.colormaps[cmap]

    for seg, (r0, r1, a0, a1) in segment_wedges().items():
        v = values.get(seg)
        ok = v is not None and math.isfinite(float(v))
        ax.add_patch(
            Wedge(
                (0, 0), r1, a0, a1, width=r1 - r0,
                facecolor=colormap(norm(float(v))) if ok else "0.85",
                hatch=None if ok else "//", edgecolor="white", linewidth=1.5,
            )
        )
        if annotate:
            r, a = (0.0, 0.0) if seg == 17 else ((r0 + r1) / 2, math.radians((a0 + a1) / 2))
            text = f"{seg}\n" + (fmt.format(float(v)) if ok else "–")
            rgba = colormap(norm(float(v))) if ok else (0.85, 0.85, 0.85, 1)
            dark = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] < 0.5
            ax.text(r * math.cos(a), r * math.sin(a), text, ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")
    for text, xy in (("anterior", (0, 1.08)), ("inferior", (0, -1.1)), ("septal", (-1.12, 0)), ("lateral", (1.12, 0))):
        ax.text(*xy, text, ha="center", va="center", fontsize=8, rotation=90 if text in ("septal", "lateral") else 0)
    ax.set_xlim(-1.25, 1.25)
    ax.set_ylim(-1.2, 1.2)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    ax.figure.colorbar(ScalarMappable(norm=norm, cmap=colormap), ax=ax, fraction=0.046, pad=0.02, label=label)


def plot_bullseye(values: Mapping[int, float], title: str, out_png: str | Path, **style) -> None:
    """`draw_bullseye` alone in a PNG, written atomically; `style` as draw_bullseye's keywords."""
    from ctp_steps.figures import save_png, subplots

    fig, ax = subplots(figsize=(5.2, 4.4))
    draw_bullseye(ax, values, title, **style)
    save_png(fig, out_png, dpi=110, bbox_inches="tight")
