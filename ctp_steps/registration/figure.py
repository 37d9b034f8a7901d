"""Per-patient QC figure of the register stage: the moving frames' LV before and after registration.

Registration is judged by how well each moving frame's LV blood pool overlaps the
reference frame's (the stage's QC, `registration/qc.py`); the JSON report holds the
numbers, this figure shows them. Columns: the worst-aligned moving frames (or evenly
spaced ones), on the axial slice where the reference LV is largest, cropped around
the LV. Rows: the frame before registration, and the registered frame, each with the
reference LV outline (green) and the frame's own LV (red), titled with its LV Dice
to the reference. When the patient is excluded the title gives the reason (one
scrubbed line, no header values or paths) and, if registration never ran, only the
"before" row is drawn.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from ctp_steps.registration.crop import LV_BLOOD
from ctp_steps.registration.qc import dice, lv_dice_checked
from ctp_steps.types import Geometry

MAX_FRAMES = 6
MARGIN_MM = 25.0  # around the LV: enough of the wall and the neighbours to judge the alignment


def shown_frames(n_frames: int, reference: int, per_frame: list[dict] | None, most: int = MAX_FRAMES) -> list[int]:
    """Moving frames to show: the worst by LV Dice after registration when known (those explain an
    exclusion), else evenly spaced; in frame order."""
    moving = [k for k in range(n_frames) if k != reference]
    if len(moving) <= most:
        return moving
    if per_frame:
        dice_after = {int(f["frame"]): float(f["lv_dice_after"]) for f in per_frame}
        return sorted(sorted(moving, key=lambda k: dice_after.get(k, 1.0))[:most])
    return sorted({moving[int(i)] for i in np.linspace(0, len(moving) - 1, most)})


def lv_view(lv_reference: np.ndarray, lv_any: np.ndarray, spacing_xyz, margin_mm: float = MARGIN_MM):
    """(axial slice, row slice, column slice): where the reference LV is largest, cropped around every LV shown."""
    area = lv_reference.reshape(len(lv_reference), -1).sum(axis=1)
    k = int(np.argmax(area)) if area.any() else len(lv_reference) // 2
    where = np.argwhere(lv_any) if lv_any.any() else None
    if where is None:
        return k, slice(None), slice(None)
    (_, y0, x0), (_, y1, x1) = where.min(axis=0), where.max(axis=0)
    my, mx = int(np.ceil(margin_mm / spacing_xyz[1])), int(np.ceil(margin_mm / spacing_xyz[0]))
    return k, slice(max(y0 - my, 0), y1 + my + 1), slice(max(x0 - mx, 0), x1 + mx + 1)


def plot_registration(
    out_png: str | Path,
    reason: str | None,
    *,
    frames: np.ndarray,
    masks: np.ndarray,
    geometry: Geometry,
    report: dict | None = None,
    registered: np.ndarray | None = None,
    registered_masks: np.ndarray | None = None,
    min_lv_dice_after: float | None = None,
    min_lv_contrast_sd: float = 0.0,
    title: str = "",
    window_hu: tuple[float, float] = (-150.0, 450.0),
) -> None:
    """The QC figure (module doc). `reason`: why the patient was excluded, or None when it was not.

    `report` is register_arrays' report (reference frame, per-frame Dice); without it (excluded before
    registration ran) the frames are shown against the first frame with an LV, before registration only.
    """
    from ctp_steps.figures import save_png, subplots

    lv = masks == LV_BLOOD
    if report is not None:
        reference, per_frame = int(report["reference_frame"]), report.get("frames")
    else:
        with_lv = [k for k in range(len(lv)) if lv[k].any()]
        reference, per_frame = (with_lv[0] if with_lv else 0), None
    after = registered is not None and registered_masks is not None
    lv_after = registered_masks == LV_BLOOD if after else None
    ks = shown_frames(len(frames), reference, per_frame) or [reference]
    union = lv[[reference, *ks]].any(axis=0) | (lv_after[ks].any(axis=0) if after else False)
    z, rows, cols = lv_view(lv[reference], union, geometry.spacing)
    aspect = geometry.spacing[1] / geometry.spacing[0]
    ref_lv = lv[reference, z, rows, cols].astype(float)

    checked = lv_dice_checked(report, min_lv_contrast_sd) if report is not None else [True] * len(frames)
    n_rows = 2 if after else 1
    fig, axes = subplots(n_rows, len(ks), figsize=(2.6 * len(ks) + 0.4, 2.8 * n_rows + 0.9), squeeze=False)
    for c, k in enumerate(ks):
        panels = [("before", frames[k], lv[k], dice(lv[k], lv[reference]))]
        if after:
            panels.append(("after", registered[k], lv_after[k], dice(lv_after[k], lv[reference])))
        for r, (when, image, own_lv, d) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(image[z, rows, cols], cmap="gray", vmin=window_hu[0], vmax=window_hu[1], aspect=aspect)
            if ref_lv.any():
                ax.contour(ref_lv, levels=[0.5], colors="lime", linewidths=0.8)
            if own_lv[z, rows, cols].any():
                ax.contour(own_lv[z, rows, cols].astype(float), levels=[0.5], colors="red", linewidths=0.8)
            unseen = k != reference and not checked[k]  # the Dice check does not apply (qc.lv_dice_checked)
            low = when == "after" and min_lv_dice_after is not None and d < min_lv_dice_after and not unseen
            note = f" < {min_lv_dice_after:g}" if low else (" (LV unseen)" if when == "after" and unseen else "")
            ax.set_title(f"frame {k} {when}: Dice {d:.2f}{note}", fontsize=8, color="red" if low else "black")
            ax.set_xticks([])
            ax.set_yticks([])
    method = f"{report['method']}, " if report is not None else ""
    head = f"{title}: " if title else ""
    status = f"excluded: {' '.join(reason.split())}" if reason else "ok"
    text = f"{head}{method}LV vs reference frame {reference} (green), axial {z}; {status}"
    fig.suptitle(textwrap.fill(text, width=int(30 * len(ks) + 20)), fontsize=8)
    fig.tight_layout()
    save_png(fig, out_png, dpi=80)
