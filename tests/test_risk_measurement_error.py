"""Risk stage: the marker's HR corrected for measurement error (regression calibration, SIMEX).

Cohorts come from `simulate_measured_cohort`: true IMV% known, each patient's error SD known
(Uniform 2–8 points), true HR 1.6 per 10 points; the naive HR is attenuated by about λ ≈ 0.78.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from ctp_steps.risk import (
    ME_COLUMNS,
    MULTIVARIABLE,
    RiskConfig,
    analysis_frame,
    calibrate,
    cox_table,
    fit_cox,
    measurement_error_table,
    run_risk_analysis,
)
from ctp_steps.risk.simulate import simulate_measured_cohort

COVARIATES = ["age", "diabetes"]
TRUE_LOG_HR = math.log(1.6)
UNAVAILABLE = "not available: no IMV% uncertainty in patients.parquet"


def multivariable_table(cohort: pd.DataFrame, cfg: RiskConfig) -> pd.DataFrame:
    """The stage's measurement-error rows of the multivariable model, indexed by (estimator, term)."""
    frame = analysis_frame(cohort, COVARIATES, cfg)
    fit = fit_cox(MULTIVARIABLE, "test", frame, [*COVARIATES, cfg.marker_term], [], cfg)
    table = measurement_error_table([fit], cox_table([fit]), frame, cfg)
    assert list(table.columns) == ME_COLUMNS
    return table.set_index(["estimator", "term"])


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    return simulate_measured_cohort(3000, seed=3)


@pytest.fixture(scope="module")
def corrected(cohort) -> pd.DataFrame:
    cfg = RiskConfig(bootstrap=0, me_bootstrap=5, simex_simulations=5,
                     measurement_error=["regression_calibration", "simex"])
    return multivariable_table(cohort, cfg)


def test_calibration_formula_by_hand():
    """No covariates, constant error variance: λ = (s²_W − σ²_u)/s²_W and E[X|W] = mean + λ(W − mean)."""
    w = np.array([0.0, 10.0, 20.0, 30.0, 40.0])  # mean 20, sample variance 250
    cal = calibrate(w, np.full(5, 50.0))
    assert cal.sigma2_x == pytest.approx(200.0)
    assert cal.reliability == pytest.approx(np.full(5, 0.8))
    assert cal.x_hat == pytest.approx([4.0, 12.0, 20.0, 28.0, 36.0])
    # heteroscedastic: the precise patient keeps its value, the noisy one shrinks most
    het = calibrate(w, np.array([0.0, 50.0, 50.0, 50.0, 200.0]))
    assert het.sigma2_x == pytest.approx(250.0 - 70.0)
    assert het.reliability[0] == 1.0 and het.x_hat[0] == 0.0
    assert het.reliability[4] == pytest.approx(180.0 / 380.0)
    assert het.x_hat[4] == pytest.approx(20.0 + 20.0 * 180.0 / 380.0)


def test_calibration_conditions_on_covariates():
    """With Z, shrinkage is towards the regression of W on Z, with σ²_X|Z from its residuals."""
    z = np.array([0.0, 0.0, 1.0, 1.0])
    w = np.array([1.0, 3.0, 11.0, 13.0])  # group means 2 and 12, residuals ±1, residual variance 4/2 = 2
    cal = calibrate(w, np.full(4, 1.0), z)
    assert cal.sigma2_x == pytest.approx(1.0)
    assert cal.x_hat == pytest.approx([1.5, 2.5, 11.5, 12.5])
    assert calibrate(w, np.full(4, 3.0), z).failure.endswith("reliability <= 0")


def test_regression_calibration_removes_the_attenuation(corrected):
    """Naive log-HR 0.370 vs truth 0.470 (attenuated by ~λ = 0.78); RC 0.488: within 0.02 of the truth."""
    naive = corrected.loc[("naive", "imv_pct_per_10")]
    rc = corrected.loc[("regression_calibration", "imv_pct_per_10")]
    assert naive["coef"] == pytest.approx(0.3704, abs=1e-3)
    assert rc["coef"] == pytest.approx(0.4883, abs=1e-3)
    assert naive["coef"] - TRUE_LOG_HR < -0.09
    assert abs(rc["coef"] - TRUE_LOG_HR) < 0.02
    assert abs(naive["coef"] - TRUE_LOG_HR) - abs(rc["coef"] - TRUE_LOG_HR) > 0.08
    assert not naive["hr_lower"] <= 1.6 <= naive["hr_upper"]
    assert rc["hr_lower"] <= 1.6 <= rc["hr_upper"]
    assert rc["reliability"] == pytest.approx(0.7825, abs=1e-3)
    assert rc["error_var"] == pytest.approx((simulate_measured_cohort(3000, seed=3)["imv_pct_se"] ** 2).mean())
    assert rc["se"] > naive["se"]  # the correction widens the CI
    assert (rc["resamples"], rc["n"], rc["events"], rc["note"]) == (5, 3000, naive["events"], "")
    assert rc["ci_method"].startswith("bootstrap SE over 5 patient resamples (seed 0)")
    t4 = 2.7764451051977987  # Student t, 97.5 % quantile, 4 df: the SE comes from 5 draws
    assert rc["hr_upper"] == pytest.approx(math.exp(rc["coef"] + t4 * rc["se"]), rel=1e-12)
    assert rc["hr_lower"] == pytest.approx(math.exp(rc["coef"] - t4 * rc["se"]), rel=1e-12)
    # the adjusted covariates are recalibrated too: diabetes loses the confounding by the mismeasured marker
    assert corrected.loc[("regression_calibration", "diabetes"), "coef"] < corrected.loc[("naive", "diabetes"), "coef"]


def test_simex_moves_towards_the_truth(corrected):
    naive = corrected.loc[("naive", "imv_pct_per_10")]
    simex = corrected.loc[("simex", "imv_pct_per_10")]
    assert simex["coef"] == pytest.approx(0.4656, abs=2e-3)
    assert naive["coef"] < simex["coef"] < TRUE_LOG_HR + 0.02
    assert simex["hr_lower"] <= 1.6 <= simex["hr_upper"]
    assert simex["resamples"] == 20 and simex["ci_method"].startswith("SIMEX: quadratic extrapolation")


def test_zero_error_variance_leaves_the_estimate_unchanged(cohort):
    table = multivariable_table(cohort.assign(imv_pct_se=0.0), RiskConfig(bootstrap=0, me_bootstrap=2))
    naive, rc = table.loc["naive"], table.loc["regression_calibration"]
    assert rc["coef"].to_numpy() == pytest.approx(naive["coef"].to_numpy(), abs=1e-9)
    assert rc["hr"].to_numpy() == pytest.approx(naive["hr"].to_numpy(), abs=1e-9)
    assert (rc["reliability"] == 1.0).all()


def test_error_as_large_as_the_spread_is_not_corrected(cohort):
    table = multivariable_table(cohort.assign(imv_pct_se=50.0), RiskConfig(bootstrap=0, me_bootstrap=2))
    rc = table.loc["regression_calibration"]
    assert rc["coef"].isna().all()
    assert rc["note"].str.startswith("not corrected: mean error variance 2.5e+03 not below").all()
    assert rc["note"].str.endswith("reliability <= 0").all()


def test_patients_without_se_are_left_out_of_the_correction_only(cohort):
    partial = cohort.copy()
    partial.loc[:99, "imv_pct_se"] = np.nan
    partial.loc[100, "imv_pct_se"] = -1.0  # impossible: treated as missing
    table = multivariable_table(partial, RiskConfig(bootstrap=0, me_bootstrap=2))
    assert (table.loc["naive", "n"] == 3000).all()
    rc = table.loc[("regression_calibration", "imv_pct_per_10")]
    assert rc["n"] == 2899 and math.isfinite(rc["coef"])
    assert rc["note"] == "101 of 3000 patients without a finite imv_pct_se: corrected on the other 2899"


# --- through the whole stage --------------------------------------------------------------------


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    return simulate_measured_cohort(400, seed=5)


def run(patients: pd.DataFrame, out: Path, cfg: RiskConfig):
    summary = run_risk_analysis(patients, COVARIATES, cfg, out)
    me = pd.read_parquet(out / "measurement_error.parquet")
    assert list(me.columns) == ME_COLUMNS
    estimated = np.isfinite(me[["coef", "hr"]].to_numpy()).all(axis=1)
    assert (estimated | (me["note"] != "")).all()  # no silent NaN
    return summary, pd.read_parquet(out / "cox.parquet"), me, (out / "report.md").read_text()


FAST = RiskConfig(bootstrap=0, me_bootstrap=4)


def test_report_states_naive_and_corrected_estimates(small, tmp_path):
    summary, cox, me, report = run(small, tmp_path, FAST)
    assert list(dict.fromkeys(me["model"])) == ["univariable", "multivariable"]
    assert list(dict.fromkeys(me["estimator"])) == ["naive", "regression_calibration"]
    marker = me[me["term"] == "imv_pct_per_10"].set_index(["model", "estimator"])
    naive_cox = cox[(cox["model"] == "multivariable") & (cox["term"] == "imv_pct_per_10")].iloc[0]
    assert marker.loc[("multivariable", "naive"), "hr"] == naive_cox["hr"]  # the naive row is the Cox table's
    assert "## Measurement error in `imv_pct`" in report
    for model in ["univariable", "multivariable"]:
        for estimator in ["naive", "regression_calibration"]:
            r = marker.loc[(model, estimator)]
            ci = f"{r['hr_lower']:.2f}–{r['hr_upper']:.2f}"
            assert f"| {model} | {estimator} | {r['hr']:.2f} | {ci} |" in report
    rc = marker.loc[("multivariable", "regression_calibration")]
    assert rc["hr"] > naive_cox["hr"]
    assert summary.format().splitlines()[-1] == (
        "HR of imv_pct_per_10 corrected for measurement error (regression_calibration, multivariable Cox): "
        f"{rc['hr']:.2f} (95 % CI {rc['hr_lower']:.2f}-{rc['hr_upper']:.2f})"
    )


@pytest.mark.parametrize(
    "variant, reason",
    [
        ("absent", f"{UNAVAILABLE} (no column imv_pct_se)"),
        ("all NaN", f"{UNAVAILABLE} (imv_pct_se has no finite value >= 0 among the usable patients)"),
    ],
)
def test_without_se_the_correction_is_skipped_and_naive_unchanged(small, tmp_path, variant, reason):
    with_se = run(small, tmp_path / "with", FAST)
    patients = small.drop(columns="imv_pct_se") if variant == "absent" else small.assign(imv_pct_se=np.nan)
    summary, cox, me, report = run(patients, tmp_path / "without", FAST)
    pd.testing.assert_frame_equal(cox, with_se[1])  # the naive estimates do not depend on the SE column
    rc = me[me["estimator"] == "regression_calibration"]
    assert len(rc) == 1 + 3 and rc["hr"].isna().all() and (rc["note"] == reason).all()
    naive = me[me["estimator"] == "naive"]
    pd.testing.assert_frame_equal(
        naive.reset_index(drop=True), with_se[2][with_se[2]["estimator"] == "naive"].reset_index(drop=True)
    )
    assert f"| multivariable | regression_calibration | – | – | – | 400 |" in report
    assert reason in report
    assert summary.format().splitlines()[-1].endswith(f"(regression_calibration, multivariable Cox): {reason}")


def test_no_correction_requested(small, tmp_path):
    summary, cox, me, report = run(small, tmp_path, RiskConfig(bootstrap=0, measurement_error=[]))
    assert set(me["estimator"]) == {"naive"}
    assert "No correction requested (`risk.measurement_error: []`)" in report
    assert "corrected for measurement error" not in summary.format()


def test_stratified_model_calibrates_within_centers(small, tmp_path):
    _, _, me, _ = run(small, tmp_path, RiskConfig(bootstrap=0, me_bootstrap=3, stratify_by_center=True))
    strat = me[(me["model"] == "multivariable_center_strata") & (me["term"] == "imv_pct_per_10")]
    assert list(strat["estimator"]) == ["naive", "regression_calibration"]
    naive, rc = strat["coef"].to_numpy()
    assert rc > naive > 0 and strat["note"].tolist() == ["", ""]


@pytest.mark.parametrize(
    "bad",
    [{"measurement_error": ["regression_calibration", "regression_calibration"]},
     {"measurement_error": ["deconvolution"]}, {"simex_lambdas": [1.0, -1.0]}, {"me_bootstrap": -1}],
)
def test_config_rejects(bad):
    with pytest.raises(ValidationError):
        RiskConfig(**bad)


def test_term_dropped_in_the_naive_model_is_explained(small, tmp_path):
    _, _, me, _ = run(small.assign(diabetes=0.0), tmp_path, FAST)
    rc = me[(me["estimator"] == "regression_calibration") & (me["model"] == "multivariable")].set_index("term")
    assert rc.loc["diabetes", "note"] == "not corrected: not estimated in the naive model"
    assert math.isnan(rc.loc["diabetes", "hr"]) and math.isfinite(rc.loc["imv_pct_per_10", "hr"])
