"""One canonical voxel order for every net and geometric step: index axes x, y, z along world L, P, S.

DICOM stores the same anatomy in many voxel orders: feet-first patients give a
row direction towards the patient's right and slices from foot to head,
flipped row or column cosines mirror the in-plane image. The world geometry
is right either way, but a net sees a mirrored heart. Reordering the voxels so
that each index axis points along +L, +P, +S (the nearest such order for an
oblique stack) is a permutation of the same voxels: nothing is resampled, the
world geometry is exact, and the stored order is recorded so it can be undone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctp_steps.types import Geometry

_WORLD = ("L", "P", "S")
_OPPOSITE = {"L": "R", "P": "A", "S": "I"}


@dataclass(frozen=True)
class AxisReorder:
    """How stored index axes map to canonical ones (all in (x, y, z) order).

    `source[j]` is the stored index axis that becomes canonical axis j; `flip[j]`
    says whether it runs backwards.
    """

    source: tuple[int, int, int]
    flip: tuple[bool, bool, bool]

    @property
    def is_identity(self) -> bool:
        return self.source == (0, 1, 2) and not any(self.flip)


def stored_orientation(geometry: Geometry) -> str:
    """World direction each stored index axis (x, y, z) points to, e.g. `L,P,S` (canonical) or `R,P,I`."""
    d = geometry.direction_matrix
    letters = []
    for i in range(3):
        w = int(np.argmax(np.abs(d[:, i])))
        letters.append(_WORLD[w] if d[w, i] > 0 else _OPPOSITE[_WORLD[w]])
    return ",".join(letters)


def canonical_reorder(geometry: Geometry) -> AxisReorder:
    """The permutation and flips that bring the index axes nearest to +L, +P, +S.

    Axes are assigned greedily by the largest direction cosine, so an oblique
    stack (gantry tilt, rotated FOV) goes to its nearest canonical order.
    """
    d = np.abs(geometry.direction_matrix)  # d[world, index]
    source = [-1, -1, -1]
    free_world, free_index = {0, 1, 2}, {0, 1, 2}
    for w, i in sorted(np.ndindex(3, 3), key=lambda wi: -d[wi]):
        if w in free_world and i in free_index:
            source[w] = i
            free_world.discard(w)
            free_index.discard(i)
    signed = geometry.direction_matrix
    flip = tuple(bool(signed[w, source[w]] < 0) for w in range(3))
    return AxisReorder(tuple(source), flip)


def reorder_geometry(geometry: Geometry, shape_zyx: tuple[int, int, int], reorder: AxisReorder) -> Geometry:
    """Geometry of the reordered grid: same voxel centres in the world, new index order."""
    d = geometry.direction_matrix
    sizes_xyz = (shape_zyx[2], shape_zyx[1], shape_zyx[0])
    first = np.zeros(3)
    for j, i in enumerate(reorder.source):
        if reorder.flip[j]:
            first[i] = sizes_xyz[i] - 1
    origin = geometry.index_to_world(first)
    columns = [d[:, i] * (-1.0 if reorder.flip[j] else 1.0) for j, i in enumerate(reorder.source)]
    return Geometry(
        origin=tuple(float(v) for v in origin),
        spacing=tuple(float(geometry.spacing[i]) for i in reorder.source),
        direction=tuple(float(v) for v in np.column_stack(columns).ravel()),
    )


def reorder_array(array: np.ndarray, reorder: AxisReorder) -> np.ndarray:
    """Reorder the last three axes (z, y, x) of `array` (a volume or a (t, z, y, x) series)."""
    lead = array.ndim - 3
    axis_of = {0: lead + 2, 1: lead + 1, 2: lead}  # index axis (x, y, z) → numpy axis
    flipped = np.flip(array, axis=[axis_of[i] for j, i in enumerate(reorder.source) if reorder.flip[j]] or None) \
        if any(reorder.flip) else array
    order = [*range(lead), axis_of[reorder.source[2]], axis_of[reorder.source[1]], axis_of[reorder.source[0]]]
    return np.ascontiguousarray(np.transpose(flipped, order))


def to_canonical(array: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, Geometry, AxisReorder]:
    """The array (volume or series) and its geometry in canonical voxel order, and the reorder applied."""
    reorder = canonical_reorder(geometry)
    if reorder.is_identity:
        return array, geometry, reorder
    return reorder_array(array, reorder), reorder_geometry(geometry, array.shape[-3:], reorder), reorder
