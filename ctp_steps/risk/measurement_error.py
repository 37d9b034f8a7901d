"""Hazard ratios of the marker corrected for its measurement error: regression calibration and SIMEX.

The marker is measured with error: W = X + U, U independent of X and of the clinical
covariates Z, with a known per-patient variance σ²_u,i = se_i² (the `imv_pct_se`
column of patients.parquet). Error in a covariate attenuates its Cox coefficient
towards 0 (regression dilution), so the naive HR of IMV% understates the true one.
Each correction is reported beside the naive estimate, never instead of it:

regression_calibration  X replaced by its best linear predictor given W and Z, then the
                        Cox model refit (Carroll, Ruppert, Stefanski & Crainiceanu,
                        Measurement Error in Nonlinear Models, 2nd ed., 2006, ch. 4).
                        Its CI comes from a bootstrap over patients that redoes the
                        calibration in every resample, so it carries the uncertainty of
                        σ²_X and of the calibration regression (Carroll et al. 2006, §4.6).
simex                   simulation-extrapolation: refit with extra error of variance
                        ζ·σ²_u,i added, extrapolate the mean coefficient quadratically to
                        ζ = -1 (Cook & Stefanski 1994, JASA 89:1314; Carroll et al. 2006,
                        ch. 5); variance by Stefanski & Cook (1995, JASA 90:1247).

For Cox regression RC is an approximation, not an exact correction: the hazard given
(W, Z) is not exactly proportional in E[X | W, Z] (Prentice 1982, Biometrika 69:331).
It is close for moderate effects and rare events (small cumulative hazard), and
degrades for large log-HR × error SD or common events. The quadratic SIMEX extrapolant
tends to under-correct (Carroll et al. 2006, §5.3). No error variance is ever made up:
without a finite standard error the correction is skipped with its reason.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ctp_steps.risk.cohort import CENTER, DURATION, EVENT
from ctp_steps.risk.config import RiskConfig
from ctp_steps.risk.cox import MULTIVARIABLE, NOTE_SEP, STRATIFIED, UNIVARIABLE, ModelFit, not_estimable

NAIVE = "naive"
RC = "regression_calibration"
SIMEX = "simex"
CORRECTED_MODELS = (UNIVARIABLE, MULTIVARIABLE, STRATIFIED)
ME_COLUMNS = [
    "model", "term", "estimator", "coef", "se", "hr", "hr_lower", "hr_upper", "z", "p", "n", "events",
    "reliability", "sigma2_x", "error_var", "ci_method", "resamples", "note",
]


@dataclass(frozen=True)
class Calibration:
    """E[X | W, Z] per patient with the quantities that define it; failure says why there is none."""

    x_hat: np.ndarray
    reliability: np.ndarray  # λ_i = σ²_X|Z / (σ²_X|Z + σ²_u,i)
    sigma2_x: float  # variance of the true marker given Z
    failure: str | None = None


def calibrate(w: np.ndarray, error_var: np.ndarray, z: np.ndarray | None = None) -> Calibration:
    """Heteroscedastic regression calibration E[X | W, Z] = m(Z) + λ_i (W − m(Z)).

    m(Z) = Z̃α is the least-squares regression of W on (1, Z), unbiased for E[X | Z] since
    E[U | Z] = 0; σ²_X|Z = residual variance − mean σ²_u,i (method of moments); λ_i =
    σ²_X|Z / (σ²_X|Z + σ²_u,i) is each patient's own reliability, so precise measurements
    shrink less (Carroll et al. 2006, ch. 4, best linear approximation). Calibrating on Z
    as well as W is what keeps the adjusted model's other coefficients consistent. A
    non-positive σ²_X|Z (error as large as the spread) leaves nothing to calibrate: failure.
    """
    w = np.asarray(w, dtype=float)
    error_var = np.asarray(error_var, dtype=float)
    n = len(w)
    design = np.ones((n, 1)) if z is None or z.size == 0 else np.column_stack([np.ones(n), z])
    alpha, _, rank, _ = np.linalg.lstsq(design, w, rcond=None)
    fitted = design @ alpha
    resid = w - fitted
    if n - rank < 1:
        return Calibration(w, np.full(n, math.nan), math.nan, f"{n} patients for {rank} calibration terms")
    residual_var = float(resid @ resid) / (n - rank)
    sigma2_x = residual_var - float(error_var.mean())
    if not sigma2_x > 0:
        failure = (
            f"mean error variance {error_var.mean():.3g} not below the residual variance {residual_var:.3g} "
            "of the marker: reliability <= 0"
        )
        return Calibration(w, np.full(n, math.nan), sigma2_x, failure)
    lam = sigma2_x / (sigma2_x + error_var)
    return Calibration(fitted + lam * resid, lam, sigma2_x)


def se_availability(frame: pd.DataFrame, cfg: RiskConfig) -> str | None:
    """Why no correction is possible for the whole cohort, or None when some patient has a finite SE."""
    label = _marker_label(cfg)
    if cfg.marker_se not in frame.columns:
        return f"not available: no {label} uncertainty in patients.parquet (no column {cfg.marker_se})"
    if not frame[cfg.marker_se].notna().any():
        return (
            f"not available: no {label} uncertainty in patients.parquet "
            f"({cfg.marker_se} has no finite value >= 0 among the usable patients)"
        )
    return None


def measurement_error_table(
    fits: list[ModelFit], cox: pd.DataFrame, frame: pd.DataFrame, cfg: RiskConfig
) -> pd.DataFrame:
    """Naive rows (copied from the Cox table) and one row per term and configured correction.

    Only models with the marker as a continuous term are corrected; the groups model is
    not (a misclassified category needs another correction).
    """
    unavailable = se_availability(frame, cfg)
    rows: list[dict] = []
    for fit in fits:
        if fit.name not in CORRECTED_MODELS:
            continue
        naive = cox[cox["model"] == fit.name]
        rows += [
            {**r, "estimator": NAIVE, "ci_method": "model-based (lifelines)", "resamples": 0}
            for r in naive.to_dict("records")
        ]
        terms = naive["term"].tolist()
        for method in cfg.measurement_error:
            rows += correct_model(fit, terms, method, cfg, unavailable)
    table = pd.DataFrame(rows, columns=ME_COLUMNS)
    table["note"] = table["note"].fillna("").astype(str)
    table["ci_method"] = table["ci_method"].fillna("").astype(str)
    table[["n", "events", "resamples"]] = table[["n", "events", "resamples"]].astype("int64")
    return table


def correct_model(
    fit: ModelFit, terms: list[str], method: str, cfg: RiskConfig, unavailable: str | None
) -> list[dict]:
    """Rows of one model refit with the configured correction, or rows whose note says why not."""
    note = unavailable
    if note is None and fit.fitter is None:
        note = f"not corrected: naive model {fit.failure or 'not estimated'}"
    kept = list(fit.fitter.params_.index) if fit.fitter is not None else []
    if note is None and cfg.marker_term not in kept:
        note = f"not corrected: {cfg.marker_term} not estimated in the naive model"
    data = fit.data
    n, events = fit.n, fit.events
    if note is None:
        has_se = data[cfg.marker_se].notna()
        if not has_se.any():
            note = f"not available: no {_marker_label(cfg)} uncertainty for this model's patients"
        else:
            data = data[has_se]
            n, events = len(data), int(data[EVENT].sum())
            note = not_estimable(n, events)
    if note is not None:
        return [_row(fit.name, t, method, n, events, note) for t in terms]
    notes = []
    if n < fit.n:
        notes.append(
            f"{fit.n - n} of {fit.n} patients without a finite {cfg.marker_se}: corrected on the other {n}"
        )
    penalizer = float(fit.rows.loc[fit.rows["term"] == cfg.marker_term, "penalizer"].iloc[0])
    model = _Model(data, kept, list(fit.strata), cfg, penalizer)
    estimate = regression_calibration(model, cfg) if method == RC else simex(model, cfg)
    dropped = ["not corrected: not estimated in the naive model"]
    return [
        _row(fit.name, t, method, n, events, NOTE_SEP.join([*notes, *estimate.notes, *(dropped * (t not in kept))]),
             **estimate.term(t))
        for t in terms
    ]


@dataclass(frozen=True)
class _Model:
    """One naive Cox model's complete cases (all with a finite SE) and how to refit it."""

    data: pd.DataFrame
    terms: list[str]
    strata: list[str]
    cfg: RiskConfig
    penalizer: float

    @property
    def w(self) -> np.ndarray:
        return self.data[self.cfg.marker].to_numpy(dtype=float)

    @property
    def error_var(self) -> np.ndarray:
        return self.data[self.cfg.marker_se].to_numpy(dtype=float) ** 2

    def covariates(self, data: pd.DataFrame) -> np.ndarray:
        """The error-free variables the calibration conditions on: the other terms, and centers when stratified."""
        z = data[[t for t in self.terms if t != self.cfg.marker_term]].to_numpy(dtype=float)
        if self.strata:
            centers = pd.get_dummies(data[CENTER].astype(str), drop_first=True, dtype=float).to_numpy()
            z = np.column_stack([z, centers])
        return z

    def refit(self, data: pd.DataFrame, marker: np.ndarray) -> Any:
        """lifelines refit with the marker replaced; None when it fails or gives non-finite numbers."""
        from lifelines import CoxPHFitter
        from lifelines.exceptions import ConvergenceError, ConvergenceWarning

        table = data[[*self.terms, *self.strata, DURATION, EVENT]].copy()
        table[self.cfg.marker_term] = marker / self.cfg.marker_unit
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                fitter = CoxPHFitter(penalizer=self.penalizer, alpha=self.cfg.alpha).fit(
                    table, DURATION, EVENT, strata=self.strata or None
                )
        except (ConvergenceError, np.linalg.LinAlgError):
            return None
        params = fitter.params_.to_numpy()
        return fitter if np.isfinite(params).all() and np.isfinite(np.diag(fitter.variance_matrix_)).all() else None


@dataclass(frozen=True)
class _Estimate:
    """Corrected coefficients and SEs of a model's terms, with what the table reports beside them."""

    terms: list[str]
    coef: np.ndarray
    se: np.ndarray
    z_crit: float
    reliability: float
    sigma2_x: float
    error_var: float
    ci_method: str
    resamples: int
    notes: tuple[str, ...]

    def term(self, name: str) -> dict[str, Any]:
        common = {
            "reliability": self.reliability,
            "sigma2_x": self.sigma2_x,
            "error_var": self.error_var,
            "ci_method": self.ci_method,
            "resamples": self.resamples,
        }
        if name not in self.terms or not math.isfinite(self.coef[self.terms.index(name)]):
            return common
        i = self.terms.index(name)
        coef, se = float(self.coef[i]), float(self.se[i])
        numbers = {"coef": coef, "hr": math.exp(coef)}
        if math.isfinite(se) and se > 0:
            z = coef / se
            numbers.update(
                se=se,
                hr_lower=math.exp(coef - self.z_crit * se),
                hr_upper=math.exp(coef + self.z_crit * se),
                z=z,
                p=math.erfc(abs(z) / math.sqrt(2.0)),
            )
        return {**common, **numbers}


def regression_calibration(model: _Model, cfg: RiskConfig) -> _Estimate:
    """Refit with E[X | W, Z]; Wald CI with the SE of a patient bootstrap that recalibrates each resample.

    The model-based SE of the refit would ignore that σ²_X|Z and the calibration line are
    estimated; resampling patients and redoing both captures it (Carroll et al. 2006, §4.6
    recommend the bootstrap). The CI is coef ± t·SE_boot (t with B − 1 df for the Monte-Carlo
    noise of SE_boot) rather than percentile: stable with a few hundred resamples, or even
    a few dozen, where percentile tails are not.
    """
    w, error_var = model.w, model.error_var
    calibration = calibrate(w, error_var, model.covariates(model.data))
    empty = np.full(len(model.terms), math.nan)
    base = dict(
        terms=model.terms, z_crit=_z_crit(cfg), error_var=float(error_var.mean()), sigma2_x=calibration.sigma2_x
    )
    if calibration.failure is not None:
        return _Estimate(**base, coef=empty, se=empty, reliability=math.nan, ci_method="", resamples=0,
                         notes=(f"not corrected: {calibration.failure}",))
    fitter = model.refit(model.data, calibration.x_hat)
    reliability = float(calibration.reliability.mean())
    if fitter is None:
        return _Estimate(**base, coef=empty, se=empty, reliability=reliability, ci_method="", resamples=0,
                         notes=("not corrected: the calibrated refit failed",))
    coef = fitter.params_[model.terms].to_numpy(copy=True)
    rng = np.random.default_rng(cfg.seed)
    draws, failed = [], 0
    n = len(model.data)
    for _ in range(cfg.me_bootstrap):
        idx = rng.integers(0, n, n)
        sample = model.data.iloc[idx]
        cal = calibrate(w[idx], error_var[idx], model.covariates(sample))
        refit = model.refit(sample, cal.x_hat) if cal.failure is None else None
        if refit is None:
            failed += 1
        else:
            draws.append(refit.params_[model.terms].to_numpy())
    notes = []
    if failed:
        notes.append(f"{failed} of {cfg.me_bootstrap} bootstrap resamples failed (calibration or refit)")
    if len(draws) >= 2:
        se = np.std(np.asarray(draws), axis=0, ddof=1)
        base["z_crit"] = _t_crit(cfg, len(draws) - 1)
    else:
        se = empty
        notes.append("no CI: " + ("bootstrap disabled" if cfg.me_bootstrap == 0 else "fewer than 2 resamples fit"))
    ci = (
        f"bootstrap SE over {len(draws)} patient resamples (seed {cfg.seed}), each recalibrated and refit; "
        f"coef ± t({max(len(draws) - 1, 0)} df)·SE"
    )
    return _Estimate(**base, coef=coef, se=se, reliability=reliability, ci_method=ci, resamples=len(draws),
                     notes=tuple(notes))


def simex(model: _Model, cfg: RiskConfig) -> _Estimate:
    """SIMEX with each patient's own error variance: W + √ζ·σ_u,i·N(0, 1), quadratic extrapolation to ζ = -1.

    Variance by the simulation-extrapolation method of Stefanski & Cook (1995): at each ζ,
    the mean model variance minus the between-simulation variance, extrapolated the same
    way; no CI where that extrapolates below the naive variance (simulation noise).
    """
    w, error_var = model.w, model.error_var
    empty = np.full(len(model.terms), math.nan)
    base = dict(terms=model.terms, z_crit=_z_crit(cfg), error_var=float(error_var.mean()), sigma2_x=math.nan,
                reliability=math.nan)
    naive = model.refit(model.data, w)
    if naive is None:
        return _Estimate(**base, coef=empty, se=empty, ci_method="", resamples=0,
                         notes=("not corrected: the naive refit failed",))
    start = naive.params_[model.terms].to_numpy(copy=True)
    zetas, means, variances = [0.0], [start], [np.diag(naive.variance_matrix_.loc[model.terms, model.terms])]
    rng = np.random.default_rng(cfg.seed)
    failed = 0
    for zeta in cfg.simex_lambdas:
        coefs, model_vars = [], []
        for _ in range(cfg.simex_simulations):
            noisy = w + np.sqrt(zeta * error_var) * rng.standard_normal(len(w))
            fitter = model.refit(model.data, noisy)
            if fitter is None:
                failed += 1
                continue
            coefs.append(fitter.params_[model.terms].to_numpy())
            model_vars.append(np.diag(fitter.variance_matrix_.loc[model.terms, model.terms]))
        if len(coefs) >= 2:
            zetas.append(zeta)
            means.append(np.mean(coefs, axis=0))
            variances.append(np.mean(model_vars, axis=0) - np.var(coefs, axis=0, ddof=1))
    notes = [f"{failed} simulated refits failed"] if failed else []
    ci = (
        f"SIMEX: quadratic extrapolation to ζ = -1 from ζ = {', '.join(f'{z:g}' for z in zetas)} "
        f"({cfg.simex_simulations} simulations each, seed {cfg.seed}); Stefanski-Cook variance"
    )
    if len(zetas) < 3:
        return _Estimate(**base, coef=empty, se=empty, ci_method=ci, resamples=0,
                         notes=(*notes, "not corrected: fewer than 3 ζ values with fits"))
    coef = _extrapolate(np.asarray(zetas), np.asarray(means))
    var = _extrapolate(np.asarray(zetas), np.asarray(variances))
    # Extrapolating away error cannot make an estimate more precise than the naive one; a smaller
    # variance means the simulation noise dominated the variance extrapolation: no CI then.
    plausible = var >= variances[0]
    if not plausible.all():
        notes.append("no CI where the extrapolated variance fell below the naive one (more simulations needed)")
    se = np.sqrt(np.where(plausible, var, math.nan))
    return _Estimate(**base, coef=coef, se=se, ci_method=ci, resamples=(len(zetas) - 1) * cfg.simex_simulations,
                     notes=tuple(notes))


def _extrapolate(zetas: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Quadratic in ζ fit by least squares to each column, evaluated at ζ = -1 (no measurement error)."""
    quad = np.polyfit(zetas, values, 2)
    return quad[0] - quad[1] + quad[2]


def _z_crit(cfg: RiskConfig) -> float:
    from scipy.stats import norm

    return float(norm.ppf(1 - cfg.alpha / 2))


def _t_crit(cfg: RiskConfig, df: int) -> float:
    """Student-t quantile for a Wald CI whose SE comes from df + 1 bootstrap draws: with few draws the SE
    itself is noisy (chi-square with df degrees of freedom), and z would undercover; with 200 draws t ≈ z."""
    from scipy.stats import t

    return float(t.ppf(1 - cfg.alpha / 2, df))


def _marker_label(cfg: RiskConfig) -> str:
    return "IMV%" if cfg.marker == "imv_pct" else cfg.marker


def _row(model: str, term: str, estimator: str, n: int, events: int, note: str, **numbers: Any) -> dict:
    row: dict[str, Any] = {c: math.nan for c in ME_COLUMNS}
    row.update(model=model, term=term, estimator=estimator, n=n, events=events, note=note,
               ci_method="", resamples=0)
    row.update(numbers)
    return row
