"""The `bayesian` estimator: one-compartment kinetics as posterior modes under physiological priors, pooled over segments.

Why: K1's precision is lost mostly to the nuisance parameters (delay, ve, vb;
BENCHMARKS.md), and the least-squares estimator answers that by fixing them per
patient (one fit of the mean deep-voxel curve). That is exact when the whole
heart shares one set of kinetics and biased when it does not: an ischemic or
scarred bed has its own ve, vb and arrival, and the patient's mean curve is a
mixture of beds, which a one-compartment curve fits only approximately. Here:

1. the patient's kinetics are the posterior mode (MAP) of the mean deep-voxel
   curve under the population prior `KineticsPriors` (Gaussian on log ve,
   log vb and the delay; published physiology, cited in the config);
2. each AHA segment's kinetics are the MAP of its own deep-voxel mean curve
   under a prior centred on the patient's, of width `segment_*` plus the
   patient estimate's own posterior SD (partial pooling: a segment whose curve
   says little stays near its patient, one whose curve says much follows it);
3. every voxel fits K1 alone under its segment's kinetics (the patient's for
   voxels outside the segments), as the least-squares estimator does under
   the patient's.

MAP by the same bounded Levenberg-Marquardt as every other fit (fit.py): the
prior enters as three pseudo-observations per curve, sigma (g(theta) - mu) / tau,
so the minimised sum is sigma^2 times the negative log posterior. sigma is the
curve's own noise SD, sigma^2 = SSE / (T - 4) of its least-squares fit: a noise-free
curve gets no prior weight (its MAP is its least-squares fit). The Laplace
approximation of the posterior covariance is sigma^2 (J'J)^-1 of the augmented
Jacobian, i.e. (Fisher information + prior precision)^-1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ctp_steps.mbf.config import KineticsPriors
from ctp_steps.mbf.fit import (
    DTYPE,
    FitResult,
    OneCompartmentFitter,
    SharedKinetics,
    levenberg_marquardt,
    parameter_covariance,
)
from ctp_steps.mbf.kinetics import GridAIF
from ctp_steps.mbf.tac import ArterialInput

N_PARAMS = 4  # K1, k2, vb, delay
# Bounds of the MAP fit: the fit.py ones with K1 and vb kept off 0, where log ve and log vb are undefined.
MAP_LOWER = (1e-7, 1e-4, 1e-4, 0.0)


@dataclass(frozen=True)
class PosteriorFit:
    """MAP fits of curves (n,): parameters (K1, k2, vb, delay) in SI units, Laplace covariance, noise."""

    theta: np.ndarray  # (n, 4)
    cov: np.ndarray  # (n, 4, 4) Laplace posterior covariance
    sigma2: np.ndarray  # (n,) noise variance of each curve (from its least-squares fit), HU^2
    sse: np.ndarray  # (n,) data SSE at the MAP, HU^2

    def kinetics(self, i: int) -> SharedKinetics:
        k1, k2, vb, delay = (float(v) for v in self.theta[i])
        return SharedKinetics(delay_s=delay, ve=k1 / k2, vb=vb)

    def log_kinetics_cov(self) -> np.ndarray:
        """(n, 3, 3) posterior covariance of (log ve, log vb, delay)."""
        return _transform(self.cov, _kinetics_jacobian(self.theta, log=True))

    def kinetics_cov(self) -> np.ndarray:
        """(n, 3, 3) posterior covariance of (ve, vb, delay), the order of `uncertainty.kinetics_covariance`."""
        return _transform(self.cov, _kinetics_jacobian(self.theta, log=False))

    def log_kinetics(self) -> np.ndarray:
        """(n, 3) (log ve, log vb, delay) at the MAP."""
        k1, k2, vb, delay = self.theta.T
        return np.stack([np.log(k1 / k2), np.log(vb), delay], axis=1)


def _kinetics_jacobian(theta: np.ndarray, log: bool) -> np.ndarray:
    """d(ve, vb, delay)/d(K1, k2, vb, delay) (n, 3, 4) with ve = K1/k2; `log`: of (log ve, log vb, delay)."""
    k1, k2, vb = theta[:, 0], theta[:, 1], theta[:, 2]
    g = np.zeros((len(theta), 3, N_PARAMS))
    if log:
        g[:, 0, 0], g[:, 0, 1], g[:, 1, 2] = 1.0 / k1, -1.0 / k2, 1.0 / vb
    else:
        g[:, 0, 0], g[:, 0, 1], g[:, 1, 2] = 1.0 / k2, -k1 / k2**2, 1.0
    g[:, 2, 3] = 1.0
    return g


def _transform(cov: np.ndarray, g: np.ndarray) -> np.ndarray:
    return g @ cov @ np.swapaxes(g, 1, 2)


class PriorModel:
    """One-compartment model with the prior's pseudo-observations appended: (T + 3) residual rows per curve."""

    def __init__(self, fitter: OneCompartmentFitter, mean: torch.Tensor, sd: torch.Tensor, sigma: torch.Tensor):
        self.fitter = fitter
        self.mean, self.weight = mean, sigma[:, None] / sd  # (n, 3), (n, 3)

    def model(self, theta: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        curve, jac = self.fitter.model(theta)
        k1, k2, vb, delay = theta.unbind(-1)
        w = self.weight[rows]
        g = torch.stack([torch.log(k1 / k2), torch.log(vb), delay], dim=-1)
        zero = torch.zeros_like(k1)
        dg = torch.stack(
            [
                torch.stack([1.0 / k1, -1.0 / k2, zero, zero], -1),
                torch.stack([zero, zero, 1.0 / vb, zero], -1),
                torch.stack([zero, zero, zero, torch.ones_like(k1)], -1),
            ],
            dim=1,
        )
        return torch.cat([curve, w * (g - self.mean[rows])], -1), torch.cat([jac, w[:, :, None] * dg], 1)


def map_fit(
    curves: np.ndarray,
    aif: ArterialInput,
    prior_mean: np.ndarray,
    prior_sd: np.ndarray,
    *,
    max_delay_s: float,
    max_iter: int,
    device: torch.device,
) -> PosteriorFit:
    """MAP one-compartment fits of curves (n, T) under Gaussian priors on (log ve, log vb, delay): (n, 3) or (3,).

    Least squares first (its residuals give each curve's noise and its optimum one start); the MAP is then
    sought from that start and from the prior's centre (K1 from the least-squares fit), keeping the better.
    """
    n, frames = curves.shape
    if frames <= N_PARAMS:
        raise ValueError(f"{frames} frames cannot give a posterior noise estimate for {N_PARAMS} parameters")
    times = torch.as_tensor(aif.times_s, device=device, dtype=DTYPE)
    fitter = OneCompartmentFitter(GridAIF.from_values(aif.grid_dt_s, aif.grid_hu, device, DTYPE), times, max_delay_s)
    y = torch.as_tensor(curves, device=device, dtype=DTYPE)
    theta_ls, sse_ls = levenberg_marquardt(fitter.model, y, fitter.start(y), fitter.lower, fitter.upper, max_iter)
    sigma2 = sse_ls / (frames - N_PARAMS)
    mean = torch.as_tensor(np.array(np.broadcast_to(prior_mean, (n, 3))), device=device, dtype=DTYPE)
    sd = torch.as_tensor(np.array(np.broadcast_to(prior_sd, (n, 3))), device=device, dtype=DTYPE)
    prior = PriorModel(fitter, mean, sd, sigma2.sqrt())
    lower = torch.tensor(MAP_LOWER, device=device, dtype=DTYPE)
    upper = fitter.upper
    y_aug = torch.cat([y, torch.zeros(n, 3, device=device, dtype=DTYPE)], -1)
    rows = torch.arange(n, device=device)
    centre = torch.stack(
        [theta_ls[:, 0], theta_ls[:, 0] / mean[:, 0].exp(), mean[:, 1].exp(), mean[:, 2]], dim=-1
    )
    (theta_a, obj_a), (theta_b, obj_b) = (
        levenberg_marquardt(prior.model, y_aug, start.clamp(lower, upper), lower, upper, max_iter, context=rows)
        for start in (theta_ls, centre)
    )
    best_theta = torch.where((obj_b < obj_a)[:, None], theta_b, theta_a)
    curve_aug, jac_aug = prior.model(best_theta, rows)
    sse = ((y - curve_aug[:, :frames]) ** 2).sum(-1)
    # Laplace: sigma^2 (J'J)^-1 of the augmented Jacobian = (Fisher information + prior precision)^-1
    cov = parameter_covariance(jac_aug, sigma2, rtol=1e-12)
    return PosteriorFit(
        theta=best_theta.cpu().numpy(), cov=cov.cpu().numpy(), sigma2=sigma2.cpu().numpy(), sse=sse.cpu().numpy()
    )


@dataclass(frozen=True)
class PooledKinetics:
    """The patient's kinetics and each segment's, as posterior modes with their Laplace covariances."""

    patient: PosteriorFit  # one row: the mean deep-voxel curve under the population prior
    segment_ids: np.ndarray  # (S,) AHA segments present
    segments: PosteriorFit  # S rows: each segment's deep-voxel mean curve under the pooling prior
    spread: np.ndarray  # (3,) between-segment SD of (log ve, log vb, delay) the pooling used (empirical Bayes)
    pooling_sd: np.ndarray  # (3,) SD of the segments' prior about the patient's kinetics (spread + patient's own)

    def of(self, label: int) -> SharedKinetics:
        """The kinetics voxels of AHA segment `label` fit K1 under (the patient's outside the segments)."""
        where = np.flatnonzero(self.segment_ids == label)
        return self.segments.kinetics(int(where[0])) if where.size else self.patient.kinetics(0)

    def record(self) -> dict[str, float]:
        """patients.parquet columns: the patient's posterior kinetics and the between-segment spread used."""
        p = self.patient.kinetics(0)
        return {
            "mbf_kinetics_ve": p.ve,
            "mbf_kinetics_vb": p.vb,
            "mbf_kinetics_delay_s": p.delay_s,
            "mbf_segment_spread_log_ve": float(self.spread[0]),
            "mbf_segment_spread_log_vb": float(self.spread[1]),
            "mbf_segment_spread_delay_s": float(self.spread[2]),
        }


def between_segment_spread(estimates: np.ndarray, variances: np.ndarray, ceiling: np.ndarray) -> np.ndarray:
    """Method-of-moments SD of the segments' true kinetics (3,): observed variance minus mean estimation variance.

    `estimates`, `variances` (S, 3) of (log ve, log vb, delay); clipped to [0, ceiling] (the configured
    `segment_*` SDs bound it: a spread larger than physiology allows is noise). With one segment: 0.
    """
    if len(estimates) < 2:
        return np.zeros(3)
    excess = estimates.var(axis=0, ddof=1) - variances.mean(axis=0)
    return np.sqrt(np.clip(excess, 0.0, np.square(ceiling)))


def pooled_kinetics(
    source_curves: np.ndarray,
    source_segments: np.ndarray,
    all_curves: np.ndarray,
    all_segments: np.ndarray,
    aif: ArterialInput,
    priors: KineticsPriors,
    *,
    max_delay_s: float,
    max_iter: int,
    device: torch.device,
) -> PooledKinetics:
    """Patient kinetics from the mean of `source_curves` (deep voxels), then each segment's, pooled towards it.

    A segment's curve is the mean of its source (deep) voxels, or of all its voxels where it has none.
    How far segments may differ is estimated from them (empirical Bayes): each is first fitted under the
    population prior alone, the spread of those estimates beyond their own posterior variance is the
    between-segment SD (at most the configured `segment_*` SDs), and the final fits shrink each segment
    towards the patient's kinetics with that SD plus the patient estimate's own posterior SD. Where the
    segments' curves cannot tell their kinetics apart the spread is ~0 and the estimator is the
    least-squares one's shared kinetics; where they can, each segment keeps its own.
    """
    population_mean, population_sd = (np.array(v) for v in priors.population())
    fit_kw = {"max_delay_s": max_delay_s, "max_iter": max_iter, "device": device}
    patient = map_fit(source_curves.mean(axis=0, keepdims=True), aif, population_mean, population_sd, **fit_kw)
    ids = np.unique(all_segments[all_segments > 0])
    if not len(ids):
        return PooledKinetics(patient, ids, patient, np.zeros(3), np.zeros(3))
    seg_curves = np.stack(
        [
            source_curves[source_segments == s].mean(axis=0)
            if (source_segments == s).any()
            else all_curves[all_segments == s].mean(axis=0)
            for s in ids
        ]
    )
    free = map_fit(seg_curves, aif, population_mean, population_sd, **fit_kw)
    spread = between_segment_spread(
        free.log_kinetics(), np.diagonal(free.log_kinetics_cov(), axis1=1, axis2=2), np.array(priors.segment_sds())
    )
    centre = patient.log_kinetics()[0]
    patient_var = np.maximum(np.diag(patient.log_kinetics_cov()[0]), 0.0)
    # a floor keeps the prior proper where both the spread and the patient's posterior variance are 0
    sd = np.sqrt(np.square(spread) + patient_var + 1e-8)
    segments = map_fit(seg_curves, aif, centre, sd, **fit_kw)
    return PooledKinetics(patient, ids, segments, spread, sd)


def region_posteriors(
    curves: np.ndarray, is_patient: np.ndarray, pooled: PooledKinetics, aif: ArterialInput, priors: KineticsPriors,
    *, max_delay_s: float, max_iter: int, device: torch.device,
) -> PosteriorFit:
    """Posterior fits of region mean curves (n, T): `is_patient` rows (the global curve) under the population
    prior, the others (territories, segments) under the pooling prior about the patient's kinetics."""
    mean, sd = (np.array(v) for v in priors.population())
    centre = pooled.patient.log_kinetics()[0]
    prior_mean = np.where(is_patient[:, None], mean, centre)
    prior_sd = np.where(is_patient[:, None], sd, pooled.pooling_sd)
    return map_fit(curves, aif, prior_mean, prior_sd, max_delay_s=max_delay_s, max_iter=max_iter, device=device)


def fit_by_segment(curves: np.ndarray, labels: np.ndarray, pooled: PooledKinetics, fit) -> FitResult:
    """K1-only fits of curves (n, T), each under its segment's kinetics; `fit(y, shared)` as in estimate_mbf."""
    n = len(curves)
    mbf, rate, sse, delay = (np.zeros(n) for _ in range(4))
    params = {k: np.zeros(n) for k in ("k1", "k2", "vb", "delay")}
    for label in np.unique(labels):
        sel = labels == label
        part = fit(curves[sel], pooled.of(int(label)))
        mbf[sel], rate[sel], sse[sel], delay[sel] = part.mbf, part.rate, part.sse, part.delay_s
        for k in params:
            params[k][sel] = part.params[k]
    return FitResult(mbf=mbf, rate=rate, params=params, sse=sse, delay_s=delay)

