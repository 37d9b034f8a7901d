"""Settings of the risk stage.

Kept apart from the statistics so that the pipeline's configuration model can
embed them without loading pandas' statistical stack, lifelines or matplotlib.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class RiskConfig(BaseModel):
    """Settings of the risk stage; saved in the metadata of every table it writes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    marker: str = Field(
        "imv_pct", min_length=1, description="Column of patients.parquet holding the prognostic marker."
    )
    marker_unit: float = Field(
        10.0, gt=0, description="Marker hazard ratios are per this many units (IMV%: per 10 percentage points)."
    )
    group_cuts: list[float] = Field(
        default_factory=lambda: [0.0, 10.0],
        min_length=1,
        description=(
            "Strictly increasing cut points c0 < c1 < ... < ck of the marker groups: x <= c0 (the reference), "
            "c0 < x < c1, c1 <= x < c2, ..., x >= ck. The default gives IMV% == 0, 0 < IMV% < 10, IMV% >= 10."
        ),
    )
    covariates: list[str] | None = Field(
        None, description="Clinical covariates of the adjusted models; null: the pipeline's configured covariates."
    )
    stratify_by_center: bool = Field(
        False, description="Also fit the multivariable model with one baseline hazard per center (strata)."
    )
    bootstrap: int = Field(200, ge=0, description="Bootstrap resamples of the C-index CIs; 0: no CIs.")
    seed: int = Field(0, ge=0, description="Seed of the bootstrap resampling.")
    alpha: float = Field(
        0.05, gt=0, lt=1, description="CIs are at level 1 - alpha; PH-test p-values below alpha are flagged."
    )
    min_events_per_variable: float = Field(
        10.0, ge=0, description="Fewer events per model term than this: a warning in the report; still fit."
    )
    penalizer: float = Field(0.0, ge=0, description="Ridge penalizer of every Cox fit (lifelines `penalizer`).")
    retry_penalizer: float = Field(
        0.01,
        gt=0,
        description="Ridge penalizer of the single retry after a failed fit (collinearity, 'delta contains nan'); "
        "no retry when not above `penalizer`.",
    )

    measurement_error: list[Literal["regression_calibration", "simex"]] = Field(
        default_factory=lambda: ["regression_calibration"],
        description=(
            "Corrections of the marker's hazard ratio for its measurement error, reported beside the naive "
            "estimate (table measurement_error.parquet, report): regression_calibration (bootstrap CI) and/or "
            "simex; []: none. Needs the per-patient standard error column `marker_se_column`; without it the "
            "correction is skipped and the outputs say so. Validated on 200 simulated cohorts (BENCHMARKS.md): "
            "regression calibration's 95 % CIs covered the true HR in 94 %, SIMEX's in 88.5 % (its quadratic "
            "extrapolant leaves some attenuation)."
        ),
    )
    marker_se_column: str | None = Field(
        None,
        description="Column of patients.parquet with each patient's standard error of the marker (same units); "
        "null: `<marker>_se` (imv_pct_se).",
    )
    me_bootstrap: int = Field(
        200, ge=0, description="Patient resamples of the regression-calibration CI (recalibrate and refit); 0: no CI."
    )
    simex_lambdas: list[float] = Field(
        default_factory=lambda: [0.5, 1.0, 1.5, 2.0],
        min_length=2,
        description="SIMEX: added error variance as multiples ζ of each patient's own; extrapolated to ζ = -1.",
    )
    simex_simulations: int = Field(50, ge=2, description="SIMEX: simulated data sets per ζ.")

    @field_validator("simex_lambdas")
    @classmethod
    def _positive_lambdas(cls, lambdas: list[float]) -> list[float]:
        if not all(math.isfinite(z) and z > 0 for z in lambdas) or len(set(lambdas)) != len(lambdas):
            raise ValueError("simex_lambdas must be distinct, finite and > 0")
        return lambdas

    @field_validator("group_cuts")
    @classmethod
    def _increasing_cuts(cls, cuts: list[float]) -> list[float]:
        if not all(math.isfinite(c) for c in cuts):
            raise ValueError("group_cuts must be finite")
        if any(b <= a for a, b in zip(cuts, cuts[1:])):
            raise ValueError("group_cuts must be strictly increasing")
        return cuts

    @model_validator(mode="after")
    def _covariates_distinct(self) -> "RiskConfig":
        if len(set(self.measurement_error)) != len(self.measurement_error):
            raise ValueError("measurement_error: methods repeat")
        if self.covariates is not None:
            if len(set(self.covariates)) != len(self.covariates):
                raise ValueError("covariates: names repeat")
            if self.marker in self.covariates:
                raise ValueError(f"covariates: the marker {self.marker!r} is not a clinical covariate")
        return self

    @property
    def marker_term(self) -> str:
        """Name of the scaled marker term, e.g. `imv_pct_per_10` (matches the phantom's truth keys)."""
        return f"{self.marker}_per_{self.marker_unit:g}"

    @property
    def marker_se(self) -> str:
        """Column of the marker's per-patient standard error (`imv_pct_se` by default)."""
        return self.marker_se_column or f"{self.marker}_se"

    @property
    def ci_level(self) -> str:
        return f"{100 * (1 - self.alpha):g} %"
