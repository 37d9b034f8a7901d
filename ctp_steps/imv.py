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

Uncertainty (when the MBF stage's SE map `mbf_se.nii.gz` is an input): MBF
maps are drawn from a normal approximation around the map (`imv_interval`),
each pushed through the same threshold rule and cluster filter; the 2.5/97.5
percentiles and SD of the draws' IMV are its 95 % interval and SE.

Contract (ctp_steps/stages.py): `Inputs`, `Outputs` (the keys of rules/imv.smk), `Config`, `run`.
The config model is importable without numpy-heavy work (planning and the
config schema use it); the computation imports scipy on use.
"""

from __future__ import annotations

import hashlib
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
    interval_draws: int = Field(
        200,
        ge=0,
        description="MBF maps drawn from the MBF SE map for the IMV interval (imv_pct_ci_low/high, imv_pct_se); "
        "0 or no SE map: no interval. The percentiles' Monte Carlo error shrinks as 1/sqrt(draws); the draws "
        "are seeded per patient (its center/patient folder), so reruns repeat them.",
    )


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


@dataclass(frozen=True)
class IMVInterval:
    """Spread of IMV over MBF maps drawn from the map's uncertainty."""

    pct_se: float
    pct_ci_low: float
    pct_ci_high: float
    ml_se: float
    ml_ci_low: float
    ml_ci_high: float
    n_draws: int

    def record(self) -> dict:
        """The patients.parquet columns (None where undefined)."""
        values = {
            "imv_pct_se": self.pct_se, "imv_pct_ci_low": self.pct_ci_low, "imv_pct_ci_high": self.pct_ci_high,
            "imv_ml_se": self.ml_se, "imv_ml_ci_low": self.ml_ci_low, "imv_ml_ci_high": self.ml_ci_high,
        }
        return {k: v if math.isfinite(v) else None for k, v in values.items()}


def patient_seed(key: str) -> int:
    """A stable seed from a patient's identity (e.g. "center/patient"): same draws on every rerun and machine.

    sha256, not Python's salted hash(); never a header value, which may change with anonymisation.
    """
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")


def imv_interval(mbf_map: np.ndarray, se_map: np.ndarray, myocardium: np.ndarray, aha17: np.ndarray,
                 voxel_ml: float, cfg: IMVConfig, rng: np.random.Generator) -> IMVInterval:
    """IMV's 95 % interval and SE from `cfg.interval_draws` MBF maps drawn around `mbf_map`.

    Draw d: MBF_d(v) = MBF(v) + z_{d,s(v)} SE(v), one standard normal z per
    AHA segment s (unlabelled myocardium its own group) shared by all its
    voxels, independent between segments. Why shared: the regularised map's
    voxels are weighted means of neighbours within ~20 mm (sigma 10 mm),
    about a segment's extent, so their errors move together and independent
    voxel draws would be averaged away (or removed as small clusters) and
    understate the spread; within a segment this is the fully correlated,
    wide end. Each draw goes through `ischemic_region` (same threshold rule,
    relative references recomputed from the draw, same cluster filter).
    SE 0 everywhere gives a zero-width interval at the point IMV; a NaN SE in
    the myocardium (no noise model, e.g. upslope) gives a NaN interval.
    """
    n_draws = cfg.interval_draws
    n_myo = int(myocardium.sum())
    if n_draws < 2 or n_myo == 0 or not np.isfinite(se_map[myocardium]).all():  # NaN SE: unknown (upslope)
        nan = math.nan
        return IMVInterval(nan, nan, nan, nan, nan, nan, 0)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(myocardium))
    mbf, se, myo, aha = mbf_map[box], se_map[box], myocardium[box], aha17[box]
    groups = np.unique(aha[myo])
    group_of = np.searchsorted(groups, aha)  # outside the myocardium: masked out below
    counts = np.empty(n_draws)
    for d in range(n_draws):
        z = rng.standard_normal(len(groups))
        draw = np.where(myo, mbf + z[np.clip(group_of, 0, len(groups) - 1)] * se, mbf)
        counts[d] = ischemic_region(draw, myo, aha, voxel_ml, cfg).ischemia.sum()
    pct, ml = 100.0 * counts / n_myo, counts * voxel_ml
    return IMVInterval(
        pct_se=float(pct.std(ddof=1)), pct_ci_low=float(np.percentile(pct, 2.5)),
        pct_ci_high=float(np.percentile(pct, 97.5)), ml_se=float(ml.std(ddof=1)),
        ml_ci_low=float(np.percentile(ml, 2.5)), ml_ci_high=float(np.percentile(ml, 97.5)), n_draws=n_draws,
    )


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
    mbf_se: Path | None = None  # its standard-error map: the IMV interval is drawn from it


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
    record = imv_record(result, myo, aha17, voxel_ml, cfg.mode)
    se_path = inputs.mbf_se
    if se_path is not None and cfg.interval_draws > 0:
        se, g_se = read_volume(se_path)
        if not g_se.allclose(geometry):
            raise ValueError(f"{se_path}: geometry differs from {inputs.mbf}")
        folder = inputs.mbf.resolve().parent  # <results>/patients/<center>/<patient>/
        rng = np.random.default_rng(patient_seed(f"{folder.parent.name}/{folder.name}"))
        record.update(imv_interval(mbf, se, myo, aha17, voxel_ml, cfg, rng).record())
    return record


def imv_figure(segments: pd.DataFrame, threshold: float, out_png: Path) -> None:
    """Bull's-eye of the ischemic share of each segment."""
    from ctp_steps.bullseye import plot_bullseye

    plot_bullseye(
        dict(zip(segments.segment, segments.ischemic_pct)), f"ischemic % per segment (MBF < {threshold:.0f})",
        out_png, cmap="Reds", vmin=0.0, vmax=100.0, label="% of segment",
    )
