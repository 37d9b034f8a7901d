"""Time-attenuation curves: the arterial input, bolus arrival, baselines, tissue enhancement.

Frame times are kept as acquired (irregular); nothing is resampled here. The
pre-contrast baseline of every curve is the mean of the frames acquired before
the bolus reaches the aorta, found on the AIF alone: tissue enhances later
than the aorta, so those frames are pre-contrast for the myocardium too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ctp_steps.types import PatientInputError

# AHA coronary territories (Cerqueira et al. 2002). Move to ctp_steps/aha.py once it exists.
TERRITORY_SEGMENTS: dict[str, tuple[int, ...]] = {
    "lad": (1, 2, 7, 8, 13, 14, 17),
    "rca": (3, 4, 9, 10, 15),
    "lcx": (5, 6, 11, 12, 16),
}
SEGMENT_TERRITORY: dict[int, str] = {s: t for t, segs in TERRITORY_SEGMENTS.items() for s in segs}
N_SEGMENTS = 17


@dataclass(frozen=True)
class ArterialInput:
    """The AIF as the fits use it: enhancement above the pre-contrast baseline at the frame times."""

    times_s: np.ndarray
    enhancement_hu: np.ndarray
    baseline_hu: float
    n_baseline: int  # frames [0, n_baseline) are pre-contrast
    arrival_s: float
    peak_hu: float  # peak enhancement above baseline
    peak_s: float


def read_aif(path: Path, frame_times_s: list[float]) -> np.ndarray:
    """Mean aortic HU per frame, checked against frames.json (same frames, same times)."""
    table = pd.read_parquet(path).sort_values("frame")
    frames = table["frame"].to_numpy()
    if not np.array_equal(frames, np.arange(len(frame_times_s))):
        raise ValueError(f"{path}: frames {frames.tolist()} do not match the {len(frame_times_s)} frames of frames.json")
    if not np.allclose(table["time_s"].to_numpy(), frame_times_s, atol=1e-3):
        raise ValueError(f"{path}: time_s differs from frames.json frame_times_s")
    hu = table["hu"].to_numpy(dtype=float)
    if not np.isfinite(hu).all():
        raise PatientInputError(f"aif.parquet: non-finite HU in frames {np.flatnonzero(~np.isfinite(hu)).tolist()}")
    return hu


def arterial_input(
    times_s: np.ndarray, hu: np.ndarray, min_peak_hu: float, arrival_fraction: float
) -> ArterialInput:
    """Baseline, bolus arrival and enhancement of the AIF, or the patient's exclusion reason.

    Arrival is the first frame whose enhancement over frame 0 reaches
    `arrival_fraction` of the peak; the baseline is the mean of the frames
    before it; the arrival time is interpolated between the two frames around
    the crossing. A flat AIF (missed bolus), a peak under `min_peak_hu`, a bolus
    already present at the first frame or a peak at the last frame (bolus not
    captured) exclude the patient.
    """
    times_s = np.asarray(times_s, dtype=float)
    hu = np.asarray(hu, dtype=float)
    rise = hu - hu[0]
    peak_index = int(np.argmax(rise))
    if rise[peak_index] < min_peak_hu:
        raise PatientInputError(
            f"aif.parquet: AIF peak enhancement {rise[peak_index]:.1f} HU "
            f"(max {hu.max():.1f} HU, first frame {hu[0]:.1f} HU) is below the minimum {min_peak_hu:g} HU: "
            "flat or weak arterial curve (missed bolus)"
        )
    level = arrival_fraction * rise[peak_index]
    arrival_index = int(np.argmax(rise >= level))
    if arrival_index == 0:
        raise PatientInputError("aif.parquet: bolus already present at the first frame; no pre-contrast baseline")
    if peak_index == len(hu) - 1:
        raise PatientInputError(
            f"aif.parquet: AIF still rising at the last frame (t={times_s[-1]:.1f} s, {hu[-1]:.1f} HU): "
            "bolus peak not captured"
        )
    baseline = float(hu[:arrival_index].mean())
    enhancement = hu - baseline
    peak = float(enhancement[peak_index])
    if peak < min_peak_hu:
        raise PatientInputError(
            f"aif.parquet: AIF peak enhancement {peak:.1f} HU over a baseline of {baseline:.1f} HU "
            f"is below the minimum {min_peak_hu:g} HU (weak bolus)"
        )
    t0, t1 = times_s[arrival_index - 1], times_s[arrival_index]
    r0, r1 = rise[arrival_index - 1], rise[arrival_index]
    arrival_s = float(t0 + (t1 - t0) * np.clip((level - r0) / (r1 - r0), 0.0, 1.0))
    return ArterialInput(
        times_s=times_s,
        enhancement_hu=enhancement,
        baseline_hu=baseline,
        n_baseline=arrival_index,
        arrival_s=arrival_s,
        peak_hu=peak,
        peak_s=float(times_s[peak_index]),
    )


def tissue_enhancement(series_tzyx: np.ndarray, mask_zyx: np.ndarray, n_baseline: int) -> np.ndarray:
    """(voxels, frames) enhancement in HU of the masked voxels, in C order of the mask."""
    curves = series_tzyx[:, mask_zyx].T.astype(np.float64)
    return curves - curves[:, :n_baseline].mean(axis=1, keepdims=True)


def segment_mean_curves(curves: np.ndarray, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean curve of each AHA segment present: (segment ids, (n, frames))."""
    ids = np.array([s for s in range(1, N_SEGMENTS + 1) if np.any(segments == s)], dtype=int)
    means = np.stack([curves[segments == s].mean(axis=0) for s in ids]) if ids.size else np.zeros((0, curves.shape[1]))
    return ids, means
