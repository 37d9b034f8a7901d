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
# What the rules declared before sizes were known; used when a folder cannot be read yet (dry runs).
FALLBACK = {"mem_mb": 4000, "runtime": 30}


@cache
def study_voxel_frames(dicom_dir: str) -> int | None:
    """Voxels × frames of the study in a DICOM folder, from one header and the file count; None if unknown."""
    import pydicom

    files = _files_under(Path(dicom_dir))
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            rows, columns = int(ds.Rows), int(ds.Columns)
        except Exception:  # noqa: BLE001 - any unreadable or non-image file: try the next one
            continue
        return len(files) * rows * columns * int(ds.get("NumberOfFrames", 1) or 1)
    return None


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


def declared_mem_mb(stage: str, dicom_dir: str | Path) -> int:
    """The job's `mem_mb`: modelled peak × SAFETY for this patient's study (the old fixed value if unknown)."""
    voxel_frames = study_voxel_frames(str(dicom_dir))
    if voxel_frames is None:
        return FALLBACK["mem_mb"]
    return int(math.ceil(SAFETY * modelled_peak_mb(stage, voxel_frames) / 100.0) * 100)


def declared_runtime_min(stage: str, dicom_dir: str | Path, slower: float = 1.0) -> int:
    """The job's `runtime` in minutes: three times the modelled single-core time (times `slower` for a slower
    method, e.g. SimpleITK registration), at least MIN_RUNTIME_MIN."""
    voxel_frames = study_voxel_frames(str(dicom_dir))
    if voxel_frames is None:
        return int(FALLBACK["runtime"] * (2 if slower > 1 else 1))
    cost = STAGE_COSTS[stage]
    seconds = slower * (cost.base_s + cost.s_per_million_voxel_frames * voxel_frames / 1e6)
    return max(MIN_RUNTIME_MIN, int(math.ceil(3 * seconds / 60)))
