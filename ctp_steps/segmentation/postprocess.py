"""Post-processing of predicted masks and the plausibility checks that exclude a patient with a reason."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ctp_steps.types import PatientInputError

MYO_MAX_HOLE_ML = 0.5  # myocardium holes up to this are filled; the LV cavity (tens of mL) never is


def myocardium_hole_voxels(spacing_zyx) -> int:
    return int(MYO_MAX_HOLE_ML * 1000.0 / float(np.prod(spacing_zyx)))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean volume (empty stays empty)."""
    labelled, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled == int(np.argmax(sizes))


def fill_holes(mask: np.ndarray, max_hole_voxels: int | None = None) -> np.ndarray:
    """Enclosed holes filled; with `max_hole_voxels` only holes up to that size (a myocardium keeps its cavity)."""
    filled = ndimage.binary_fill_holes(mask)
    if max_hole_voxels is None:
        return filled
    holes, n = ndimage.label(filled & ~mask)
    if n == 0:
        return mask
    sizes = np.bincount(holes.ravel())
    small = np.flatnonzero(sizes <= max_hole_voxels)
    return mask | (np.isin(holes, small[small > 0]))


def clean_labels(labels: np.ndarray, classes: tuple[int, ...], max_hole_voxels: int | None = None) -> np.ndarray:
    """Per class of one (z, y, x) label volume: largest connected component, holes filled (into background only)."""
    out = labels.copy()
    for c in classes:
        mask = largest_component(labels == c)
        out[(labels == c) & ~mask] = 0
        out[fill_holes(mask, max_hole_voxels) & (out == 0)] = c
    return out


def clean_series(labels: np.ndarray, classes: tuple[int, ...], max_hole_voxels: int | None = None) -> np.ndarray:
    """`clean_labels` on every frame of a (t, z, y, x) label series."""
    return np.stack([clean_labels(frame, classes, max_hole_voxels) for frame in labels])


def check_volume(name: str, volumes_ml: np.ndarray, bounds, where: str) -> None:
    """Every volume must lie within bounds.min_ml..max_ml (an empty mask is 0 mL); else the patient is excluded."""
    volumes_ml = np.atleast_1d(np.asarray(volumes_ml, dtype=float))
    bad = np.flatnonzero((volumes_ml < bounds.min_ml) | (volumes_ml > bounds.max_ml))
    if bad.size == 0:
        return
    k = int(bad[0])
    what = "empty" if volumes_ml[k] == 0 else f"{volumes_ml[k]:.1f} mL, outside {bounds.min_ml:g}-{bounds.max_ml:g} mL"
    frame = f" in frame {k}" if volumes_ml.size > 1 else ""
    more = f" ({bad.size} of {volumes_ml.size} frames)" if volumes_ml.size > 1 and bad.size > 1 else ""
    raise PatientInputError(f"{where}: implausible {name} mask{frame}: {what}{more}")
