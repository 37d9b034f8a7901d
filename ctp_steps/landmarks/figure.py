"""Per-patient QC figure: the detected landmarks over the average image.

One row per landmark, three orthogonal slices (index axes: axial, coronal,
sagittal; radiological display for an axial LPS grid) through it; the myocardium outline and the long axis (base → apex,
projected) are drawn on every panel, the title gives the confidence.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctp_steps.types import Geometry

COLORS = {"apex": "tab:red", "base": "tab:cyan", "rv_insertion": "tab:orange"}


def plot_landmarks(
    image_zyx: np.ndarray,
    mask_zyx: np.ndarray,
    geometry: Geometry,
    landmarks: dict,
    out_png: str | Path,
    title: str = "",
    window_hu: tuple[float, float] = (-150.0, 450.0),
) -> None:
    """`landmarks`: name → {"world_mm": [x, y, z], "confidence": c} (landmarks.json)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ctp_steps.figures import save_png

    sp = np.asarray(geometry.spacing)  # x, y, z
    shape = np.asarray(image_zyx.shape)
    idx = {n: geometry.world_to_index(np.asarray(v["world_mm"], dtype=float)) for n, v in landmarks.items()}
    names = list(landmarks)
    fig, axes = plt.subplots(len(names), 3, figsize=(10, 3.3 * len(names)), squeeze=False)
    # (array axis sliced, plotted (row, col) array axes, their x/y/z component for the point, aspect)
    views = (
        ("axial", 0, (1, 2), sp[1] / sp[0]),
        ("coronal", 1, (0, 2), sp[2] / sp[0]),
        ("sagittal", 2, (0, 1), sp[2] / sp[1]),
    )
    for r, name in enumerate(names):
        p_zyx = idx[name][::-1]
        for c, (view, axis, (ra, ca), aspect) in enumerate(views):
            ax = axes[r, c]
            k = int(np.clip(np.rint(p_zyx[axis]), 0, shape[axis] - 1))
            img = np.take(image_zyx, k, axis=axis)
            msk = np.take(mask_zyx, k, axis=axis)
            # axial: anterior up, patient left on the right; coronal/sagittal: superior up (z grows upwards)
            origin = "upper" if axis == 0 else "lower"
            ax.imshow(img, cmap="gray", vmin=window_hu[0], vmax=window_hu[1], origin=origin, aspect=aspect)
            if msk.any():
                ax.contour(msk.astype(float), levels=[0.5], colors="yellow", linewidths=0.7)
            if "apex" in idx and "base" in idx:
                a, b = idx["apex"][::-1], idx["base"][::-1]
                ax.plot([b[ca], a[ca]], [b[ra], a[ra]], "--", color="white", linewidth=0.7)
            for other, q in idx.items():
                q_zyx = q[::-1]
                here = other == name
                ax.plot(q_zyx[ca], q_zyx[ra], "+" if here else ".", color=COLORS.get(other, "magenta"),
                        markersize=14 if here else 5, markeredgewidth=2)
            ax.set_title(f"{name} ({landmarks[name]['confidence']:.2f}) — {view} {k}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_png(fig, out_png, dpi=80)
