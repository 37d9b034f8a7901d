"""Table-level cohorts for checking the risk stage without images: the phantom's outcome model, and
cohorts whose marker carries a known measurement error (for the measurement-error correction)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from ctp_steps.phantom.outcomes import OutcomeParams


def simulate_table_cohort(n: int, outcome: OutcomeParams, seed: int) -> pd.DataFrame:
    """Table-level patients from the phantom's outcome model (no images), for checking the risk stage.

    IMV% follows an ischemia prior: about 45 % of patients have none (a point mass at 0);
    the rest draw 40·Beta(1.3, 4) %, right-skewed up to 40 %. Ischemia is mildly more
    likely with diabetes, male sex and age, so the adjusted and unadjusted HRs differ.
    """
    from ctp_steps.phantom.outcomes import draw_covariates, draw_outcomes

    rng = np.random.default_rng(seed)
    cov = draw_covariates(rng, n, outcome)
    logit = -0.1 + 0.4 * cov["diabetes"] + 0.3 * cov["sex"] + 0.02 * (cov["age"] - outcome.age_mean)
    ischemic = rng.random(n) < 1.0 / (1.0 + np.exp(-logit.to_numpy()))
    imv = np.where(ischemic, np.maximum(40.0 * rng.beta(1.3, 4.0, n), 0.1), 0.0).round(1)
    outcomes = draw_outcomes(rng, cov, imv, outcome)
    return pd.DataFrame(
        {
            "patient_id": [f"SIM{i:05d}" for i in range(n)],
            "center": rng.choice(["SIM-A", "SIM-B", "SIM-C", "SIM-D"], n),
            "status": "ok",
            "reason": None,
            **cov.astype(float),
            "imv_pct": imv,
            **outcomes,
        }
    )


def simulate_measured_cohort(
    n: int,
    seed: int,
    hr_per_10: float = 1.6,
    error_sd: tuple[float, float] = (2.0, 8.0),
    weibull_shape: float = 1.2,
    weibull_scale_days: float = 9000.0,
    followup_days: tuple[float, float] = (365.0, 1825.0),
) -> pd.DataFrame:
    """Table-level patients whose IMV% is measured with known, heteroscedastic error; for the correction.

    Independent of the phantom's ranges on purpose: true IMV% X = 60·Beta(a, 5) % with
    a = 2 + 0.8·diabetes + 0.03·(age − 62), so X spreads over 0–60 % and depends on the
    covariates (the calibration must condition on them). Each patient's error SD is
    Uniform(error_sd), independent of X; measured W = X + SD·N(0, 1) (classical error, not
    clipped at 0). MACE: Weibull PH with log-HR log(hr_per_10) per 10 points of X,
    log(1.3) per 10 years of age, log(1.5) for diabetes; uniform administrative censoring.
    Columns: imv_pct (W), imv_pct_se, imv_pct_ci_low/high (W ± 1.96·SE), imv_pct_true (X).
    """
    rng = np.random.default_rng(seed)
    age = np.clip(rng.normal(62.0, 9.0, n), 30, 95).round(0)
    diabetes = (rng.random(n) < 0.27).astype(float)
    x = 60.0 * rng.beta(2.0 + 0.8 * diabetes + 0.03 * (age - 62.0), 5.0)
    sd = rng.uniform(error_sd[0], error_sd[1], n)
    w = x + sd * rng.standard_normal(n)
    lp = np.log(hr_per_10) * x / 10.0 + np.log(1.3) * (age - 62.0) / 10.0 + np.log(1.5) * diabetes
    event_time = weibull_scale_days * (-np.log(rng.random(n)) / np.exp(lp)) ** (1.0 / weibull_shape)
    censor = rng.uniform(followup_days[0], followup_days[1], n)
    return pd.DataFrame(
        {
            "patient_id": [f"MEC{i:05d}" for i in range(n)],
            "center": rng.choice(["SIM-A", "SIM-B", "SIM-C"], n),
            "status": "ok",
            "reason": None,
            "age": age,
            "diabetes": diabetes,
            "imv_pct": w,
            "imv_pct_se": sd,
            "imv_pct_ci_low": w - 1.96 * sd,
            "imv_pct_ci_high": w + 1.96 * sd,
            "imv_pct_true": x,
            "followup_days": np.minimum(event_time, censor),
            "event": (event_time <= censor).astype(int),
        }
    )
