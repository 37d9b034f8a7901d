"""One patient's MBF from arrays: curves, voxel-wise fit, regularised fit, segment curves and fits.

Pure computation (no files), so the stage, the validation and the tests share it.

Cost is bounded by the myocardium, not the field of view or the voxel size: only
the myocardium's bounding box of the series is read (a view; only its myocardium
voxels become float64), curves on grids finer than `MBFConfig.working_spacing_mm`
are block-averaged onto a working grid where they are fitted and regularised,
and every native voxel then takes its working voxel's values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ctp_steps.mbf.bayes import PooledKinetics, fit_by_segment, pooled_kinetics
from ctp_steps.mbf.config import MBFConfig, Method
from ctp_steps.mbf.extraction import extraction_model
from ctp_steps.mbf.fit import FitResult, SharedKinetics, fit_curves
from ctp_steps.mbf.regularise import (
    Neighbourhood,
    bilateral_average,
    peak_enhancement_blocks,
    OtherBoundary,
    sources_away_from_blood,
)
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
    pooled: PooledKinetics | None  # bayesian estimator: patient and per-segment posterior kinetics
    segment_ids: np.ndarray  # (S,)
    segment_curves: np.ndarray  # (S, T) mean enhancement per segment
    segment_fit: FitResult  # fit of the segment mean curves, same model as the regularised map
    sources: np.ndarray | None  # (V,) whether each voxel's working voxel is a source of the averages (None: unregularised)
    working_spacing_mm: tuple[float, float, float]  # (z, y, x) grid the curves were fitted on
    n_offsets: int  # neighbours per voxel of the regularisation (0 when off)

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
    """MBF of every myocardium voxel with `method` (default: cfg.method), raw and regularised.

    Fits run on the working grid (`WorkingGrid`); maps, segments and curves are per native voxel.
    """
    method = method or cfg.method
    mask = np.asarray(inputs.myocardium, dtype=bool)
    if inputs.series_hu.shape[1:] != mask.shape or inputs.aha17.shape != mask.shape:
        raise ValueError(
            f"grids differ: series {inputs.series_hu.shape}, myocardium {mask.shape}, aha17 {inputs.aha17.shape}"
        )
    if not mask.any():
        raise PatientInputError("myocardium.nii.gz: empty myocardium mask")
    aif = arterial_input(
        inputs.times_s, inputs.aif_hu, cfg.min_aif_peak_hu, cfg.aif_model, baseline=cfg.aif_baseline
    )
    box = bounding_box(mask)
    mask_box = mask[box]
    curves = tissue_enhancement(inputs.series_hu[(slice(None), *box)], mask_box, aif.n_baseline)
    segments = inputs.aha17[box][mask_box].astype(np.int64)
    spacing = tuple(float(s) for s in reversed(inputs.geometry.spacing))
    grid = WorkingGrid.build(mask_box, segments, spacing, cfg.working_spacing_mm)
    work_curves = grid.to_working(curves)

    def fit(y: np.ndarray, shared: SharedKinetics | None = None) -> FitResult:
        return fit_curves(
            y,
            aif,
            method,
            max_delay_s=cfg.max_delay_s,
            max_iter=cfg.max_iter,
            chunk=cfg.chunk_voxels,
            device=device,
            renkin_crone=extraction_model(cfg),  # type: ignore[arg-type]  # any ExtractionModel
            max_mbf=cfg.max_mbf,
            shared=shared,
            compiled=cfg.compile_fits,
        )

    reg = cfg.regularisation
    raw = fit(work_curves)
    shared, pooled, sources = None, None, None
    regularised = raw
    n_offsets = 0

    def fit_kinetics(y: np.ndarray, labels: np.ndarray) -> FitResult:
        """Fit under the kinetics in use: the pooled segment ones, the patient's, or none (all free)."""
        return fit(y, shared) if pooled is None else fit_by_segment(y, labels, pooled, fit)

    if reg.enabled:
        hood = Neighbourhood.build(grid.mask, grid.spacing_mm, reg.radius_mm, device, reg.min_offset_spacing_mm)
        n_offsets = hood.n_offsets
        sources = (
            hood.deep(reg.min_depth_mm)
            if reg.sources == "depth"
            else blood_free_sources(inputs.series_hu, box, grid, aif, reg.min_depth_mm,
                                    reg.blood_enhancement_fraction, "layer" if reg.sources == "away_from_blood" else "depth")
        )
        if method == "one_compartment" and reg.shared_kinetics and cfg.estimator == "bayesian":
            pooled = pooled_kinetics(
                work_curves[sources], grid.segments[sources], work_curves, grid.segments, aif, cfg.priors,
                max_delay_s=cfg.max_delay_s, max_iter=cfg.max_iter, device=device,
            )
            shared = pooled.patient.kinetics(0)
        elif method == "one_compartment" and reg.shared_kinetics:
            shared = shared_kinetics(work_curves[sources], fit)
        regularised = _regularised_fit(
            work_curves, grid.segments, hood, sources, cfg, device, lambda y: fit_kinetics(y, grid.segments)
        )
    segment_ids, segment_curves = segment_mean_curves(curves, segments)
    return MBFEstimate(
        method=method,
        aif=aif,
        mask=mask,
        segments=segments,
        curves=curves,
        raw=grid.to_native(raw),
        regularised=grid.to_native(regularised),
        shared=shared,
        pooled=pooled,
        segment_ids=segment_ids,
        segment_curves=segment_curves,
        segment_fit=fit_kinetics(segment_curves, segment_ids),
        sources=None if sources is None else grid.to_native_values(sources),
        working_spacing_mm=grid.spacing_mm,
        n_offsets=n_offsets,
    )


def bounding_box(mask_zyx: np.ndarray) -> tuple[slice, slice, slice]:
    """Smallest box holding the mask: nothing outside the myocardium is read, so the rest of the FOV is skipped.

    No margin is needed for the neighbourhood: it pads its own index volume, and only myocardium voxels
    are ever neighbours.
    """
    nonzero = np.nonzero(mask_zyx)
    return tuple(slice(int(i.min()), int(i.max()) + 1) for i in nonzero)


def working_factors(spacing_zyx_mm: tuple[float, float, float], working_spacing_mm: float) -> tuple[int, int, int]:
    """Voxels per working block along each axis: the whole number whose span is closest to `working_spacing_mm`
    (at least 1). "At most" would leave 0.8 mm voxels unaveraged under a 1.5 mm working spacing (two of them
    span 1.6 mm) and the cost would again grow with the inverse voxel volume."""
    if working_spacing_mm <= 0:
        return (1, 1, 1)
    return tuple(max(1, int(np.floor(working_spacing_mm / s + 0.5))) for s in spacing_zyx_mm)


@dataclass(frozen=True)
class WorkingGrid:
    """Blocks of native voxels that MBF is fitted on, and the map from native myocardium voxels to them.

    Blocks tile the mask's box from its first voxel, so the grid does not depend on the field of view.
    A block is a working voxel when most of its voxels (in the box) are myocardium; its curve is the mean of its
    myocardium voxels' curves (no blood pool or fat averaged in), its AHA label their majority.
    Native voxels whose block is not one (the mask's edge) take the nearest working voxel's values.
    With one voxel per block it is the native grid, and both maps are the identity.
    """

    factors: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]  # (z, y, x)
    mask: np.ndarray  # (bz, by, bx) bool: the working voxels
    segments: np.ndarray  # (W,) AHA label of each working voxel
    block: np.ndarray | None  # (V,) working voxel of each native voxel's own block, -1 if none; None: identity
    nearest: np.ndarray | None  # (V,) working voxel whose values each native voxel takes; None: identity

    @classmethod
    def build(
        cls,
        mask_zyx: np.ndarray,
        segments: np.ndarray,
        spacing_zyx_mm: tuple[float, float, float],
        working_spacing_mm: float,
    ) -> "WorkingGrid":
        factors = working_factors(spacing_zyx_mm, working_spacing_mm)
        spacing = tuple(f * s for f, s in zip(factors, spacing_zyx_mm))
        if factors == (1, 1, 1):
            return cls(factors, spacing, mask_zyx, segments, None, None)
        f = np.asarray(factors)
        shape = tuple(-(-np.asarray(mask_zyx.shape) // f))
        block_id = np.ravel_multi_index((np.argwhere(mask_zyx) // f).T, shape)
        counts = np.bincount(block_id, minlength=int(np.prod(shape)))
        # voxels of each block inside the box (the last block along an axis may be short)
        sizes = [np.minimum(k, n - np.arange(b) * k) for k, n, b in zip(f, mask_zyx.shape, shape)]
        block_size = (sizes[0][:, None, None] * sizes[1][None, :, None] * sizes[2][None, None, :]).ravel()
        working = counts * 2 > block_size
        if not working.any():  # a mask thinner than a block everywhere: keep every block it touches
            working = counts > 0
        number = np.full(working.size, -1, dtype=np.int64)
        number[working] = np.arange(int(working.sum()))
        working_3d = working.reshape(shape)
        # nearest working block of every block (itself if working), in mm on the working grid
        idx = ndimage.distance_transform_edt(
            ~working_3d, sampling=spacing, return_distances=False, return_indices=True
        )
        nearest_block = number[np.ravel_multi_index(tuple(idx), shape).ravel()]
        block = number[block_id]
        n_labels = int(segments.max()) + 1 if segments.size else 1
        inside = block >= 0
        votes = np.bincount(
            block[inside] * n_labels + segments[inside], minlength=int(working.sum()) * n_labels
        ).reshape(-1, n_labels)
        return cls(factors, spacing, working_3d, votes.argmax(axis=1), block, nearest_block[block_id])

    def to_working(self, curves: np.ndarray) -> np.ndarray:
        """Native curves (V, T) → working curves (W, T): the mean over each block's myocardium voxels."""
        if self.block is None:
            return curves
        inside = self.block >= 0
        n = len(self.segments)
        count = np.bincount(self.block[inside], minlength=n).astype(curves.dtype)
        sums = np.stack([np.bincount(self.block[inside], weights=c, minlength=n) for c in curves[inside].T], axis=1)
        return sums / count[:, None]

    def to_native_values(self, values: np.ndarray) -> np.ndarray:
        """Per working voxel (W,) → per native voxel (V,): its block's, or the nearest block's."""
        return values if self.nearest is None else values[self.nearest]

    def to_native(self, result: FitResult) -> FitResult:
        """Working-grid fit → one value per native voxel (its block's, or the nearest block's)."""
        if self.nearest is None:
            return result
        return result.take(self.nearest)


def blood_free_sources(
    series_tzyx: np.ndarray, box: tuple[slice, slice, slice], grid: WorkingGrid, aif: ArterialInput,
    min_depth_mm: float, blood_fraction: float, other_boundary: OtherBoundary,
) -> np.ndarray:
    """(W,) sources of the blood-aware rules on the working grid (`regularise.sources_away_from_blood`).

    Blood: working blocks, in or around the mask, whose mean peak enhancement reaches `blood_fraction` of the
    AIF's peak enhancement, looked for as far out as `min_depth_mm` reaches (plus one block).
    """
    margin = int(np.ceil(min_depth_mm / min(grid.spacing_mm))) + 1
    peak = peak_enhancement_blocks(series_tzyx, box, grid.factors, aif.n_baseline, margin)
    blood = peak >= blood_fraction * aif.peak_hu
    return sources_away_from_blood(np.pad(grid.mask, margin), blood, grid.spacing_mm, min_depth_mm, other_boundary)


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
