"""What the two per-patient segmentation stages share: checked weights, the model on the job's device.

The stages themselves: `segment_frames.py` (VB-Net aorta + LV blood pool on
every frame, and the AIF) and `segment_myocardium.py` (VB-Net myocardium on the
registered average). Both post-process (largest connected component, holes
filled) and exclude the patient, with the reason, when a mask is empty or its
volume lies outside the configured physiological bounds. With a `png` output,
each writes its masks' overlays (`plot_mask_overlays`), also for an excluded
patient, titled with the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctp_steps.models import MANIFEST, read_manifest, verified_weights
from ctp_steps.types import Geometry

AORTA, LV_BLOOD = 1, 2  # frames model classes
MYO_CLASS = 1  # myocardium model class


def checked_weights(name: str, weights: Path, manifest: Path = MANIFEST) -> tuple[Path, str]:
    """The manifest's file for `name` after its checksum check; it must be the file the rule passed."""
    path = verified_weights(name, manifest)
    if path.resolve() != Path(weights).resolve():
        from ctp_steps.models import ModelError

        raise ModelError(f"model {name!r}: rule input {weights} is not the manifest's file {path}")
    return path, read_manifest(manifest)[name]["sha256"]


def load_checked(name: str, weights: Path, device, manifest: Path | None):
    """The model `name` on `device` after its checksum check, and its sha256."""
    from ctp_steps.segmentation.infer import load_model

    path, sha = checked_weights(name, weights, manifest or MANIFEST)
    return load_model(path, device), sha


def outside(volumes_ml: np.ndarray, bounds) -> list[int]:
    """Frames whose mask volume lies outside `bounds` (check_volume's rule): the ones a failure figure shows."""
    v = np.atleast_1d(np.asarray(volumes_ml, dtype=float))
    return np.flatnonzero((v < bounds.min_ml) | (v > bounds.max_ml)).tolist()


def plot_mask_overlays(
    out_png: str | Path,
    reason: str | None,
    *,
    images: np.ndarray,
    labels: np.ndarray,
    geometry: Geometry,
    classes: dict[int, str],
    frames: list[int] | None = None,
    title: str = "",
    most: int = 6,
    window_hu: tuple[float, float] = (-150.0, 450.0),
) -> None:
    """The masks a segmentation stage produced, outlined on a few frames, so an exclusion shows what was found.

    `images`, `labels`: (t, z, y, x) (one frame for a single volume). Shown: `frames` first (those that
    failed a check), then evenly spaced others, up to `most`; each on the axial slice where its masks are
    largest (the middle slice when empty), titled with each class's volume. `reason`: why the patient was
    excluded (one scrubbed line), or None.
    """
    import textwrap

    from ctp_steps.figures import save_png, subplots

    n = len(images)
    picked = list(dict.fromkeys([k for k in (frames or []) if 0 <= k < n]))[:most]
    rest = [k for k in np.linspace(0, n - 1, most).round().astype(int).tolist() if k not in picked]
    shown = sorted(picked + rest[: max(most - len(picked), 0)]) or [0]
    colors = ("tab:red", "yellow", "cyan", "lime")
    aspect = geometry.spacing[1] / geometry.spacing[0]
    fig, axes = subplots(1, len(shown), figsize=(2.8 * len(shown) + 0.4, 3.6), squeeze=False)
    for ax, k in zip(axes[0], shown):
        fg = np.isin(labels[k], list(classes))
        area = fg.reshape(len(fg), -1).sum(axis=1)
        z = int(np.argmax(area)) if area.any() else len(fg) // 2
        ax.imshow(images[k, z], cmap="gray", vmin=window_hu[0], vmax=window_hu[1], aspect=aspect)
        for i, c in enumerate(classes):
            m = labels[k, z] == c
            if m.any():
                ax.contour(m.astype(float), levels=[0.5], colors=colors[i % len(colors)], linewidths=0.8)
        volumes = ", ".join(f"{name} {np.count_nonzero(labels[k] == c) * geometry.voxel_ml:.1f} mL"
                            for c, name in classes.items())
        where = f"frame {k}, " if n > 1 else ""
        ax.set_title(textwrap.fill(f"{where}axial {z}: {volumes}", 40), fontsize=7,
                     color="red" if k in picked else "black")
        ax.set_xticks([])
        ax.set_yticks([])
    legend = ", ".join(f"{name} {colors[i % len(colors)].removeprefix('tab:')}" for i, name in enumerate(classes.values()))
    head = f"{title}: " if title else ""
    status = f"excluded: {' '.join(reason.split())}" if reason else "ok"
    fig.suptitle(textwrap.fill(f"{head}{legend}; {status}", width=int(32 * len(shown) + 20)), fontsize=8)
    fig.tight_layout()
    save_png(fig, out_png, dpi=80)
