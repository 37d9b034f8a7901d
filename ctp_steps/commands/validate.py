"""Subcommands of validation: per-patient metrics against the phantom's truth, the summary."""

from __future__ import annotations

import argparse
from pathlib import Path


def _conversion(args: argparse.Namespace) -> None:
    from ctp_steps.validation.conversion import conversion_metrics
    from ctp_steps.validation.rows import write_metrics

    rows = conversion_metrics(
        Path(args.truth_dir), Path(args.series), Path(args.frames), Path(args.status), args.params_json
    )
    write_metrics(rows, Path(args.out))


def _imv(args: argparse.Namespace) -> None:
    from ctp_steps.validation.imv import imv_patient_metrics
    from ctp_steps.validation.rows import write_metrics

    write_metrics(imv_patient_metrics(Path(args.truth_dir), Path(args.patient_dir), args.config_json), Path(args.out))


def _summary(args: argparse.Namespace) -> None:
    from ctp_steps.validation.summary import summarize_metrics

    summarize_metrics([Path(p) for p in args.inputs], Path(args.out_dir))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate-conversion", help="conversion vs the phantom's truth")
    p.add_argument("--truth-dir", required=True)
    p.add_argument("--series", required=True)
    p.add_argument("--frames", required=True)
    p.add_argument("--status", required=True)
    p.add_argument("--params-json", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_conversion)

    p = sub.add_parser("validate-imv", help="IMV and ischemic region vs the phantom's truth (one patient)")
    for name in ("truth-dir", "patient-dir", "config-json", "out"):
        p.add_argument(f"--{name}", required=True)
    p.set_defaults(func=_imv)

    p = sub.add_parser("validation-summary", help="per-patient metrics → summary.parquet")
    p.add_argument("--inputs", nargs="+", required=True)
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=_summary)
