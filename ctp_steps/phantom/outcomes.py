"""Clinical covariates and MACE outcomes drawn from a known Cox model.

The phantom's outcomes follow a stated proportional-hazards model in which IMV%
carries a known hazard ratio, so the risk stage can be checked against truth:
    h(t | x) = h0(t) · exp(β_age·(age−60)/10 + β_sex·male + β_dm·diabetes
                           + β_htn·hypertension + β_smk·smoking + log(HR_imv)·IMV%/10)
with a Weibull baseline h0(t) = (k/λ)·(t/λ)^(k−1). Follow-up ends at the first
of event, administrative censoring (uniform accrual window) or random drop-out.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator


class OutcomeParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hr_imv_per_10pct: float = Field(1.8, gt=0, description="True hazard ratio of MACE per 10 % IMV.")
    hr_age_per_10y: float = Field(1.35, gt=0)
    hr_male: float = Field(1.25, gt=0)
    hr_diabetes: float = Field(1.5, gt=0)
    hr_hypertension: float = Field(1.2, gt=0)
    hr_smoking: float = Field(1.3, gt=0)
    weibull_shape: float = Field(1.2, gt=0, description="Baseline hazard shape k.")
    weibull_scale_days: float = Field(5000.0, gt=0, description="Baseline hazard scale λ (days).")
    followup_min_days: float = Field(730.0, ge=0, description="Shortest administrative follow-up.")
    followup_max_days: float = Field(2190.0, gt=0, description="Longest administrative follow-up.")
    dropout_rate_per_year: float = Field(0.03, ge=0, description="Random loss to follow-up.")
    age_mean: float = 62.0
    age_sd: float = 9.0
    p_male: float = Field(0.62, ge=0, le=1)
    p_diabetes: float = Field(0.27, ge=0, le=1)
    p_hypertension: float = Field(0.58, ge=0, le=1)
    p_smoking: float = Field(0.3, ge=0, le=1)

    @model_validator(mode="after")
    def _followup_range(self) -> "OutcomeParams":
        if self.followup_min_days > self.followup_max_days:
            raise ValueError("followup_min_days must not exceed followup_max_days")
        return self

    def log_hazard_ratios(self) -> dict[str, float]:
        """True log-HRs per model term (IMV% per 10 points, age per 10 years)."""
        return {
            "imv_pct_per_10": math.log(self.hr_imv_per_10pct),
            "age_per_10y": math.log(self.hr_age_per_10y),
            "sex": math.log(self.hr_male),
            "diabetes": math.log(self.hr_diabetes),
            "hypertension": math.log(self.hr_hypertension),
            "smoking": math.log(self.hr_smoking),
        }


def draw_covariates(rng: np.random.Generator, n: int, params: OutcomeParams) -> pd.DataFrame:
    """Age (years) and binary risk factors (sex: 1 = male) for n patients."""
    return pd.DataFrame(
        {
            "age": np.clip(rng.normal(params.age_mean, params.age_sd, n), 30, 95).round(0),
            "sex": (rng.random(n) < params.p_male).astype(int),
            "diabetes": (rng.random(n) < params.p_diabetes).astype(int),
            "hypertension": (rng.random(n) < params.p_hypertension).astype(int),
            "smoking": (rng.random(n) < params.p_smoking).astype(int),
        }
    )


def linear_predictor(covariates: pd.DataFrame, imv_pct: np.ndarray, params: OutcomeParams) -> np.ndarray:
    b = params.log_hazard_ratios()
    return (
        b["age_per_10y"] * (covariates["age"].to_numpy() - 60.0) / 10.0
        + b["sex"] * covariates["sex"].to_numpy()
        + b["diabetes"] * covariates["diabetes"].to_numpy()
        + b["hypertension"] * covariates["hypertension"].to_numpy()
        + b["smoking"] * covariates["smoking"].to_numpy()
        + b["imv_pct_per_10"] * np.asarray(imv_pct, dtype=float) / 10.0
    )


def draw_outcomes(
    rng: np.random.Generator, covariates: pd.DataFrame, imv_pct: np.ndarray, params: OutcomeParams
) -> pd.DataFrame:
    """Follow-up (days) and MACE indicator by inverse-transform sampling of the Weibull PH model."""
    n = len(covariates)
    lp = linear_predictor(covariates, imv_pct, params)
    u = rng.random(n)
    event_time = params.weibull_scale_days * (-np.log(u) / np.exp(lp)) ** (1.0 / params.weibull_shape)
    admin = rng.uniform(params.followup_min_days, params.followup_max_days, n)
    dropout = (
        rng.exponential(365.25 / params.dropout_rate_per_year, n)
        if params.dropout_rate_per_year > 0
        else np.full(n, np.inf)
    )
    censor = np.minimum(admin, dropout)
    return pd.DataFrame(
        {
            "followup_days": np.minimum(event_time, censor).round(1),
            "event": (event_time <= censor).astype(int),
        }
    )
