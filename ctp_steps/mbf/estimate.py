"""One patient's MBF from arrays: curves, voxel-wise fit, regularised fit, segment curves and fits.

Pure computation (no files), so the stage, the validation and the tests share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ctp_steps.mbf.config import MBFConfig, Method
from ctp_steps.mbf.fit import FitResult, RenkinCrone, SharedKinetics, fit_curves
from ctp_steps.mbf.regularise import Neighbourhood, bilateral_average
from ctp_steps.mbf.tac import ArterialInput, arterial_input, segment_mean_curves, tissue_enhancement
from ctp_steps.types import Geometry, PatientInputError


@dataclass(frozen=True)
class PerfusionInputs:
    """What the MBF stage reads, as arrays: registered series, frame times, AIF, masks."""

    series_hu: np.ndarray  # (t, z, y, x)
    geometry: Geometry
    times_s: np.ndarray
    aif_hu: np.ndarray  # mean aortic HU per frame
    myocardium: np.ndarray  # (z, y, x) bool
    aha17: np.ndarray  # (z, y, x) uint8, 0 outside the segments


@dataclass(frozen=True)
class MBFEstimate:
    method: Method
    aif: ArterialInput
    mask: np.ndarray  # (z, y, x) bool: the fitted voxels, C order below
    segments: np.ndarray  # (V,) AHA segment of each voxel (0: none)
    curves: np.ndarray  # (V, T) enhancement, HU
    raw: FitResult  # voxel-wise
    regularised: FitResult  # what mbf.nii.gz holds
    shared: SharedKinetics | None  # patient-level kinetics of the regularised fit
    segment_ids: np.ndarray  # (S,)
    segment_curves: np.ndarray  # (S, T) mean enhancement per segment
    segment_fit: FitResult  # fit of the segment mean curves, same model as the regularised map

    def volume(self, values: np.ndarray) -> np.ndarray:
        """Per-voxel values (V,) → float32 (z, y, x) volume, 0 outside the mask."""
        out = np.zeros(self.mask.shape, dtype=np.float32)
        out[self.mask] = values
        return out

    @property
    def tissue_delay_s(self) -> float:
        """Median AIF-to-tissue delay of the regularised map (NaN for upslope)."""
        delays = self.regularised.delay_s
        return float(np.median(delays)) if delays.size and np.isfinite(delays).any() else float("nan")


def estimate_mbf(
    inputs: PerfusionInputs, cfg: MBFConfig, device: torch.device, method: Method | None = None
) -> MBFEstimate:
    """MBF of every myocardium voxel with `method` (default: cfg.method), raw and regularised."""
    method = method or cfg.method
    mask = np.asarray(inputs.myocardium, dtype=bool)
    if inputs.series_hu.shape[1:] != mask.shape or inputs.aha17.shape != mask.shape:
        raise ValueError(
            f"grids differ: series {inputs.series_hu.shape}, myocardium {mask.shape}, aha17 {inputs.aha17.shape}"
        )
    if not mask.any():
        raise PatientInputError("myocardium.nii.gz: empty myocardium mask")
    aif = arterial_input(inputs.times_s, inputs.aif_hu, cfg.min_aif_peak_hu, cfg.aif_model)
    curves = tissue_enhancement(inputs.series_hu, mask, aif.n_baseline)
    segments = inputs.aha17[mask].astype(np.int64)

    def fit(y: np.ndarray, shared: SharedKinetics | None = None) -> FitResult:
        return fit_curves(
            y,
            aif,
            method,
            max_delay_s=cfg.max_delay_s,
            max_iter=cfg.max_iter,
            chunk=cfg.chunk_voxels,
            device=device,
            renkin_crone=RenkinCrone(cfg.ps_ml_100ml_min, cfg.ps_flow_slope) if cfg.renkin_crone else None,
            max_mbf=cfg.max_mbf,
            shared=shared,
            compiled=cfg.compile_fits,
        )

    reg = cfg.regularisation
    raw = fit(curves)
    shared = None
    regularised = raw
    if reg.enabled:
        hood = Neighbourhood.build(mask, tuple(reversed(inputs.geometry.spacing)), reg.radius_mm, device)
        sources = hood.deep(reg.min_depth_mm)
        if method == "one_compartment" and reg.shared_kinetics:
            shared = shared_kinetics(curves[sources], fit)
        regularised = _regularised_fit(curves, segments, hood, sources, cfg, device, lambda y: fit(y, shared))
    segment_ids, segment_curves = segment_mean_curves(curves, segments)
    return MBFEstimate(
        method=method,
        aif=aif,
        mask=mask,
        segments=segments,
        curves=curves,
        raw=raw,
        regularised=regularised,
        shared=shared,
        segment_ids=segment_ids,
        segment_curves=segment_curves,
        segment_fit=fit(segment_curves, shared),
    )


def shared_kinetics(curves: np.ndarray, fit) -> SharedKinetics:
    """Delay, ve = K1/k2 and vb of the mean of the given (deep-voxel) curves."""
    result = fit(curves.mean(axis=0, keepdims=True))
    p = result.params
    return SharedKinetics(
        delay_s=float(p["delay"][0]), ve=float(p["k1"][0] / p["k2"][0]), vb=float(p["vb"][0])
    )


def _regularised_fit(curves, segments, hood: Neighbourhood, sources, cfg: MBFConfig, device, fit) -> FitResult:
    """Unguided average → fit → guided averages and fits, `passes` times."""
    reg = cfg.regularisation
    y = torch.as_tensor(curves, device=device)
    seg = torch.as_tensor(segments, device=device) if reg.same_segment else None

    def average(guide: np.ndarray | None) -> np.ndarray:
        g = None if guide is None else torch.as_tensor(guide, device=device, dtype=y.dtype)
        out = bilateral_average(y, hood, reg.spatial_sigma_mm, seg, g, reg.range_sigma, sources)
        return out.cpu().numpy()

    result = fit(average(None))
    for _ in range(reg.passes):
        result = fit(average(result.rate))
    return result
