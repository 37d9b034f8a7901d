"""Risk stage: recovery of the phantom's known hazard model, table contents, and every guard rail."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from lifelines.exceptions import ConvergenceError
from lifelines.utils import concordance_index
from pydantic import ValidationError

from ctp_steps.phantom.outcomes import OutcomeParams
from ctp_steps.risk import (
    CONCORDANCE_COLUMNS,
    COX_COLUMNS,
    PH_COLUMNS,
    RiskConfig,
    group_label,
    marker_groups,
    merge_groups,
    run_risk_analysis,
    simulate_table_cohort,
)

COVARIATES = ["age", "sex", "diabetes", "hypertension", "smoking"]
MODELS = ["univariable", "groups", "clinical", "multivariable"]
OUTPUTS = ["cox.parquet", "concordance.parquet", "ph_test.parquet", "km.png", "forest.png", "report.md"]
FAST = RiskConfig(bootstrap=10)


def run(patients: pd.DataFrame, out: Path, cfg: RiskConfig = FAST, covariates: list[str] = COVARIATES):
    """Run the stage and check the contract every run must meet: all outputs, no unexplained NaN."""
    summary = run_risk_analysis(patients, covariates, cfg, out)
    for name in OUTPUTS:
        assert (out / name).stat().st_size > 0, name
    assert (out / "km.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cox = pd.read_parquet(out / "cox.parquet")
    conc = pd.read_parquet(out / "concordance.parquet")
    ph = pd.read_parquet(out / "ph_test.parquet")
    assert list(cox.columns) == COX_COLUMNS
    assert list(conc.columns) == CONCORDANCE_COLUMNS
    assert list(ph.columns) == PH_COLUMNS
    estimated = np.isfinite(cox[["coef", "hr", "hr_lower", "hr_upper", "p"]].to_numpy()).all(axis=1)
    assert (estimated | (cox["note"] != "")).all(), cox[~estimated & (cox["note"] == "")]
    c_ok = np.isfinite(conc[["c_index", "c_lower", "c_upper"]].to_numpy()).all(axis=1)
    assert (c_ok | (conc["note"] != "")).all()
    assert (np.isfinite(ph["p"]) | (ph["note"] != "")).all()
    return summary, cox, conc, ph, (out / "report.md").read_text()


def rows(cox: pd.DataFrame, model: str) -> pd.DataFrame:
    return cox[cox["model"] == model].set_index("term")


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    return simulate_table_cohort(80, OutcomeParams(), seed=11)


# --- statistical validation against the phantom's outcome model -------------------------------


@pytest.fixture(scope="module")
def validation(tmp_path_factory):
    cohort = simulate_table_cohort(4000, OutcomeParams(), seed=7)
    out = tmp_path_factory.mktemp("validation")
    cfg = RiskConfig(bootstrap=20, stratify_by_center=True)
    return cohort, cfg, run(cohort, out, cfg)


def test_simulated_cohort_follows_the_ischemia_prior():
    cohort = simulate_table_cohort(4000, OutcomeParams(), seed=3)
    zero = (cohort["imv_pct"] == 0).mean()
    assert 0.40 < zero < 0.50
    ischemic = cohort.loc[cohort["imv_pct"] > 0, "imv_pct"]
    assert ischemic.max() <= 40 and ischemic.mean() > ischemic.median()  # right-skewed, bounded
    assert set(cohort["status"]) == {"ok"} and cohort["event"].isin([0, 1]).all()


def test_multivariable_hazard_ratios_cover_the_truth(validation):
    """Marker: the 95 % CI must cover the true HR. Covariates: every estimate within 3 SE of
    the truth (a 99.7 % band) and at least 4 of the 5 95 % CIs cover it."""
    _, cfg, (_, cox, _, _, _) = validation
    truth = OutcomeParams().log_hazard_ratios()
    truth_per_unit = {
        "age": truth["age_per_10y"] / 10.0,  # the stage reports age per year
        **{c: truth[c] for c in ["sex", "diabetes", "hypertension", "smoking"]},
    }
    multi = rows(cox, "multivariable")
    marker = multi.loc[cfg.marker_term]
    assert marker["hr_lower"] <= OutcomeParams().hr_imv_per_10pct <= marker["hr_upper"]
    covered = 0
    for term, beta in truth_per_unit.items():
        r = multi.loc[term]
        assert abs(r["coef"] - beta) < 3 * r["se"], term
        covered += r["hr_lower"] <= math.exp(beta) <= r["hr_upper"]
    assert covered >= 4
    strat = rows(cox, "multivariable_center_strata").loc[cfg.marker_term]
    assert strat["hr_lower"] <= OutcomeParams().hr_imv_per_10pct <= strat["hr_upper"]


def test_c_index_equals_lifelines_concordance_index(validation):
    cohort, cfg, (summary, _, conc, _, _) = validation
    data = cohort[COVARIATES + ["followup_days", "event"]].assign(imv_pct_per_10=cohort["imv_pct"] / 10)
    cph = CoxPHFitter().fit(data, "followup_days", "event")
    expected = concordance_index(data["followup_days"], -cph.predict_partial_hazard(data), data["event"])
    c = conc.set_index("model")
    assert abs(c.loc["multivariable", "c_index"] - expected) < 1e-9
    assert abs(c.loc["multivariable", "c_index"] - cph.concordance_index_) < 1e-9
    assert summary.c_index == c.loc["multivariable", "c_index"]
    clinical = CoxPHFitter().fit(data.drop(columns="imv_pct_per_10"), "followup_days", "event")
    risk = -clinical.predict_partial_hazard(data)
    gain = expected - concordance_index(data["followup_days"], risk, data["event"])
    assert abs(c.loc["multivariable_minus_clinical", "c_index"] - gain) < 1e-9
    assert (c["c_lower"] <= c["c_index"]).all() and (c["c_index"] <= c["c_upper"]).all()
    assert (c["bootstrap"] == 20).all()


def test_tables_hold_every_model_and_term(validation):
    _, cfg, (_, cox, conc, ph, _) = validation
    assert list(dict.fromkeys(cox["model"])) == [*MODELS, "multivariable_center_strata"]
    assert list(rows(cox, "univariable").index) == ["imv_pct_per_10"]
    assert list(rows(cox, "groups").index) == ["imv_pct <= 0", "0 < imv_pct < 10", "imv_pct >= 10"]
    assert list(rows(cox, "clinical").index) == COVARIATES
    assert list(rows(cox, "multivariable").index) == [*COVARIATES, "imv_pct_per_10"]
    reference = rows(cox, "groups").loc["imv_pct <= 0"]
    assert (reference["hr"], reference["coef"], reference["note"]) == (1.0, 0.0, "reference group")
    assert (cox.loc[cox["term"] != "imv_pct <= 0", "note"] == "").all()
    assert (cox["n"] == 4000).all() and (cox["penalizer"].fillna(0) == 0).all()
    assert list(conc["model"]) == [*MODELS, "multivariable_center_strata", "multivariable_minus_clinical"]
    assert set(ph["model"]) == {*MODELS, "multivariable_center_strata"}
    assert set(ph.loc[ph["model"] == "groups", "term"]) == {"0 < imv_pct < 10", "imv_pct >= 10"}


def test_report_and_summary_state_the_numbers(validation):
    cohort, _, (summary, cox, _, _, report) = validation
    events = int(cohort["event"].sum())
    assert "| in the cohort table | 4000 |" in report
    assert f"| events (MACE) among usable | {events} |" in report
    assert "| excluded by the pipeline | 0 |" in report
    marker = rows(cox, "multivariable").loc["imv_pct_per_10"]
    ci = f"{marker['hr_lower']:.2f}–{marker['hr_upper']:.2f}"
    row = f"| multivariable | `imv_pct_per_10` | {marker['hr']:.2f} | {ci} | < 0.001 | 4000 | {events} |"
    assert row in report
    groups = cohort["imv_pct"].pipe(lambda x: [(x == 0).sum(), ((x > 0) & (x < 10)).sum(), (x >= 10).sum()])
    for label, n in zip(["imv_pct <= 0", "0 < imv_pct < 10", "imv_pct >= 10"], groups):
        assert f"| `{label}` | {n} |" in report
    assert "Log-rank test across the non-empty groups" in report
    assert (summary.n_patients, summary.n_usable, summary.n_excluded, summary.n_events) == (4000, 4000, 0, events)
    lines = summary.format().splitlines()
    assert lines[0] == f"patients: 4000 (4000 usable, 0 excluded, 0 failed), events: {events}"
    assert "## Failed patients" not in report
    hr = f"{marker['hr']:.2f} (95 % CI {ci.replace('–', '-')})"
    assert lines[1] == f"HR of imv_pct_per_10 (multivariable Cox): {hr}"
    assert lines[3] == f"report: {summary.report_path}"


# --- groups -------------------------------------------------------------------------------------


def test_marker_groups_semantics():
    values = [0.0, -1.0, 0.05, 9.99, 10.0, 35.0, np.nan]
    assert marker_groups(values, [0.0, 10.0]).tolist() == [0, 0, 1, 1, 2, 2, -1]
    assert marker_groups([10.0, 15.0, 20.0], [0.0, 10.0, 20.0]).tolist() == [2, 2, 3]
    labels = [group_label("imv_pct", [0.0, 10.0, 20.0], g) for g in range(4)]
    assert labels == ["imv_pct <= 0", "0 < imv_pct < 10", "10 <= imv_pct < 20", "imv_pct >= 20"]
    assert group_label("imv_pct", [0.0, 10.0, 20.0], 1, 2) == "0 < imv_pct < 20"
    assert group_label("imv_pct", [0.0, 10.0], 1, 2) == "imv_pct > 0"
    assert group_label("imv_pct", [5.0], 1) == "imv_pct > 5"


def test_groups_without_events_merge_into_a_neighbour():
    blocks, notes = merge_groups("imv_pct", [0.0, 10.0], [5, 4, 3], [1, 0, 2])
    assert blocks == [[0, 1], [2]]
    assert notes == {0: ["merged 0 < imv_pct < 10 into imv_pct <= 0: no events in 0 < imv_pct < 10"]}
    blocks, notes = merge_groups("imv_pct", [0.0, 10.0], [5, 4, 0], [0, 2, 0])
    assert blocks == [[0, 1]]
    assert notes == {0: ["merged imv_pct <= 0 into 0 < imv_pct < 10: no events in imv_pct <= 0"]}


def test_group_without_events_is_merged_in_the_cox_table(small, tmp_path):
    cohort = small.copy()
    cohort.loc[cohort["imv_pct"] >= 10, "event"] = 0
    _, cox, _, _, report = run(cohort, tmp_path)
    groups = rows(cox, "groups")
    assert list(groups.index) == ["imv_pct <= 0", "imv_pct > 0"]
    note = "merged imv_pct >= 10 into 0 < imv_pct < 10: no events in imv_pct >= 10"
    assert groups.loc["imv_pct > 0", "note"].endswith(note)
    assert np.isfinite(groups.loc["imv_pct > 0", "hr_upper"])
    assert f"- groups, `imv_pct > 0`: {note}" in report


def test_empty_reference_group_is_omitted(small, tmp_path):
    _, cox, _, _, report = run(small.assign(imv_pct=small["imv_pct"] + 1.0), tmp_path)
    groups = rows(cox, "groups")
    assert list(groups.index) == ["0 < imv_pct < 10", "imv_pct >= 10", "imv_pct <= 0"]
    assert groups.loc["0 < imv_pct < 10", "note"].startswith("reference group")
    assert groups.loc["imv_pct <= 0", "note"] == "omitted: no patients in this group"
    assert "| `imv_pct <= 0` | 0 | 0 |" in report
    assert "- groups, `imv_pct <= 0`: omitted: no patients in this group" in report


# --- guard rails --------------------------------------------------------------------------------


def test_exclusions_and_complete_cases_are_counted(small, tmp_path):
    cohort = small.copy()
    cohort.loc[:3, ["status", "reason"]] = ["excluded", "convert: 5 frames, at least 8 needed"]
    cohort.loc[4:5, "status"] = "excluded"
    cohort.loc[6, ["status", "reason", "excluded_at"]] = ["failed", "mbf: failed with ValueError: a|b\nc", "mbf"]
    cohort.loc[10:14, "imv_pct"] = np.nan
    cohort.loc[20, "followup_days"] = np.nan
    summary, cox, _, _, report = run(cohort, tmp_path)
    assert (summary.n_patients, summary.n_excluded, summary.n_failed, summary.n_usable) == (80, 6, 1, 72)
    assert summary.format().splitlines()[0].startswith("patients: 80 (72 usable, 6 excluded, 1 failed)")
    assert "| failed (unexpected error; see below) | 1 |" in report
    failed_row = f"| {cohort.loc[6, 'center']} | {cohort.loc[6, 'patient_id']} | mbf | mbf: failed with ValueError: a\\|b c |"
    assert failed_row in report  # one line, the pipe escaped: the table stays a table
    assert "- 1 patient(s) failed with an unexpected error (section Failed patients)" in report
    assert "| excluded: convert: 5 frames, at least 8 needed | 4 |" in report
    assert "| excluded: no reason recorded | 2 |" in report
    assert "| status ok but follow-up or event missing | 1 |" in report
    assert "| usable (status ok, outcome known) | 72 |" in report
    assert rows(cox, "clinical")["n"].iloc[0] == 72 and rows(cox, "multivariable")["n"].iloc[0] == 67
    assert "5 usable patients excluded as incomplete (imv_pct missing for 5)" in report
    assert "**clinical** (clinical covariates only): 72 patients" in report


def test_low_events_per_variable_warns_and_still_fits(small, tmp_path):
    summary, cox, _, _, report = run(small, tmp_path)
    events = int(small["event"].sum())
    warning = (
        f"{events} events for 6 terms ({events / 6:.1f} events per variable, below 10), "
        "estimates may be unstable"
    )
    assert f"- multivariable: {warning}" in report
    multi = rows(cox, "multivariable")
    assert (multi["note"] == warning).all()
    assert np.isfinite(multi[["hr", "hr_lower", "hr_upper"]].to_numpy()).all()
    assert math.isfinite(summary.hr) and math.isfinite(summary.c_index)


def test_zero_events_writes_explained_tables(small, tmp_path):
    summary, cox, conc, ph, report = run(small.assign(event=0), tmp_path)
    note = "not estimated: no events among the 80 complete cases"
    assert (cox["note"] == note).all() and cox["hr"].isna().all()
    assert list(dict.fromkeys(cox["model"])) == MODELS
    assert (conc.loc[conc["model"] != "multivariable_minus_clinical", "note"] == note).all()
    assert (ph["note"] == f"not tested: {note}").all()
    assert "- no events among the usable patients: no hazard ratio or C-index can be estimated" in report
    assert "log-rank not tested: no events" in report
    assert summary.format().splitlines()[1:3] == [
        f"HR of imv_pct_per_10 (multivariable Cox): {note}",
        "C-index (multivariable): not estimated",
    ]


def test_fewer_than_two_usable_patients(small, tmp_path):
    cohort = small.head(4).assign(status=["ok", "excluded", "excluded", "excluded"], event=1)
    summary, cox, _, _, report = run(cohort, tmp_path)
    assert (summary.n_usable, summary.n_excluded) == (1, 3)
    note = "not estimated: 1 complete case, at least 2 needed"
    assert (rows(cox, "multivariable")["note"] == note).all()
    assert "- only 1 usable patient(s): no model can be estimated" in report


def test_covariate_without_variance_is_dropped(small, tmp_path):
    _, cox, _, ph, report = run(small.assign(smoking=0.0), tmp_path)
    for model in ["clinical", "multivariable"]:
        r = rows(cox, model)
        assert r.loc["smoking", "note"].endswith("dropped: no variance (all 80 values = 0)")
        assert np.isnan(r.loc["smoking", "hr"])
        assert np.isfinite(r.drop(index="smoking")[["hr", "hr_lower", "hr_upper"]].to_numpy()).all()
    assert "smoking" not in set(ph["term"])
    assert "- clinical, `smoking`: dropped: no variance (all 80 values = 0)" in report


def test_collinear_covariates_are_refit_with_a_penalizer(small, tmp_path):
    cohort = small.assign(age_copy=small["age"])
    _, cox, _, _, report = run(cohort, tmp_path, covariates=[*COVARIATES, "age_copy"])
    retry = (
        "refit with penalizer 0.01 after the fit with penalizer 0 failed: "
        "Convergence halted due to matrix inversion problems"
    )
    clinical = rows(cox, "clinical")
    assert clinical["note"].str.contains(retry, regex=False).all()
    assert (clinical["penalizer"] == 0.01).all()
    assert np.isfinite(clinical[["hr", "hr_lower", "hr_upper"]].to_numpy()).all()
    assert f"- clinical: {retry}" in report
    assert (rows(cox, "univariable")["penalizer"] == 0.0).all()


def test_fit_failure_is_recorded(small, tmp_path, monkeypatch):
    def fail(self, *args, **kwargs):
        raise ConvergenceError("delta contains nan value(s). Convergence halted. Please see the following tips")

    monkeypatch.setattr(CoxPHFitter, "fit", fail)
    summary, cox, conc, _, report = run(small, tmp_path)
    note = "not estimated: fit failed with penalizer 0 and 0.01 (delta contains nan value(s))"
    assert rows(cox, "multivariable")["note"].str.endswith(f"estimates may be unstable; {note}").all()
    assert conc.set_index("model").loc["clinical", "note"] == note
    assert f"- multivariable: {note}" in report
    assert summary.format().splitlines()[1] == f"HR of imv_pct_per_10 (multivariable Cox): {note}"


def test_marker_missing_everywhere_still_fits_the_clinical_model(small, tmp_path):
    summary, cox, conc, _, report = run(small.assign(imv_pct=np.nan), tmp_path)
    assert np.isfinite(rows(cox, "clinical")["hr"]).all()
    assert (rows(cox, "multivariable")["note"] == "not estimated: 0 complete cases, at least 2 needed").all()
    assert conc.set_index("model").loc["multivariable_minus_clinical", "note"] == (
        "multivariable not estimated: 0 complete cases, at least 2 needed"
    )
    assert "80 usable patients excluded as incomplete (imv_pct missing for 80)" in report
    assert "log-rank not tested: fewer than two groups with patients" in report
    assert summary.n_usable == 80 and math.isnan(summary.hr)


def test_bootstrap_disabled_is_noted(small, tmp_path):
    _, _, conc, _, _ = run(small, tmp_path, RiskConfig(bootstrap=0))
    assert (conc["note"] == "no bootstrap CI: bootstrap disabled").all()
    assert np.isfinite(conc["c_index"]).all() and conc["c_lower"].isna().all()


# --- inputs and configuration -------------------------------------------------------------------


def test_missing_columns_fail_loudly(small, tmp_path):
    with pytest.raises(ValueError, match="^patients table lacks columns: imv_pct$"):
        run_risk_analysis(small.drop(columns="imv_pct"), COVARIATES, FAST, tmp_path)


def test_impossible_outcomes_fail_loudly(small, tmp_path):
    cohort = small.copy()
    cohort.loc[0, "event"] = 2
    with pytest.raises(ValueError, match="violated by: SIM00000$"):
        run_risk_analysis(cohort, COVARIATES, FAST, tmp_path)


def test_config_overrides_covariates(small, tmp_path):
    _, cox, _, _, _ = run(small, tmp_path, RiskConfig(bootstrap=0, covariates=["age", "diabetes"]))
    assert list(rows(cox, "clinical").index) == ["age", "diabetes"]


@pytest.mark.parametrize(
    "bad",
    [
        {"group_cuts": [10.0, 0.0]},
        {"group_cuts": []},
        {"covariates": ["age", "age"]},
        {"covariates": ["imv_pct"]},
        {"alpha": 1.0},
        {"unknown": 1},
    ],
)
def test_config_rejects(bad):
    with pytest.raises(ValidationError):
        RiskConfig(**bad)


def test_config_fields_are_described():
    assert all(f.description for f in RiskConfig.model_fields.values())
