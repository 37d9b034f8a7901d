"""Subcommand of the cohort risk stage: patients.parquet → Cox, concordance, KM, forest, report."""

from __future__ import annotations

import argparse
from pathlib import Path


def _risk(args: argparse.Namespace) -> None:
    import pandas as pd

    from ctp_steps.io import atomic_path
    from ctp_steps.risk import RiskConfig, run_risk_analysis

    summary = run_risk_analysis(
        pd.read_parquet(args.patients),
        args.covariates,
        RiskConfig.model_validate_json(args.risk_json),
        Path(args.out_dir),
    )
    text = summary.format()
    with atomic_path(Path(args.out_dir) / "summary.txt") as tmp:
        tmp.write_text(text + "\n")
    print(text)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("risk", help="Cox models of MACE, C-index, Kaplan-Meier, report")
    p.add_argument("--patients", required=True)
    p.add_argument("--covariates", nargs="*", default=[])
    p.add_argument("--risk-json", required=True)
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=_risk)
