"""Per-patient QC figure: the detected landmarks over the average image.

One row per landmark, three orthogonal slices (index axes: axial, coronal,
sagittal; radiological display for an axial LPS grid) through it; the myocardium outline and the long axis (base → apex,
projected) are drawn on every panel, the title gives the confidence.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctp_steps.figures import save_png, subplots
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

    sp = np.asarray(geometry.spacing)  # x, y, z
    shape = np.asarray(image_zyx.shape)
    idx = {n: geometry.world_to_index(np.asarray(v["world_mm"], dtype=float)) for n, v in landmarks.items()}
    names = list(landmarks)
    fig, axes = subplots(len(names), 3, figsize=(10, 3.3 * len(names)), squeeze=False)
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


def reason_title(reason: str, title: str = "", width: int = 110) -> str:
    """`<title>: excluded: <reason>`, wrapped to the figure's width (the reason is one scrubbed line, no PHI)."""
    import textwrap

    head = f"{title}: excluded: " if title else "excluded: "
    return textwrap.fill(head + " ".join(reason.split()), width=width)


def plot_landmark_failure(
    out_png: str | Path,
    reason: str,
    *,
    image_zyx: np.ndarray,
    mask_zyx: np.ndarray,
    geometry: Geometry,
    detection: dict | None = None,
    heatmaps: np.ndarray | None = None,
    crop: Geometry | None = None,
    geometric: dict | None = None,
    min_confidence: float | None = None,
    title: str = "",
    window_hu: tuple[float, float] = (-150.0, 450.0),
) -> None:
    """What the landmark stage saw when it excluded the patient, so a user can tell a flat heatmap from a wrong mask.

    One row per landmark: the heatmap's maximum projections over the LV crop (along z, y, x) with the net's
    candidate (+) and its confidence, then the axial slice of the average through the candidate with the
    myocardium outline and the geometric fallback's attempt (x, its quality; or why it found nothing).
    Without a detection (e.g. an empty myocardium mask): axial slices of the average with whatever mask there is.
    `detection`: name → {"world_mm", "confidence"}; `heatmaps`: (K, D, H, W) probabilities on `crop`;
    `geometric`: name → {"world_mm", "quality"} plus optional "failure" (text), or None when not tried.
    """
    from ctp_steps.landmarks.crop import world_to_crop_zyx

    shape = np.asarray(image_zyx.shape)
    sp = np.asarray(geometry.spacing)
    if not detection:
        fig = _mask_slices(image_zyx, mask_zyx, sp, window_hu)
        fig.suptitle(reason_title(reason, title), fontsize=8)
        fig.tight_layout()
        save_png(fig, out_png, dpi=80)
        return
    names = list(detection)
    geo = {k: v for k, v in (geometric or {}).items() if isinstance(v, dict)}
    fig, axes = subplots(len(names), 4, figsize=(12, 3.2 * len(names) + 0.8), squeeze=False)
    for r, name in enumerate(names):
        conf = float(detection[name]["confidence"])
        floor = f" < {min_confidence:.2f}" if min_confidence is not None and conf < min_confidence else ""
        world = np.asarray(detection[name]["world_mm"], dtype=float)
        if heatmaps is not None and crop is not None:
            p = world_to_crop_zyx(world[None], crop)[0]
            for c, (axis, (ra, ca)) in enumerate(((0, (1, 2)), (1, (0, 2)), (2, (0, 1)))):
                ax = axes[r, c]
                mip = heatmaps[r].max(axis=axis)
                ax.imshow(mip, cmap="magma", origin="upper" if axis == 0 else "lower", vmin=0.0,
                          vmax=max(float(mip.max()), 1e-12))
                ax.plot(p[ca], p[ra], "+", color="cyan", markersize=14, markeredgewidth=2)
                ax.set_title(f"{name} ({conf:.2f}{floor}): heatmap max along {'zyx'[axis]}", fontsize=7)
        else:
            for c in range(3):
                axes[r, c].text(0.5, 0.5, "no heatmap", ha="center", va="center", transform=axes[r, c].transAxes)
        # the average through the candidate: net (+) and geometric fallback (x)
        ax = axes[r, 3]
        idx = geometry.world_to_index(world)[::-1] if np.all(np.isfinite(world)) else np.asarray(shape) / 2
        k = int(np.clip(np.rint(idx[0]), 0, shape[0] - 1))
        ax.imshow(image_zyx[k], cmap="gray", vmin=window_hu[0], vmax=window_hu[1], aspect=sp[1] / sp[0])
        if mask_zyx[k].any():
            ax.contour(mask_zyx[k].astype(float), levels=[0.5], colors="yellow", linewidths=0.7)
        ax.plot(idx[2], idx[1], "+", color=COLORS.get(name, "magenta"), markersize=14, markeredgewidth=2)
        if name in geo:
            g = np.asarray(geo[name]["world_mm"], dtype=float)
            if np.all(np.isfinite(g)):
                gi = geometry.world_to_index(g)[::-1]
                ax.plot(gi[2], gi[1], "x", color="lime", markersize=10, markeredgewidth=2)
            what = f"geometric x ({float(geo[name]['quality']):.2f})" if np.all(np.isfinite(g)) else "geometric: none"
        else:
            what = "geometric: not tried"
        ax.set_title(f"{name} + net, {what}, axial {k}", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    failure = (geometric or {}).get("failure")
    text = reason_title(reason, title) + (f"\ngeometric fallback: {' '.join(str(failure).split())[:150]}" if failure else "")
    fig.suptitle(text, fontsize=8)
    fig.tight_layout()
    save_png(fig, out_png, dpi=80)


def _mask_slices(image_zyx: np.ndarray, mask_zyx: np.ndarray, sp: np.ndarray, window_hu, n: int = 4):
    """Axial slices through the mask (or the volume's middle when it is empty), the mask outlined."""
    zs = np.flatnonzero(mask_zyx.reshape(len(mask_zyx), -1).any(axis=1))
    lo, hi = (zs[0], zs[-1]) if zs.size else (len(image_zyx) // 4, 3 * len(image_zyx) // 4)
    slices = sorted({int(k) for k in np.linspace(lo, hi, n)})
    fig, axes = subplots(1, len(slices), figsize=(3 * len(slices), 3.6), squeeze=False)
    for ax, k in zip(axes[0], slices):
        ax.imshow(image_zyx[k], cmap="gray", vmin=window_hu[0], vmax=window_hu[1], aspect=sp[1] / sp[0])
        if mask_zyx[k].any():
            ax.contour(mask_zyx[k].astype(float), levels=[0.5], colors="yellow", linewidths=0.7)
        ax.set_title(f"axial {k}: {int(np.count_nonzero(mask_zyx[k]))} mask voxels", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig
