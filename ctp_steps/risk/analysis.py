"""The risk stage from end to end: cohort, models, tables, figures and report in one call."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ctp_steps import __version__
from ctp_steps.io import atomic_path, write_parquet
from ctp_steps.risk.cohort import analysis_frame, cohort_counts
from ctp_steps.risk.concordance import concordance_table
from ctp_steps.risk.config import RiskConfig
from ctp_steps.risk.cox import cox_table, fit_models, ph_table
from ctp_steps.risk.km import km_groups
from ctp_steps.risk.measurement_error import measurement_error_table
from ctp_steps.risk.plots import plot_forest, plot_km
from ctp_steps.risk.report import RiskSummary, render_report, summarize


def run_risk_analysis(
    patients: pd.DataFrame, covariates: list[str], cfg: RiskConfig, out_dir: Path
) -> RiskSummary:
    """Fit every model, write the tables, figures and report under out_dir; return the headline numbers."""
    covs = list(cfg.covariates if cfg.covariates is not None else covariates)
    if cfg.marker in covs:
        raise ValueError(f"the marker {cfg.marker!r} is listed among the clinical covariates")
    counts = cohort_counts(patients)
    frame = analysis_frame(patients, covs, cfg)
    fits = fit_models(frame, covs, cfg)
    cox = cox_table(fits)
    concordance = concordance_table(fits, cfg)
    ph = ph_table(fits, cfg)
    km, logrank = km_groups(frame, cfg)
    me = measurement_error_table(fits, cox, frame, cfg)

    out_dir = Path(out_dir)
    metadata = {"ctp_risk_config": cfg.model_dump_json(), "software_version": __version__}
    write_parquet(out_dir / "cox.parquet", cox, metadata)
    write_parquet(out_dir / "concordance.parquet", concordance, metadata)
    write_parquet(out_dir / "ph_test.parquet", ph, metadata)
    write_parquet(out_dir / "measurement_error.parquet", me, metadata)
    plot_km(out_dir / "km.png", frame, cfg, logrank)
    plot_forest(out_dir / "forest.png", cox, cfg)
    report_path = out_dir / "report.md"
    with atomic_path(report_path) as tmp:
        tmp.write_text(render_report(counts, fits, cox, concordance, ph, km, logrank, covs, cfg, me))
    return summarize(counts, cox, concordance, cfg, report_path, me)
