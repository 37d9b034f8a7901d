"""Subcommands of MBF validation against the phantom (the stage itself: `ctp-steps run mbf`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _validate(args: argparse.Namespace) -> None:
    import torch

    from ctp_steps.io import write_parquet
    from ctp_steps.validation.mbf import mbf_patient_metrics
    from ctp_steps.validation.rows import write_metrics

    torch.set_num_threads(args.threads)
    metrics, segments = mbf_patient_metrics(
        Path(args.truth_dir), Path(args.patient_dir), args.config_json, args.device
    )
    write_metrics(metrics, Path(args.out))
    write_parquet(Path(args.segments_out), segments)


def _validate_cohort(args: argparse.Namespace) -> None:
    from ctp_steps.validation.mbf import cohort_segment_metrics
    from ctp_steps.validation.rows import write_metrics

    write_metrics(cohort_segment_metrics([Path(p) for p in args.inputs]), Path(args.out))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate-mbf", help="MBF of every method vs the phantom's truth (one patient)")
    for name in ("truth-dir", "patient-dir", "config-json", "out", "segments-out"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=_validate)

    p = sub.add_parser("validate-mbf-cohort", help="segment MBF ICC and Bland-Altman over all patients")
    p.add_argument("--inputs", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_validate_cohort)
