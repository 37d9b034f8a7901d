"""Subcommands of the cohort gather: per-patient records and segment tables → results/cohort/."""

from __future__ import annotations

import argparse
from pathlib import Path


def _gather(args: argparse.Namespace) -> None:
    from ctp_steps.cohort import gather_patients, gather_segments, write_patients_table, write_segments_table

    table = gather_patients(Path(args.manifest), Path(args.patients_dir), args.stages, args.covariates)
    write_patients_table(table, Path(args.out), args.covariates, args.config_hash)
    print(f"{len(table)} patients, {(table['status'] == 'ok').sum()} ok -> {args.out}")
    if args.segments_out:
        segments = gather_segments(Path(args.manifest), Path(args.patients_dir), args.stages[-1])
        write_segments_table(segments, Path(args.segments_out), args.config_hash)
        print(f"{len(segments)} segment rows of {segments['patient_id'].nunique()} patients -> {args.segments_out}")


def _provenance(args: argparse.Namespace) -> None:
    from ctp_steps.provenance import write_provenance

    write_provenance(args.config_json, Path(args.config_out), Path(args.provenance_out))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("provenance", help="the effective configuration and the versions beside the cohort tables")
    p.add_argument("--config-json", required=True)
    p.add_argument("--config-out", required=True)
    p.add_argument("--provenance-out", required=True)
    p.set_defaults(func=_provenance)

    p = sub.add_parser("gather", help="per-patient records → results/cohort/patients.parquet")
    p.add_argument("--manifest", required=True)
    p.add_argument("--patients-dir", required=True)
    p.add_argument("--stages", nargs="+", required=True)
    p.add_argument("--covariates", nargs="*", default=[])
    p.add_argument("--config-hash", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--segments-out", help="also write segments.parquet (17 rows per patient whose last stage is ok)")
    p.set_defaults(func=_gather)

