"""Subcommands of the cohort gather: per-patient records and segment tables → results/cohort/."""

from __future__ import annotations

import argparse
from pathlib import Path


def _gather(args: argparse.Namespace) -> None:
    from ctp_steps.cohort import gather_patients, write_patients_table

    table = gather_patients(Path(args.manifest), Path(args.patients_dir), args.stages, args.covariates)
    write_patients_table(table, Path(args.out), args.covariates, args.config_hash)
    print(f"{len(table)} patients, {(table['status'] == 'ok').sum()} ok -> {args.out}")


def _gather_segments(args: argparse.Namespace) -> None:
    from ctp_steps.cohort import gather_segments, write_segments_table

    table = gather_segments(Path(args.manifest), Path(args.patients_dir), args.last_stage)
    write_segments_table(table, Path(args.out), args.config_hash)
    print(f"{len(table)} segment rows of {table['patient_id'].nunique()} patients -> {args.out}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gather", help="per-patient records → results/cohort/patients.parquet")
    p.add_argument("--manifest", required=True)
    p.add_argument("--patients-dir", required=True)
    p.add_argument("--stages", nargs="+", required=True)
    p.add_argument("--covariates", nargs="*", default=[])
    p.add_argument("--config-hash", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_gather)

    p = sub.add_parser("gather-segments", help="per-patient segment tables → results/cohort/segments.parquet")
    p.add_argument("--manifest", required=True)
    p.add_argument("--patients-dir", required=True)
    p.add_argument("--last-stage", required=True, help="stage whose ok status marks a usable patient")
    p.add_argument("--config-hash", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_gather_segments)
