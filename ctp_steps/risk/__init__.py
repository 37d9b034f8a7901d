"""Cohort risk models of MACE: Cox regression, concordance, PH checks, Kaplan–Meier, a report.

Every estimate comes from lifelines. Only patients with status `ok`, a known
outcome and complete data for the model at hand enter a fit. The stage never
stops on a degenerate cohort and never writes a silent NaN: what cannot be
estimated is written as a row whose `note` says why, and the report repeats it.

One module per concern: `config` (settings), `cohort` (who enters), `cox`,
`concordance`, `km`, `measurement_error` (naive vs corrected marker HRs), `plots`,
`report`, `simulate` (table cohorts for tests)
and `analysis` (the whole stage). This package re-exports their public names.
lifelines and matplotlib are imported inside the functions that use them, so
importing the package (as the pipeline's configuration does) stays light.
"""

from ctp_steps.risk.analysis import run_risk_analysis
from ctp_steps.risk.cohort import CENTER, DURATION, EVENT, CohortCounts, analysis_frame, cohort_counts
from ctp_steps.risk.concordance import (
    CONCORDANCE_COLUMNS,
    GAIN,
    bootstrap_c,
    c_indices,
    concordance_row,
    concordance_table,
    harrell_c,
    linear_predictor,
)
from ctp_steps.risk.config import RiskConfig
from ctp_steps.risk.cox import (
    CLINICAL,
    COX_COLUMNS,
    GROUPS,
    MULTIVARIABLE,
    NOTE_SEP,
    PH_COLUMNS,
    STRATIFIED,
    UNIVARIABLE,
    ModelFit,
    cox_table,
    fit_cox,
    fit_groups,
    fit_models,
    merge_groups,
    not_estimable,
    ph_table,
)
from ctp_steps.risk.km import KM_COLUMNS, group_label, km_groups, marker_groups
from ctp_steps.risk.measurement_error import (
    CORRECTED_MODELS,
    ME_COLUMNS,
    NAIVE,
    RC,
    SIMEX,
    Calibration,
    calibrate,
    measurement_error_table,
    se_availability,
)
from ctp_steps.risk.plots import plot_forest, plot_km
from ctp_steps.risk.report import (
    RiskSummary,
    measurement_error_section,
    render_report,
    report_warnings,
    summarize,
)
from ctp_steps.risk.simulate import simulate_table_cohort

__all__ = [
    "CENTER",
    "CLINICAL",
    "CORRECTED_MODELS",
    "CONCORDANCE_COLUMNS",
    "COX_COLUMNS",
    "DURATION",
    "EVENT",
    "GAIN",
    "GROUPS",
    "KM_COLUMNS",
    "ME_COLUMNS",
    "MULTIVARIABLE",
    "NAIVE",
    "NOTE_SEP",
    "PH_COLUMNS",
    "RC",
    "SIMEX",
    "STRATIFIED",
    "UNIVARIABLE",
    "Calibration",
    "CohortCounts",
    "ModelFit",
    "RiskConfig",
    "RiskSummary",
    "analysis_frame",
    "bootstrap_c",
    "c_indices",
    "calibrate",
    "cohort_counts",
    "concordance_row",
    "concordance_table",
    "cox_table",
    "fit_cox",
    "fit_groups",
    "fit_models",
    "group_label",
    "harrell_c",
    "km_groups",
    "linear_predictor",
    "marker_groups",
    "measurement_error_section",
    "measurement_error_table",
    "merge_groups",
    "not_estimable",
    "ph_table",
    "plot_forest",
    "plot_km",
    "render_report",
    "report_warnings",
    "run_risk_analysis",
    "se_availability",
    "simulate_table_cohort",
    "summarize",
]
