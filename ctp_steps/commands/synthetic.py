"""Subcommands of the synthetic cohort: one phantom patient, the cohort manifest."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _synthesize(args: argparse.Namespace) -> None:
    from ctp_steps.phantom import PatientSpec, PhantomParams, write_dicom, write_truth
    from ctp_steps.phantom.families import render_patient
    from ctp_steps.phantom.params import NativeGrid

    spec = PatientSpec(**json.loads(args.spec_json))
    params = PhantomParams.model_validate_json(args.params_json)
    native = NativeGrid.model_validate_json(args.native_json) if args.native_json else None
    if args.family == "shifted" and native is not None:
        raise SystemExit("--family shifted draws its own native grid: --native-json must be empty")
    patient = render_patient(spec, params, args.family, native)
    write_dicom(patient, Path(args.dicom_dir), spec.vendor_style)
    write_truth(patient, Path(args.truth_dir))


def _manifest(args: argparse.Namespace) -> None:
    from ctp_steps.synthetic import write_synthetic_manifest

    write_synthetic_manifest(
        [Path(p) for p in args.truth], Path(args.out), json.loads(args.outcome_json), args.seed
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synthesize", help="generate one phantom patient: DICOM + hidden truth")
    p.add_argument("--spec-json", required=True)
    p.add_argument("--params-json", required=True)
    p.add_argument("--dicom-dir", required=True)
    p.add_argument("--truth-dir", required=True)
    p.add_argument("--native-json", default="", help="render on this native grid (NativeGrid JSON)")
    p.add_argument("--family", choices=("default", "shifted"), default="default",
                   help="phantom family (shifted: ctp_steps/phantom/shifted.py, never seen in training)")
    p.set_defaults(func=_synthesize)

    p = sub.add_parser("synthetic-manifest", help="covariates + outcomes → cohort manifest")
    p.add_argument("--truth", nargs="+", required=True)
    p.add_argument("--outcome-json", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_manifest)
