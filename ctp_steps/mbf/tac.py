"""Time-attenuation curves: the arterial input, bolus arrival, baselines, tissue enhancement.

Tissue curves keep the acquired, irregular frame times. The pre-contrast
baseline of every curve is the mean of the frames acquired before the bolus
reaches the aorta, found on the AIF alone: tissue enhances later than the
aorta, so those frames are pre-contrast for the myocardium too. The kinetic
models need the AIF between frames as well: it is put on a uniform 0.25 s
grid, from a gamma-variate fit (default) or by linear interpolation.

The baseline rule (`MBFConfig.aif_baseline`) is explicit: `pre_arrival_mean`
(above) for CT series in HU; `none` for inputs that are already enhancement
or concentration above zero (e.g. the OSIPI DCE reference data), which pass
untouched. A smooth bolus has no sharp foot, so the frames just before the
tangent's foot are already rising: subtracting their mean takes real contrast
off the whole curve (-19 % on the tail of a Patlak AIF, OSIPI check, issue 20).
AIF and tissue always follow the same rule: `ArterialInput.n_baseline` frames
are averaged and subtracted from both (0 frames with `none`: nothing is).

Errors of the pure functions name no file (`AIFError`); the file layer prefixes
the AIF file's name (see `AIFError`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ctp_steps.aha import N_SEGMENTS
from ctp_steps.types import PatientInputError

AIF_GRID_DT_S = 0.25  # AIF grid of the kinetic models; on phantom curves a finer grid changes MBF by < 0.5 %
AIFBaseline = Literal["pre_arrival_mean", "none"]


class AIFError(PatientInputError):
    """An unusable arterial curve, found on arrays: the message names no file.

    Whoever read the curve from a file prefixes its name (the MBF stage:
    `raise PatientInputError(f"{inputs.aif.name}: {exc}") from exc`), so that
    the reason in patients.parquet still names the file.
    """


@dataclass(frozen=True)
class ArterialInput:
    """The AIF as the fits use it: enhancement above the pre-contrast baseline."""

    times_s: np.ndarray  # frame times
    enhancement_hu: np.ndarray  # measured, at the frame times
    baseline_hu: float  # subtracted from the measured curve (0 with baseline rule `none`)
    n_baseline: int  # frames [0, n_baseline) were averaged into the baseline, of AIF and tissue (0: none subtracted)
    arrival_s: float  # bolus arrival (foot of the AIF)
    peak_hu: float  # largest measured enhancement
    peak_s: float
    grid_dt_s: float
    grid_hu: np.ndarray  # the models' AIF on the grid m * grid_dt_s
    fit_rms_hu: float  # RMS of measured - model at the frames (0 for linear)

    def curve(self, t: np.ndarray) -> np.ndarray:
        """The models' AIF at any times (linear between grid points, zero before the first frame)."""
        grid = np.arange(len(self.grid_hu)) * self.grid_dt_s
        return np.interp(t, grid, self.grid_hu, left=0.0)


def read_aif(path: Path, frame_times_s: list[float]) -> np.ndarray:
    """Mean aortic HU per frame, checked against frames.json (same frames, same times)."""
    table = pd.read_parquet(path).sort_values("frame")
    frames = table["frame"].to_numpy()
    if not np.array_equal(frames, np.arange(len(frame_times_s))):
        raise ValueError(
            f"{path}: frames {frames.tolist()} do not match the {len(frame_times_s)} frames of frames.json"
        )
    if not np.allclose(table["time_s"].to_numpy(), frame_times_s, atol=1e-3):
        raise ValueError(f"{path}: time_s differs from frames.json frame_times_s")
    hu = table["hu"].to_numpy(dtype=float)
    if not np.isfinite(hu).all():
        raise PatientInputError(f"aif.parquet: non-finite HU in frames {np.flatnonzero(~np.isfinite(hu)).tolist()}")
    return hu


def _foot(times_s: np.ndarray, rise: np.ndarray, peak_index: int) -> float:
    """Where the tangent at the steepest upslope before the peak crosses zero rise."""
    slopes = np.diff(rise[: peak_index + 1]) / np.diff(times_s[: peak_index + 1])
    i = int(np.argmax(slopes))
    return float(times_s[i] - rise[i] / slopes[i])


def arterial_input(
    times_s: np.ndarray,
    hu: np.ndarray,
    min_peak_hu: float,
    model: str,
    *,
    baseline: AIFBaseline = "pre_arrival_mean",
) -> ArterialInput:
    """Baseline, bolus arrival and enhancement of the AIF, or the patient's exclusion reason (`AIFError`).

    Arrival is the foot of the bolus: the tangent at the steepest upslope
    crosses the baseline there (once from the first frame, then again from the
    mean of the frames before that first estimate). `baseline`:
    `pre_arrival_mean` subtracts the mean of the frames before arrival (CT in
    HU); `none` takes `hu` as enhancement already (baseline-free input, e.g.
    concentrations), keeps it untouched and needs no pre-contrast frame.
    `model` fills the models' AIF grid: `gamma_variate` fits a first pass plus
    a recirculation gamma variate (sparse frames miss the true peak; the fit
    puts it back), `linear` interpolates the samples.
    A flat AIF (missed bolus), a peak under `min_peak_hu`, no frame before the
    arrival (with a baseline to measure), or a peak at the last frame (bolus
    not captured) exclude the patient.
    """
    times_s = np.asarray(times_s, dtype=float)
    hu = np.asarray(hu, dtype=float)
    if baseline not in ("pre_arrival_mean", "none"):
        raise ValueError(f"unknown AIF baseline rule {baseline!r}")
    free = baseline == "none"
    rise = hu.copy() if free else hu - hu[0]
    peak_index = int(np.argmax(rise))
    if rise[peak_index] < min_peak_hu:
        over = "(baseline-free input)" if free else f"over the first frame ({hu[0]:.1f} HU, max {hu.max():.1f} HU)"
        raise AIFError(
            f"AIF peak enhancement {rise[peak_index]:.1f} HU {over} "
            f"is below the minimum {min_peak_hu:g} HU: flat or weak arterial curve (missed bolus)"
        )
    if peak_index == len(hu) - 1:
        raise AIFError(
            f"AIF still rising at the last frame (t={times_s[-1]:.1f} s, {hu[-1]:.1f} HU): bolus peak not captured"
        )
    arrival = _foot(times_s, rise, peak_index)
    if free:
        n_baseline, base, enhancement = 0, 0.0, rise
    else:
        n_baseline = int(np.count_nonzero(times_s < arrival))
        if n_baseline == 0:
            raise AIFError(
                f"bolus arrives at {arrival:.1f} s, before the first frame: no pre-contrast baseline"
            )
        arrival = _foot(times_s, hu - hu[:n_baseline].mean(), peak_index)
        n_baseline = max(1, int(np.count_nonzero(times_s < arrival)))
        base = float(hu[:n_baseline].mean())
        enhancement = hu - base
    peak = float(enhancement[peak_index])
    if peak < min_peak_hu:
        raise AIFError(
            f"AIF peak enhancement {peak:.1f} HU over a baseline of {base:.1f} HU "
            f"is below the minimum {min_peak_hu:g} HU (weak bolus)"
        )
    grid = np.arange(int(np.ceil(times_s[-1] / AIF_GRID_DT_S)) + 1) * AIF_GRID_DT_S
    if model == "gamma_variate":
        params = fit_gamma_variates(times_s, enhancement, arrival)
        grid_hu = gamma_variates(params, grid)
        fit_rms = float(np.sqrt(np.mean((gamma_variates(params, times_s) - enhancement) ** 2)))
    else:
        grid_hu, fit_rms = np.interp(grid, times_s, enhancement), 0.0
    return ArterialInput(
        times_s=times_s,
        enhancement_hu=enhancement,
        baseline_hu=base,
        n_baseline=n_baseline,
        arrival_s=arrival,
        peak_hu=peak,
        peak_s=float(times_s[peak_index]),
        grid_dt_s=AIF_GRID_DT_S,
        grid_hu=grid_hu,
        fit_rms_hu=fit_rms,
    )


def _gamma_variate(t: np.ndarray, arrival: float, time_to_peak: float, shape: float, peak: float) -> np.ndarray:
    x = np.maximum(t - arrival, 0.0) / time_to_peak
    return peak * x**shape * np.exp(shape * (1.0 - x))


def gamma_variates(params: np.ndarray, t: np.ndarray) -> np.ndarray:
    """First pass + recirculation; params = (arrival, ttp, shape, peak, recirc lag after the first peak,
    recirc ttp, recirc shape, recirc peak)."""
    a, ttp, shape, peak, lag, ttp2, shape2, peak2 = params
    return _gamma_variate(t, a, ttp, shape, peak) + _gamma_variate(t, a + ttp + lag, ttp2, shape2, peak2)


def fit_gamma_variates(times_s: np.ndarray, enhancement: np.ndarray, arrival_s: float) -> np.ndarray:
    """Least-squares fit of `gamma_variates` to one AIF (one curve, so scipy), from a few starts."""
    from scipy.optimize import least_squares

    i = int(np.argmax(enhancement))
    peak, ttp = float(enhancement[i]), max(float(times_s[i]) - arrival_s, 1.0)
    lower = np.array([0.0, 0.5, 1.0, 0.0, 0.0, 0.5, 1.0, 0.0])
    upper = np.array([float(times_s[i]), 30.0, 12.0, 3.0 * peak, 20.0, 40.0, 12.0, peak])
    best = None
    for shape in (2.0, 3.0, 4.5):
        for lag in (1.0, 3.0):
            start = np.clip(
                [min(arrival_s, times_s[i] - 0.5), ttp, shape, peak, lag, 1.4 * ttp, 2.0, 0.15 * peak],
                lower + 1e-6,
                upper - 1e-6,
            )
            fit = least_squares(lambda p: gamma_variates(p, times_s) - enhancement, start, bounds=(lower, upper))
            if best is None or fit.cost < best.cost:
                best = fit
    return best.x


def tissue_enhancement(series_tzyx: np.ndarray, mask_zyx: np.ndarray, n_baseline: int) -> np.ndarray:
    """(voxels, frames) enhancement in HU of the masked voxels, in C order of the mask.

    Each curve minus the mean of its first `n_baseline` frames: the AIF's
    (`ArterialInput.n_baseline`), so tissue follows the AIF's baseline rule; 0
    (rule `none`) subtracts nothing, the series being enhancement already.
    """
    curves = series_tzyx[:, mask_zyx].T.astype(np.float64)
    if n_baseline == 0:
        return curves
    return curves - curves[:, :n_baseline].mean(axis=1, keepdims=True)


def segment_mean_curves(curves: np.ndarray, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean curve of each AHA segment present: (segment ids, (n, frames))."""
    ids = np.array([s for s in range(1, N_SEGMENTS + 1) if np.any(segments == s)], dtype=int)
    means = np.stack([curves[segments == s].mean(axis=0) for s in ids]) if ids.size else np.zeros((0, curves.shape[1]))
    return ids, means
