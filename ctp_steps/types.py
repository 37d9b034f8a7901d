"""Data types shared by the stages: image geometry, per-patient failures, stage status.

Array convention everywhere: numpy arrays in SimpleITK order, (z, y, x) for a
volume and (t, z, y, x) for a dynamic series. World coordinates are DICOM/ITK
LPS millimetres. Geometry tuples are in ITK order (x, y, z).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

# Patient and center identifiers: safe as path components, nothing like `../x`.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


def block_factors(spacing_zyx_mm, target_mm: float | None) -> tuple[int, int, int]:
    """Voxels per block along (z, y, x): the whole number whose span is closest to `target_mm` (1 where a
    voxel is already about that coarse, or when `target_mm` is None). Closest, not "at most": 0.8 mm voxels
    under a 1.5 mm target would otherwise stay unaveraged and cost 4x the voxels."""
    if target_mm is None:
        return (1, 1, 1)
    return tuple(max(1, int(np.floor(target_mm / s + 0.5))) for s in spacing_zyx_mm)


@dataclass(frozen=True)
class Geometry:
    """World placement of a (z, y, x) voxel grid, as ITK defines it."""

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[float, float, float, float, float, float, float, float, float]

    @property
    def direction_matrix(self) -> np.ndarray:
        """3x3 matrix whose columns are the world directions of the x, y, z index axes."""
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def voxel_ml(self) -> float:
        """Volume of one voxel (mL)."""
        return float(np.prod(self.spacing)) / 1000.0

    def index_to_world(self, ijk_xyz: np.ndarray) -> np.ndarray:
        """Continuous indices (..., 3) in (x, y, z) order → world LPS mm (..., 3)."""
        ijk = np.asarray(ijk_xyz, dtype=float)
        scaled = ijk * np.asarray(self.spacing)
        return scaled @ self.direction_matrix.T + np.asarray(self.origin)

    def zyx_to_world(self, zyx: np.ndarray) -> np.ndarray:
        """Voxel indices as (z, y, x) rows, numpy's order (e.g. `np.argwhere(mask)`) → world LPS mm rows."""
        return self.index_to_world(np.asarray(zyx, dtype=float)[:, ::-1])

    def world_to_index(self, xyz_mm: np.ndarray) -> np.ndarray:
        """World LPS mm (..., 3) → continuous indices (..., 3) in (x, y, z) order."""
        rel = np.asarray(xyz_mm, dtype=float) - np.asarray(self.origin)
        return (rel @ self.direction_matrix) / np.asarray(self.spacing)

    def blocks(self, block_zyx: tuple[int, int, int]) -> "Geometry":
        """The grid of whole blocks of (z, y, x) voxels: spacing times the block, first voxel at the centre
        of the first block (what averaging or sampling at block centres produces)."""
        factors = np.asarray(block_zyx[::-1], dtype=float)  # x, y, z
        spacing = np.asarray(self.spacing)
        shift = self.direction_matrix @ ((factors - 1) / 2 * spacing)
        return Geometry(
            tuple((np.asarray(self.origin) + shift).tolist()), tuple((spacing * factors).tolist()), self.direction
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        return cls(tuple(d["origin"]), tuple(d["spacing"]), tuple(d["direction"]))

    def allclose(self, other: "Geometry", atol: float = 1e-3) -> bool:
        return all(
            np.allclose(getattr(self, f), getattr(other, f), atol=atol)
            for f in ("origin", "spacing", "direction")
        )


class PatientInputError(Exception):
    """A known problem with one patient's data: that patient is excluded, the cohort goes on.

    The message is the reason that reaches patients.parquet, so it names the
    file and the problem. Bugs must raise anything else and fail loudly.

    `diagnostic`, when given, draws the stage's QC figure of what it saw before
    giving up: called as `diagnostic(out_png, reason)` with the stored (scrubbed)
    reason, so an excluded patient's figure shows why instead of an empty file.
    """

    def __init__(self, *args: object, diagnostic: "Diagnostic | None" = None) -> None:
        super().__init__(*args)
        self.diagnostic = diagnostic


# Draws a stage's QC figure at `out_png`, titled with `reason` (one line, already scrubbed).
Diagnostic = Callable[[Path, str], None]


class UpstreamExcluded(PatientInputError):
    """An earlier stage excluded the patient (or failed on it); its reason and status are passed on."""

    def __init__(self, reason: str, status: "StatusValue" = "excluded") -> None:
        super().__init__(reason)
        self.status = status


# ok: the stage produced its outputs; excluded: a known input problem (PatientInputError);
# failed: an unexpected error in the stage's own code or environment, contained to this patient.
StatusValue = Literal["ok", "excluded", "failed"]


@dataclass(frozen=True)
class StageStatus:
    """What one stage concluded for one patient; every per-patient stage writes one.

    `record` holds the stage's per-patient figures for patients.parquet (flat
    column → value); the cohort gather merges the records of the whole chain.
    """

    stage: str
    status: StatusValue
    reason: str | None = None
    record: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)
