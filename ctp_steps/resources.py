"""Memory and run time a per-patient job declares, from the size of its study.

Under SLURM a job that exceeds its declared memory is killed, and a declared
figure far above the need wastes the cluster: a 40×80×80 phantom and a 512² ×
320-slice study differ 500-fold in voxels. Each stage's peak memory and run
time are modelled as a fixed part (Python, torch and the model weights) plus a
part proportional to the study's voxels × frames, fitted to measured peaks
(BENCHMARKS.md, "Declared resources"); the declaration adds a safety margin.

The study size is read from the DICOM folder's headers (file count × rows ×
columns × frames per file) once per folder, so it is known before conversion
and the same for every stage of a patient. Derived series and other files in
an exam folder only make the estimate larger, which errs on the safe side.
Conversion averages sub-millimetre voxels into the working grid
(`conversion.working_spacing_mm`), so every stage after it scales with the
working grid's voxels; conversion itself also holds one native frame.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SAFETY = 1.3  # declared = SAFETY × modelled peak (measured peaks varied by < 10 % between runs)
MIN_RUNTIME_MIN = 10


@dataclass(frozen=True)
class StageCost:
    """Peak RSS = base_mb + bytes_per_voxel_frame × voxel-frames; wall time likewise (one core)."""

    base_mb: float
    bytes_per_voxel_frame: float
    base_s: float
    s_per_million_voxel_frames: float


# Fitted to `benchmarks/stage_resources.py` (two phantom sizes) and the 512² × 64 × 15 study measured in
# issue 17 (convert 3.0 GB, segment_frames 3.9 GB, register 14.4 GB); slopes rounded up.
STAGE_COSTS: dict[str, StageCost] = {
    "convert": StageCost(300, 16, 5, 0.5),
    "segment_frames": StageCost(1000, 16, 15, 0.3),
    "register": StageCost(900, 64, 30, 2.5),
    "segment_myocardium": StageCost(600, 12, 10, 0.2),
    "landmarks": StageCost(550, 4, 10, 0.1),
    "mbf": StageCost(700, 16, 15, 5.0),
    "imv": StageCost(350, 2, 5, 0.05),
}
NATIVE_FRAME_BYTES = 8  # conversion's native frame: float32 values + the decoded file's pixels
MIN_FRAMES = 8  # the fewest frames conversion accepts by default: bounds one frame's share of the files
# What the rules declared before sizes were known; used when a folder cannot be read yet (dry runs).
FALLBACK = {"mem_mb": 4000, "runtime": 30}


@dataclass(frozen=True)
class StudyHeader:
    """What one image header and the file count say about a study's size."""

    voxel_frames: int  # native voxels × frames (all files, as if every one were an image of the study)
    spacing_zyx_mm: tuple[float | None, float, float]  # slice spacing None when no header states it

    def working_voxel_frames(self, working_spacing_mm: float | None) -> int:
        """Voxel-frames after conversion's block averaging (an unknown slice spacing counts as unaveraged)."""
        from ctp_steps.types import block_factors

        z, y, x = self.spacing_zyx_mm
        bz, by, bx = block_factors((z or math.inf, y, x), working_spacing_mm)
        return int(self.voxel_frames // (bz * by * bx))


@cache
def study_header(dicom_dir: str) -> StudyHeader | None:
    """The study size from one header and the file count; None if no image header can be read."""
    import pydicom

    files = _files_under(Path(dicom_dir))
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            rows, columns = int(ds.Rows), int(ds.Columns)
        except Exception:  # noqa: BLE001 - any unreadable or non-image file: try the next one
            continue
        try:
            row_mm, column_mm = (float(v) for v in ds.PixelSpacing)
        except (AttributeError, TypeError, ValueError):
            row_mm = column_mm = math.inf  # unknown: no averaging assumed, the larger estimate
        slice_mm = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness")
        return StudyHeader(
            voxel_frames=len(files) * rows * columns * int(ds.get("NumberOfFrames", 1) or 1),
            spacing_zyx_mm=(float(slice_mm) if slice_mm else None, row_mm, column_mm),
        )
    return None


def study_voxel_frames(dicom_dir: str, working_spacing_mm: float | None = None) -> int | None:
    """Voxel-frames of the study on the working grid (native when `working_spacing_mm` is None)."""
    header = study_header(str(dicom_dir))
    return None if header is None else header.working_voxel_frames(working_spacing_mm)


def _files_under(root: Path) -> list[str]:
    """Regular files below root, without a stat per file (planning may touch thousands of folders)."""
    out, stack = [], [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for e in entries:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    elif e.is_file():
                        out.append(e.path)
        except OSError:
            continue
    return sorted(out)


def modelled_peak_mb(stage: str, voxel_frames: int) -> float:
    cost = STAGE_COSTS[stage]
    return cost.base_mb + cost.bytes_per_voxel_frame * voxel_frames / 2**20


def declared_mem_mb(stage: str, dicom_dir: str | Path, working_spacing_mm: float | None = None) -> int:
    """The job's `mem_mb`: modelled peak × SAFETY for this patient's study (the old fixed value if unknown)."""
    header = study_header(str(dicom_dir))
    if header is None:
        return FALLBACK["mem_mb"]
    working = header.working_voxel_frames(working_spacing_mm)
    peak = modelled_peak_mb(stage, working)
    if stage == "convert":  # one native frame as float32, bounded by the fewest frames a study may have
        peak += NATIVE_FRAME_BYTES * header.voxel_frames / MIN_FRAMES / 2**20
    return int(math.ceil(SAFETY * peak / 100.0) * 100)


def declared_runtime_min(
    stage: str, dicom_dir: str | Path, slower: float = 1.0, working_spacing_mm: float | None = None
) -> int:
    """The job's `runtime` in minutes: three times the modelled single-core time (times `slower` for a slower
    method, e.g. SimpleITK registration), at least MIN_RUNTIME_MIN."""
    header = study_header(str(dicom_dir))
    if header is None:
        return int(FALLBACK["runtime"] * (2 if slower > 1 else 1))
    # conversion reads every native voxel; later stages see the working grid
    voxel_frames = header.voxel_frames if stage == "convert" else header.working_voxel_frames(working_spacing_mm)
    cost = STAGE_COSTS[stage]
    seconds = slower * (cost.base_s + cost.s_per_million_voxel_frames * voxel_frames / 1e6)
    return max(MIN_RUNTIME_MIN, int(math.ceil(3 * seconds / 60)))
