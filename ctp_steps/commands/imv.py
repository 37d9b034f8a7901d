"""Subcommands of the IMV stage: ischemic myocardial volume; its validation against the phantom."""

from __future__ import annotations

import argparse
from pathlib import Path

from ctp_steps.cli import run_patient_stage


def _imv(args: argparse.Namespace) -> None:
    def work() -> dict:
        from ctp_steps.imv import IMVConfig, run_imv

        return run_imv(
            Path(args.mbf), Path(args.myocardium), Path(args.aha), Path(args.ischemia), Path(args.segments),
            Path(args.qc), IMVConfig.model_validate_json(args.config_json),
        )

    outputs = [Path(args.ischemia), Path(args.segments), Path(args.qc)]
    run_patient_stage("imv", Path(args.status), outputs, [Path(args.upstream)], work)


def _validate(args: argparse.Namespace) -> None:
    from ctp_steps.mbf_validation import imv_patient_metrics
    from ctp_steps.validate import write_metrics

    write_metrics(imv_patient_metrics(Path(args.truth_dir), Path(args.patient_dir), args.config_json), Path(args.out))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("imv", help="ischemic myocardial volume from the MBF map")
    for name in ("mbf", "myocardium", "aha", "upstream", "config-json", "ischemia", "segments", "qc", "status"):
        p.add_argument(f"--{name}", required=True)
    p.set_defaults(func=_imv)

    p = sub.add_parser("validate-imv", help="IMV and ischemic region vs the phantom's truth (one patient)")
    for name in ("truth-dir", "patient-dir", "config-json", "out"):
        p.add_argument(f"--{name}", required=True)
    p.set_defaults(func=_validate)
