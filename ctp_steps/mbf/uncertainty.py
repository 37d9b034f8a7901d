"""Standard errors and 95 % intervals of MBF from the estimator's own model, and a reliability rule.

Per fitted curve (voxel, segment mean, region mean), at the fitted parameters:

- Jacobian J (T, p) of the model curve with respect to the free parameters, by
  central differences of the very model function the fit minimised (the
  fitters' `model` in fit.py), batched over curves on the given device.
- Noise variance sigma^2 = SSE / (T - p) of that curve's own fit. Per curve,
  not pooled per patient: curves differ in how much averaging they carry (a
  regularised voxel's curve is a weighted mean of a varying number of source
  neighbours, a segment's mean curve one of tens to thousands of voxels), so
  each curve's residuals are the noise level of *its* fit. Averaging correlated
  neighbours is then accounted for by construction: the residual variance is
  that of the averaged curve, whatever the correlation of its parts. Model
  misfit (partial volume, mixtures of kinetics) also lands in sigma^2: the SE
  errs on the large side then, the safe side for a reliability flag.
- Covariance of the parameters sigma^2 (J'J)^-1 (Gauss-Newton / Fisher
  information). The SE of K1 is the square root of its diagonal element of the
  *full* inverse: with K1, k2, vb and delay all free, the nuisance parameters
  take most of the precision (Cramer-Rao of K1 15-45 % against 4-7 % with them
  known, fit.py), and the K1 diagonal of J'J alone would hide that. With shared
  kinetics (`SharedKinetics`: delay, ve = K1/k2, vb fixed per patient) K1 is
  the only free parameter; the error of the patient-level kinetics themselves
  (fitted once on the mean of all source curves) is common to every voxel and is
  not included.
- Delta method to MBF: MBF = F(6000 K1) with F the Renkin-Crone inverse used by
  fit.py (`RenkinCrone.flow`), dMBF/dK1 = 1 / (dk1/dF) at the reported MBF.
  Fermi: MBF = 6000 F directly. Upslope has no fitted noise model: NaN.

Intervals are built on the fitted rate's scale (K1, where the model is linear
in the parameter with shared kinetics, so its error is close to Gaussian), as
rate +- t SE with the Student t quantile for T - p degrees of freedom (sigma^2
is estimated from T - p residual degrees of freedom: with 16 frames and four
parameters t = 2.18, not 1.96), the lower end clipped at a rate of 0, and then
mapped through the same monotone Renkin-Crone inverse: the MBF interval is
therefore asymmetric where the extraction correction is convex (high flow) and
capped at `max_mbf`, the inverse's ceiling.

Segment, territory and global SE: the SE of the fit of the region's mean
(enhancement) curve. The regularised map's voxel errors are strongly
correlated (neighbours share most of their averaged sources), so neither the
voxel SEs / sqrt(n) nor the SD of the map is the precision of a region mean;
with shared kinetics the fit is linear in K1, so the mean of the voxel K1 of
a region is the K1 of the region's mean curve, and that curve's residuals
carry its actual noise, spatial correlation included. Caveat: the regularised
map draws mostly on its source voxels (and, by default, neighbours across segment
borders), so its effective sources differ somewhat from the region's voxels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from scipy import special

from ctp_steps.aha import TERRITORY_SEGMENTS
from ctp_steps.mbf.config import MBFConfig, Method, UncertaintyConfig  # noqa: F401 (re-exported)
from ctp_steps.mbf.fit import (
    DTYPE,
    PARAMETER_NAMES,
    PER_S_TO_ML_100ML_MIN,
    FermiFitter,
    FitResult,
    OneCompartmentFitter,
    RenkinCrone,
    SharedKinetics,
    SharedKineticsFitter,
    fit_curves,
    parameter_covariance,
)
from ctp_steps.mbf.extraction import k1_of
from ctp_steps.mbf.kinetics import GridAIF
from ctp_steps.mbf.tac import ArterialInput

if TYPE_CHECKING:
    from ctp_steps.mbf.extraction import ExtractionModel

CONFIDENCE = 0.95
# Central-difference step: cube root of float64 epsilon (balances truncation and rounding error) times
# the parameter's magnitude, floored at a small fraction of its bound range for parameters near 0.
_STEP = float(np.finfo(np.float64).eps) ** (1.0 / 3.0)
_STEP_FLOOR = 1e-3


@dataclass(frozen=True)
class MBFUncertainty:
    """Per-curve precision of one method's fit, numpy arrays of length n_curves."""

    rate_se: np.ndarray  # SE of the fitted rate (6000 K1, 6000 F), mL/100mL/min
    sigma_hu: np.ndarray  # residual noise SD of the curve's fit
    dof: int  # residual degrees of freedom: frames - free parameters

    def mbf_se(self, mbf: np.ndarray, renkin_crone: RenkinCrone | None) -> np.ndarray:
        """SE of MBF at the reported values `mbf` (delta method through the extraction correction)."""
        return flow_slope(mbf, renkin_crone) * self.rate_se

    def interval(
        self, mbf: np.ndarray, renkin_crone: RenkinCrone | None, max_mbf: float, confidence: float = CONFIDENCE
    ) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) MBF interval around the reported `mbf`: see `confidence_interval`."""
        return confidence_interval(mbf, self.rate_se, self.dof, renkin_crone, max_mbf, confidence)


def flow_slope(mbf: np.ndarray, renkin_crone: RenkinCrone | None) -> np.ndarray:
    """dMBF/d(6000 K1) at flow `mbf`: 1 / (dk1/dF) of the extraction model (1 without it).

    k1(F) = F (1 - e), e = exp(-ps/F - slope), so dk1/dF = 1 - e (1 + ps/F):
    1 at zero flow, 1 - exp(-slope) at infinite flow (0 with a fixed PS: K1
    saturates and its SE maps to an unbounded MBF SE). Flows below the
    inverse's grid start (1e-3) use the slope there.
    """
    mbf = np.asarray(mbf, dtype=float)
    if renkin_crone is None:
        return np.ones_like(mbf)
    f = np.maximum(mbf, 1e-3)
    if isinstance(renkin_crone, RenkinCrone):
        e = np.exp(-renkin_crone.ps / f - renkin_crone.flow_slope)
        dk1 = 1.0 - e * (1.0 + renkin_crone.ps / f)
    else:  # any other extraction preset (ctp_steps/mbf/extraction.py): central difference of its k1(F)
        step = 1e-4 * f
        dk1 = (renkin_crone.k1(f + step) - renkin_crone.k1(f - step)) / (2 * step)
    with np.errstate(divide="ignore"):
        return np.where(dk1 > 0, 1.0 / np.maximum(dk1, 0.0), np.inf)


def confidence_interval(
    mbf: np.ndarray,
    rate_se: np.ndarray,
    dof: int,
    renkin_crone: RenkinCrone | None,
    max_mbf: float,
    confidence: float = CONFIDENCE,
) -> tuple[np.ndarray, np.ndarray]:
    """MBF interval: rate(mbf) +- t_{dof} SE on the fitted-rate scale, clipped at 0, mapped back to MBF.

    The rate scale is where the fit's error is (near) Gaussian; the monotone
    Renkin-Crone inverse carries the interval's ends over exactly, so the MBF
    interval is asymmetric at high flow and at most `max_mbf`. NaN SE gives NaN ends.
    """
    mbf = np.asarray(mbf, dtype=float)
    rate_se = np.asarray(rate_se, dtype=float)
    # Student t quantile (scipy.stats.t.ppf's values, without the 0.3 s import of scipy.stats)
    q = float(special.stdtrit(max(dof, 1), 0.5 + confidence / 2))
    rate = k1_of(mbf, renkin_crone)
    low_rate, high_rate = np.maximum(rate - q * rate_se, 0.0), rate + q * rate_se
    if renkin_crone is None:
        return low_rate, high_rate
    low, high = renkin_crone.flow(low_rate, max_mbf), renkin_crone.flow(high_rate, max_mbf)
    nan = ~np.isfinite(rate_se) | ~np.isfinite(mbf)
    return np.where(nan, np.nan, low), np.where(nan, np.nan, high)


def curve_model(
    aif: ArterialInput, method: Method, max_delay_s: float, shared: SharedKinetics | None, device: torch.device
) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor, torch.Tensor]:
    """The fit's own model (curves (n, T) from free parameters (n, p)) and the free parameters' bounds."""
    times = torch.as_tensor(aif.times_s, device=device, dtype=DTYPE)
    grid = GridAIF.from_values(aif.grid_dt_s, aif.grid_hu, device, DTYPE)
    if method == "fermi":
        fitter = FermiFitter(grid, times, max_delay_s)
    elif method == "one_compartment" and shared is None:
        fitter = OneCompartmentFitter(grid, times, max_delay_s)
    elif method == "one_compartment":
        fitter = SharedKineticsFitter(grid, times, shared)
    else:
        raise ValueError(f"no fitted model for method {method!r}")
    return (lambda theta: fitter.model(theta)[0]), fitter.lower, fitter.upper


def free_parameters(fit: FitResult, method: Method, shared: SharedKinetics | None) -> np.ndarray:
    """The parameters the fit varied, (n, p), in its order: K1 alone with shared kinetics."""
    if method == "one_compartment" and shared is not None:
        return fit.params["k1"][:, None]
    return np.stack([fit.params[n] for n in PARAMETER_NAMES[method]], axis=1)


def numerical_jacobian(
    model: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """d curve / d theta (n, T, p) by central differences, all 2p perturbations in one batched model call.

    Step per parameter: eps^(1/3) x max(|theta|, 1e-3 x `scale`) (`scale`: the
    parameter's bound range), so parameters at 0 (a bound) still get a step.
    Steps may leave the bounds: the model is defined there and the derivative
    is that of the unconstrained model, which the Fisher information needs.
    """
    n, p = theta.shape
    h = _STEP * torch.maximum(theta.abs(), _STEP_FLOOR * scale)  # (n, p)
    eye = torch.eye(p, device=theta.device, dtype=theta.dtype)
    shifts = h[None, :, :] * eye[:, None, :]  # (p, n, p): row j moves parameter j
    batch = torch.cat([theta[None] + shifts, theta[None] - shifts]).reshape(2 * p * n, p)
    curves = model(batch).reshape(2, p, n, -1)
    return ((curves[0] - curves[1]) / (2 * h.T[:, :, None])).permute(1, 2, 0)


def fit_uncertainty(
    fit: FitResult,
    aif: ArterialInput,
    method: Method,
    *,
    max_delay_s: float,
    shared: SharedKinetics | None,
    device: torch.device,
    chunk: int = 20_000,
    kinetics_cov: np.ndarray | None = None,
) -> MBFUncertainty:
    """SE of the fitted rate of every curve of `fit`, from the model at its parameters and its own SSE.

    Upslope has no noise model: NaN. The fitted rate is MBF before the
    extraction correction; `MBFUncertainty.mbf_se` and `.interval` carry it to MBF.
    With shared kinetics, `kinetics_cov` (3x3 over ve, vb, delay: `kinetics_covariance`)
    adds the error of the patient-level kinetics, g' C g with g = dK1/d(ve, vb, delay)
    of each curve's K1-only fit (`kinetics_sensitivity`); None leaves it out.
    """
    n, frames = len(fit.mbf), len(aif.times_s)
    if method == "upslope":
        nan = np.full(n, np.nan)
        return MBFUncertainty(rate_se=nan, sigma_hu=nan, dof=frames - 2)
    model, lower, upper = curve_model(aif, method, max_delay_s, shared, device)
    theta = free_parameters(fit, method, shared)
    p = theta.shape[1]
    dof = frames - p
    if dof <= 0:
        raise ValueError(f"{frames} frames cannot give an SE for {p} free parameters")
    scale = upper - lower
    scale = torch.where(torch.isfinite(scale) & (scale > 0), scale, torch.ones_like(scale))
    sigma2 = np.asarray(fit.sse, dtype=float) / dof
    se = []
    for i in range(0, n, chunk):
        th = torch.as_tensor(theta[i : i + chunk], device=device, dtype=DTYPE)
        jac = numerical_jacobian(model, th, scale)
        cov = parameter_covariance(jac, torch.as_tensor(sigma2[i : i + chunk], device=device, dtype=DTYPE))
        var = cov[:, 0, 0].clamp_min(0)
        if shared is not None and kinetics_cov is not None:
            g = kinetics_sensitivity(aif, max_delay_s, shared, th[:, 0], device)
            c = torch.as_tensor(kinetics_cov, device=device, dtype=DTYPE)
            var = var + ((g @ c) * g).sum(-1).clamp_min(0)
        se.append(var.sqrt().cpu().numpy())
    rate_se = (np.concatenate(se) if se else np.zeros(0)) * PER_S_TO_ML_100ML_MIN
    return MBFUncertainty(rate_se=rate_se, sigma_hu=np.sqrt(sigma2), dof=dof)


def _shared_parameter_model(
    aif: ArterialInput, max_delay_s: float, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The one-compartment model of fit.py in the shared-kinetics parameters (K1, ve, vb, delay), k2 = K1 / ve."""
    times = torch.as_tensor(aif.times_s, device=device, dtype=DTYPE)
    fitter = OneCompartmentFitter(GridAIF.from_values(aif.grid_dt_s, aif.grid_hu, device, DTYPE), times, max_delay_s)

    def model(theta: torch.Tensor) -> torch.Tensor:
        k1, ve, vb, delay = theta.unbind(-1)
        return fitter.model(torch.stack([k1, k1 / ve, vb, delay], dim=-1))[0]

    return model


def _shared_jacobian(
    aif: ArterialInput, max_delay_s: float, shared: SharedKinetics, k1: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """d curve / d(K1, ve, vb, delay) (n, T, 4) at each K1 with the patient's kinetics."""
    model = _shared_parameter_model(aif, max_delay_s, device)
    eta = torch.tensor([shared.ve, shared.vb, shared.delay_s], device=device, dtype=DTYPE)
    theta = torch.cat([k1[:, None], eta.expand(len(k1), 3)], dim=1)
    # bound ranges (K1, ve, vb, delay) for the step floors: ve's as K1's over k2's lower bound is not useful,
    # so ve, like vb, gets the fraction range 1
    scale = torch.tensor([10.0 / 60, 1.0, 1.0, max(max_delay_s, 1.0)], device=device, dtype=DTYPE)
    return numerical_jacobian(model, theta, scale)


def kinetics_sensitivity(
    aif: ArterialInput, max_delay_s: float, shared: SharedKinetics, k1: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """g = dK1/d(ve, vb, delay) (n, 3) of K1-only least-squares fits at K1 (1/s): -(J1'J1)^-1 J1' J_eta."""
    jac = _shared_jacobian(aif, max_delay_s, shared, k1, device)
    j1, j_eta = jac[..., 0], jac[..., 1:]
    return -(j1[:, :, None] * j_eta).sum(1) / (j1**2).sum(1).clamp_min(1e-300)[:, None]


def kinetics_covariance(
    k1: float, sse: float, aif: ArterialInput, max_delay_s: float, shared: SharedKinetics, device: torch.device
) -> np.ndarray:
    """Covariance (3x3: ve, vb, delay) of the patient's shared kinetics, from the curve they were fitted on.

    `k1` (1/s) and `sse` are that curve's fit (all four parameters free, in the
    shared parameterisation; sigma^2 = sse / (T - 4)). The block of the full
    inverse, not of the kinetics alone: K1 was estimated with them. Profile
    identity: Var(K1 | 4 free) = Var(K1 | kinetics fixed) + g' C g exactly for
    that curve; for other curves the covariance of their own noise with the
    kinetics' is neglected.
    """
    jac = _shared_jacobian(aif, max_delay_s, shared, torch.tensor([k1], device=device, dtype=DTYPE), device)
    dof = len(aif.times_s) - 4
    sigma2 = torch.tensor([sse / dof], device=device, dtype=DTYPE)
    return parameter_covariance(jac, sigma2)[0, 1:, 1:].cpu().numpy()


def region_selections(segments: np.ndarray) -> tuple[list[str], list[np.ndarray]]:
    """Voxel selections (V,) bool of `global`, each territory present (`lad`, ...) and each segment present ("1"...)."""
    names, sel = ["global"], [np.ones(len(segments), dtype=bool)]
    for terr, segs in TERRITORY_SEGMENTS.items():
        if np.isin(segments, segs).any():
            names.append(terr.lower())
            sel.append(np.isin(segments, segs))
    for s in np.unique(segments[segments > 0]):
        names.append(str(int(s)))
        sel.append(segments == s)
    return names, sel


def region_fit(
    curves: np.ndarray, aif: ArterialInput, method: Method, cfg: MBFConfig, shared: SharedKinetics | None,
    device: torch.device,
) -> FitResult:
    """Fit of mean curves with the estimator's settings (as `estimate_mbf` fits its segment curves)."""
    return fit_curves(
        curves,
        aif,
        method,
        max_delay_s=cfg.max_delay_s,
        max_iter=cfg.max_iter,
        chunk=cfg.chunk_voxels,
        device=device,
        renkin_crone=renkin_crone_of(cfg, method),
        max_mbf=cfg.max_mbf,
        shared=shared,
        compiled=False,
    )


def renkin_crone_of(cfg: MBFConfig, method: Method) -> "ExtractionModel | None":
    """The extraction model `fit_curves` applies for this method and config (the `mbf.extraction` preset;
    None: MBF = rate)."""
    from ctp_steps.mbf.extraction import extraction_model

    return extraction_model(cfg) if method == "one_compartment" else None


def summary(
    estimate: np.ndarray, unc: MBFUncertainty, renkin_crone: RenkinCrone | None, max_mbf: float
) -> dict[str, np.ndarray]:
    """se, ci_low, ci_high of reported estimates (arrays), from the rate SE of their curves' fits."""
    low, high = unc.interval(estimate, renkin_crone, max_mbf)
    return {"se": unc.mbf_se(estimate, renkin_crone), "ci_low": low, "ci_high": high}


def is_reliable(estimate: float | None, ci_low: float, ci_high: float, cfg: UncertaintyConfig) -> bool | None:
    """The reliability rule: half-width of the interval below `reliable_max_ci_half_width_pct` % of the estimate.

    None where the estimate or its interval is undefined (upslope, empty myocardium).
    """
    if estimate is None or not np.isfinite([estimate, ci_low, ci_high]).all() or estimate <= 0:
        return None
    return bool(50.0 * (ci_high - ci_low) / estimate < cfg.reliable_max_ci_half_width_pct)


@dataclass(frozen=True)
class PatientUncertainty:
    """Everything the MBF stage reports about precision, for one patient."""

    voxel_se: np.ndarray  # (V,) SE of the regularised map (mbf_se.nii.gz), mL/100mL/min
    segments: dict[int, dict[str, float]]  # segment -> {"mbf_se", "mbf_ci_low", "mbf_ci_high"} (segments.parquet)
    record: dict[str, float | bool | None]  # patients.parquet columns


def _value(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _bayesian_uncertainty(est, cfg: MBFConfig, device: torch.device, names: list[str], curves: np.ndarray,
                          means: np.ndarray, rc) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Voxel SEs and region summaries of the `bayesian` estimator (ctp_steps/mbf/bayes.py).

    Regions: the K1 variance of the Laplace posterior of the region's mean curve, all four parameters free
    under the prior the estimator used there (population for global, pooling for territories and segments).
    Voxels: K1-only SE under their segment's kinetics plus g' C g with C that segment's posterior covariance.
    """
    from ctp_steps.mbf.bayes import region_posteriors

    pooled = est.pooled
    post = region_posteriors(curves, np.array([n == "global" for n in names]), pooled, est.aif, cfg.priors,
                             max_delay_s=cfg.max_delay_s, max_iter=cfg.max_iter, device=device)
    dof = len(est.aif.times_s) - 4
    unc = MBFUncertainty(rate_se=np.sqrt(np.maximum(post.cov[:, 0, 0], 0.0)) * PER_S_TO_ML_100ML_MIN,
                         sigma_hu=np.sqrt(post.sigma2), dof=dof)
    voxel_se = np.full(len(est.regularised.mbf), np.nan)
    seg_cov = pooled.segments.kinetics_cov()
    for label in np.unique(est.segments):
        sel = est.segments == label
        where = np.flatnonzero(pooled.segment_ids == label)
        cov = seg_cov[where[0]] if where.size else pooled.patient.kinetics_cov()[0]
        part = fit_uncertainty(est.regularised.take(sel), est.aif, est.method, max_delay_s=cfg.max_delay_s,
                               shared=pooled.of(int(label)), device=device, chunk=cfg.chunk_voxels, kinetics_cov=cov)
        voxel_se[sel] = part.mbf_se(est.regularised.mbf[sel], rc)
    return voxel_se, summary(means, unc, rc, cfg.max_mbf)


def patient_uncertainty(est, cfg: MBFConfig, device: torch.device, rule: UncertaintyConfig) -> PatientUncertainty:
    """SE and intervals of the regularised map, of each segment's, territory's and the global mean, and the flag.

    `est` is an `MBFEstimate`. Reported
    values are the stage's (means of the regularised map). A region's SE is
    that of the fit of the mean curve of the voxels its regularised values are
    made of: with regularisation, its source voxels (`est.sources`; all its
    voxels where it has none), else all its voxels.
    Averaging only the region's sources ignores the sources the kernel
    reaches across the region's border (with `same_segment` off), so it errs
    on the large side; averaging all its voxels instead understated the SD of
    the regularised means over noise realisations by up to 2x (12 noise
    draws of the test ring, BENCHMARKS-style check in the session report).
    With shared kinetics the error of the patient's kinetics is added
    (`kinetics_covariance`, from the fit of the global source curve).
    """
    rc = renkin_crone_of(cfg, est.method)
    names, selections = region_selections(est.segments)
    if est.sources is not None:
        selections = [s & est.sources if (s & est.sources).any() else s for s in selections]
    curves = np.stack([est.curves[s].mean(axis=0) for s in selections])
    mbf = est.regularised.mbf
    means = np.array([mbf[sel].mean() for sel in region_selections(est.segments)[1]])
    if est.method == "upslope":
        nan = np.full(len(names), np.nan)
        voxel_se, regions = np.full(len(mbf), np.nan), {"se": nan, "ci_low": nan, "ci_high": nan}
    elif est.pooled is not None:
        voxel_se, regions = _bayesian_uncertainty(est, cfg, device, names, curves, means, rc)
    else:
        fits = region_fit(curves, est.aif, est.method, cfg, est.shared, device)
        kinetics_cov = None
        if est.shared is not None:
            kinetics_cov = kinetics_covariance(float(fits.params["k1"][0]), float(fits.sse[0]), est.aif,
                                               cfg.max_delay_s, est.shared, device)

        def uncertainty(fit: FitResult) -> MBFUncertainty:
            return fit_uncertainty(fit, est.aif, est.method, max_delay_s=cfg.max_delay_s, shared=est.shared,
                                   device=device, chunk=cfg.chunk_voxels, kinetics_cov=kinetics_cov)

        voxel_se = uncertainty(est.regularised).mbf_se(mbf, rc)
        regions = summary(means, uncertainty(fits), rc, cfg.max_mbf)
    segments = {
        int(n): {f"mbf_{k}": float(v[i]) for k, v in regions.items()} for i, n in enumerate(names) if n.isdigit()
    }
    record: dict[str, float | bool | None] = {}
    for region in ["global", *(t.lower() for t in TERRITORY_SEGMENTS)]:
        for k in ("se", "ci_low", "ci_high"):
            record[f"mbf_{region}_{k}"] = _value(regions[k][names.index(region)]) if region in names else None
    record["mbf_reliable"] = is_reliable(_value(means[0]), regions["ci_low"][0], regions["ci_high"][0], rule)
    return PatientUncertainty(voxel_se=voxel_se, segments=segments, record=record)
