"""Subcommands of the MBF stage: per-patient MBF maps and tables; its validation against the phantom."""

from __future__ import annotations

import argparse
from pathlib import Path

from ctp_steps.cli import run_patient_stage


def _mbf(args: argparse.Namespace) -> None:
    def work() -> dict:
        import torch

        from ctp_steps.mbf import MBFConfig
        from ctp_steps.devices import resolve_device
        from ctp_steps.mbf.stage import MBFInputPaths, MBFOutputPaths, run_mbf

        torch.set_num_threads(args.threads)
        cfg = MBFConfig.model_validate_json(args.config_json)
        if (cfg.method == "one_compartment") != (args.blood_volume is not None):
            raise ValueError("--blood-volume is required for one_compartment and only for it")
        inputs = MBFInputPaths(
            frames=Path(args.frames), series=Path(args.series), myocardium=Path(args.myocardium),
            aha17=Path(args.aha), aif=Path(args.aif),
        )
        outputs = MBFOutputPaths(
            mbf=Path(args.mbf), mbf_raw=Path(args.mbf_raw), tac=Path(args.tac), segments=Path(args.segments),
            qc=Path(args.qc), blood_volume=Path(args.blood_volume) if args.blood_volume else None,
        )
        return run_mbf(inputs, outputs, cfg, resolve_device(args.device))

    outputs = [Path(p) for p in (args.mbf, args.mbf_raw, args.tac, args.segments, args.qc, args.blood_volume) if p]
    run_patient_stage("mbf", Path(args.status), outputs, [Path(args.upstream)], work)


def _validate(args: argparse.Namespace) -> None:
    import torch

    from ctp_steps.io import write_parquet
    from ctp_steps.mbf_validation import mbf_patient_metrics
    from ctp_steps.validate import write_metrics

    torch.set_num_threads(args.threads)
    metrics, segments = mbf_patient_metrics(
        Path(args.truth_dir), Path(args.patient_dir), args.config_json, args.device
    )
    write_metrics(metrics, Path(args.out))
    write_parquet(Path(args.segments_out), segments)


def _validate_cohort(args: argparse.Namespace) -> None:
    from ctp_steps.mbf_validation import cohort_segment_metrics
    from ctp_steps.validate import write_metrics

    write_metrics(cohort_segment_metrics([Path(p) for p in args.inputs]), Path(args.out))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mbf", help="myocardial blood flow maps, segment table, curves and QC figure")
    for name in ("frames", "series", "myocardium", "aha", "aif", "upstream", "config-json",
                 "mbf", "mbf-raw", "tac", "segments", "qc", "status"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--blood-volume", help="blood volume map (one_compartment only)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=_mbf)

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
