"""The phantom's grids: the reconstructed (output) grid and its supersampled, padded twin.

Anatomy is evaluated at the centres of a grid `factor` times finer per axis,
padded by whole output voxels so that motion can pull anatomy in from outside
the field of view; block-averaging fine → output is the partial-volume effect.
Output grids are axial with identity direction, so array axis (z, y, x) runs
along world (S, P, L). Boxes are fine-index slices aligned to output blocks;
fields are computed from global indices, so a value does not depend on which
box it was computed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctp_steps.types import Geometry

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class PhantomGrid:
    geometry: Geometry  # the reconstructed grid
    shape: tuple[int, int, int]  # reconstructed (z, y, x)
    factor: int  # supersampling per axis
    pad: tuple[int, int, int]  # output voxels of margin on each side (z, y, x)

    @property
    def padded_shape(self) -> tuple[int, int, int]:
        return tuple(n + 2 * p for n, p in zip(self.shape, self.pad))

    @property
    def fine_shape(self) -> tuple[int, int, int]:
        return tuple(self.factor * n for n in self.padded_shape)

    @property
    def spacing_zyx(self) -> np.ndarray:
        return np.asarray(self.geometry.spacing[::-1])

    @property
    def fine_geometry(self) -> Geometry:
        """Geometry of the padded fine grid (its voxel centres)."""
        sp = np.asarray(self.geometry.spacing)
        pad_xyz = np.asarray(self.pad[::-1])
        origin = np.asarray(self.geometry.origin) - pad_xyz * sp - sp / 2 + sp / (2 * self.factor)
        return Geometry(tuple(origin.tolist()), tuple((sp / self.factor).tolist()), IDENTITY)

    def fine_axis(self, axis: int, start: int, stop: int) -> np.ndarray:
        """World coordinates (mm) of fine voxel centres [start, stop) along array axis 0/1/2 (z/y/x)."""
        w = 2 - axis  # world component of this array axis
        s = self.geometry.spacing[w]
        k = self.factor
        j = np.arange(start, stop, dtype=float)
        return self.geometry.origin[w] + ((j - k * self.pad[axis] + 0.5) / k - 0.5) * s

    def box_coords(self, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable world x, y, z (mm) of the fine voxels of a box."""
        z = self.fine_axis(0, box[0].start, box[0].stop)[:, None, None]
        y = self.fine_axis(1, box[1].start, box[1].stop)[None, :, None]
        x = self.fine_axis(2, box[2].start, box[2].stop)[None, None, :]
        return x, y, z

    def full_box(self) -> Box:
        return tuple(slice(0, n) for n in self.fine_shape)

    def output_box(self) -> Box:
        """The fine voxels of the reconstructed field of view (no padding)."""
        k = self.factor
        return tuple(slice(k * p, k * (p + n)) for p, n in zip(self.pad, self.shape))

    def box_around(self, lo_xyz: np.ndarray, hi_xyz: np.ndarray, within: Box) -> Box:
        """Smallest block-aligned box inside `within` that covers the world box [lo, hi]."""
        k = self.factor
        slices = []
        for axis in range(3):
            w = 2 - axis
            s = self.geometry.spacing[w]
            # output-voxel index (in the padded grid) of a world coordinate
            lo = (lo_xyz[w] - self.geometry.origin[w]) / s + self.pad[axis]
            hi = (hi_xyz[w] - self.geometry.origin[w]) / s + self.pad[axis]
            b0 = max(int(np.floor(lo)) - 1, within[axis].start // k)
            b1 = min(int(np.ceil(hi)) + 2, within[axis].stop // k)
            slices.append(slice(k * b0, k * max(b1, b0)))
        return tuple(slices)


def intersect(a: Box, b: Box) -> Box:
    return tuple(
        slice(max(x.start, y.start), max(max(x.start, y.start), min(x.stop, y.stop))) for x, y in zip(a, b)
    )


def relative(inner: Box, outer: Box) -> Box:
    """`inner` expressed in the index space of an array that holds `outer`."""
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer))


def block_sum(fine: np.ndarray, k: int) -> np.ndarray:
    """Sum over k×k×k blocks in a fixed order, in float64 (same result whatever the array extent)."""
    out = np.zeros(tuple(n // k for n in fine.shape), dtype=np.float64)
    for dz in range(k):
        for dy in range(k):
            for dx in range(k):
                out += fine[dz::k, dy::k, dx::k]
    return out


def block_majority(labels: np.ndarray, k: int, n_labels: int) -> np.ndarray:
    """Most frequent label per k×k×k block; ties go to the lower label."""
    counts = np.stack([block_sum(labels == lab, k) for lab in range(n_labels)])
    return np.argmax(counts, axis=0).astype(np.uint8)
