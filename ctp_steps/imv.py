"""Ischemic myocardial volume: thresholded MBF, small clusters removed, volumes per LV, territory, segment.

Ischemic myocardium is MBF below a threshold: absolute (default 100
mL/100mL/min, the published CT-MPI cut-off of ~99.8) or relative, a fraction
(default 0.78) of a reference MBF: `remote` = the median MBF of the
best-perfused coronary territory, `percentile` = a high percentile of all
myocardial MBF. Connected ischemic clusters (26-connectivity) smaller than
`min_cluster_ml` are dropped: isolated low voxels are noise, not a perfusion
defect. IMV% is the ischemic share of the LV myocardium; the per-territory
IMV% are shares of the whole LV myocardium too, so they add up to IMV%.
Per-segment ischemic_pct is the share of that segment.

Contract (ctp_steps/stages.py): `Inputs`, `Outputs` (the keys of rules/imv.smk), `Config`, `run`.
The config model is importable without numpy-heavy work (planning and the
config schema use it); the computation imports scipy on use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ctp_steps.aha import N_SEGMENTS, SEGMENT_TERRITORY, TERRITORY_SEGMENTS
from ctp_steps.stages import Context, PatientInputs, PatientOutputs

if TYPE_CHECKING:
    import pandas as pd


class IMVConfig(BaseModel):
    """Ischemic myocardial volume: which threshold, which reference, which clusters count."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["absolute", "relative"] = Field(
        "absolute", description="Threshold on MBF itself or on MBF / reference."
    )
    threshold_abs: float = Field(100.0, gt=0, description="absolute mode: ischemic below this MBF (mL/100mL/min).")
    threshold_rel: float = Field(
        0.78, gt=0, lt=1, description="relative mode: ischemic below this fraction of the reference."
    )
    reference: Literal["remote", "percentile"] = Field(
        "remote", description="relative mode: median MBF of the best territory (remote), or a percentile of all MBF."
    )
    reference_percentile: float = Field(90.0, gt=0, le=100, description="reference = percentile: which one.")
    min_cluster_ml: float = Field(2.0, ge=0, description="Ischemic clusters smaller than this (mL) are dropped.")


@dataclass(frozen=True)
class IMVResult:
    ischemia: np.ndarray  # (z, y, x) bool
    threshold: float  # MBF threshold applied (mL/100mL/min)
    n_clusters: int


def mbf_threshold(mbf: np.ndarray, segments: np.ndarray, cfg: IMVConfig) -> float:
    """The MBF below which myocardium counts as ischemic; `mbf`, `segments` are per voxel."""
    if cfg.mode == "absolute":
        return cfg.threshold_abs
    if cfg.reference == "percentile":
        reference = float(np.percentile(mbf, cfg.reference_percentile))
    else:
        medians = [np.median(mbf[np.isin(segments, segs)]) for segs in TERRITORY_SEGMENTS.values()
                   if np.isin(segments, segs).any()]
        reference = float(max(medians)) if medians else float(np.median(mbf))
    return cfg.threshold_rel * reference


def ischemic_region(mbf_map: np.ndarray, myocardium: np.ndarray, aha17: np.ndarray, voxel_ml: float,
                    cfg: IMVConfig) -> IMVResult:
    """Threshold the MBF map inside the myocardium and drop clusters under `min_cluster_ml`."""
    from scipy import ndimage

    threshold = mbf_threshold(mbf_map[myocardium], aha17[myocardium], cfg)
    low = myocardium & (mbf_map < threshold)
    labels, n = ndimage.label(low, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes * voxel_ml >= cfg.min_cluster_ml
    keep[0] = False
    return IMVResult(ischemia=keep[labels], threshold=threshold, n_clusters=int(keep.sum()))


def segment_table(ischemia: np.ndarray, myocardium: np.ndarray, aha17: np.ndarray, voxel_ml: float) -> pd.DataFrame:
    """17 rows: ischemic mL and % of each segment (NaN % where the segment is empty)."""
    import pandas as pd

    rows = []
    for s in range(1, N_SEGMENTS + 1):
        seg = myocardium & (aha17 == s)
        n, n_isch = int(seg.sum()), int((seg & ischemia).sum())
        rows.append(
            {
                "segment": s,
                "territory": SEGMENT_TERRITORY[s],
                "ischemic_ml": n_isch * voxel_ml,
                "ischemic_pct": 100.0 * n_isch / n if n else math.nan,
                "volume_ml": n * voxel_ml,
            }
        )
    return pd.DataFrame(rows)


def imv_record(result: IMVResult, myocardium: np.ndarray, aha17: np.ndarray, voxel_ml: float, mode: str) -> dict:
    """The stage's columns in patients.parquet."""
    n_myo = int(myocardium.sum())
    record = {
        "imv_ml": float(result.ischemia.sum() * voxel_ml),
        "imv_pct": 100.0 * result.ischemia.sum() / n_myo if n_myo else None,
        "imv_threshold": result.threshold,
        "imv_mode": mode,
        "imv_n_clusters": result.n_clusters,
    }
    for terr, segs in TERRITORY_SEGMENTS.items():
        n_isch = int((result.ischemia & np.isin(aha17, segs)).sum())
        record[f"imv_ml_{terr.lower()}"] = n_isch * voxel_ml
        record[f"imv_pct_{terr.lower()}"] = 100.0 * n_isch / n_myo if n_myo else None
    return record


Config = IMVConfig


@dataclass(frozen=True, kw_only=True)
class Inputs(PatientInputs):
    mbf: Path  # the MBF stage's regularised map
    myocardium: Path
    aha: Path


@dataclass(frozen=True, kw_only=True)
class Outputs(PatientOutputs):
    ischemia: Path
    segments: Path
    qc: Path


def run(inputs: Inputs, outputs: Outputs, cfg: IMVConfig, ctx: Context) -> dict:
    """IMV of one patient from the MBF stage's map: writes the ischemia mask, segment table and figure."""
    from ctp_steps.io import read_volume, write_parquet, write_volume

    mbf, geometry = read_volume(inputs.mbf)
    myocardium, _ = read_volume(inputs.myocardium)
    aha17, _ = read_volume(inputs.aha)
    myo = myocardium > 0
    voxel_ml = geometry.voxel_ml
    result = ischemic_region(mbf, myo, aha17, voxel_ml, cfg)
    write_volume(outputs.ischemia, result.ischemia.astype(np.uint8), geometry)
    segments = segment_table(result.ischemia, myo, aha17, voxel_ml)
    write_parquet(outputs.segments, segments, metadata={"threshold_mbf": f"{result.threshold:.6g}"})
    imv_figure(segments, result.threshold, outputs.qc)
    return imv_record(result, myo, aha17, voxel_ml, cfg.mode)


def imv_figure(segments: pd.DataFrame, threshold: float, out_png: Path) -> None:
    """Bull's-eye of the ischemic share of each segment."""
    from ctp_steps.bullseye import plot_bullseye

    plot_bullseye(
        dict(zip(segments.segment, segments.ischemic_pct)), f"ischemic % per segment (MBF < {threshold:.0f})",
        out_png, cmap="Reds", vmin=0.0, vmax=100.0, label="% of segment",
    )
