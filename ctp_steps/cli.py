"""Command line of the stages: what Snakemake's thin rules call (`python -m ctp_steps ...`).

Every per-patient command follows one contract: a known input problem
(PatientInputError) writes the stage's status record with the reason and empty
placeholder outputs, and exits 0 so the rest of the cohort goes on; any other
exception is a bug and fails the job loudly.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("ctp_steps")


def run_patient_stage(
    stage: str,
    status_path: Path,
    outputs: list[Path],
    upstream_statuses: list[Path],
    work: Callable[[], None],
) -> None:
    """Run `work` unless an upstream stage excluded the patient; record the outcome."""
    from ctp_steps.io import require_ok, write_status
    from ctp_steps.types import PatientInputError, StageStatus, UpstreamExcluded

    try:
        for upstream in upstream_statuses:
            require_ok(upstream)
        work()
    except PatientInputError as exc:
        reason = str(exc) if isinstance(exc, UpstreamExcluded) else f"{stage}: {exc}"
        log.warning("patient excluded: %s", reason)
        for out in outputs:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(b"")
        write_status(status_path, StageStatus(stage, "excluded", reason))
        return
    write_status(status_path, StageStatus(stage, "ok"))


def _cmd_schema(args: argparse.Namespace) -> None:
    from ctp_steps.config import json_schema

    json.dump(json_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")


def _cmd_check_config(args: argparse.Namespace) -> None:
    import yaml

    from ctp_steps.config import load_config
    from ctp_steps.workflow import cohort_patients

    raw = yaml.safe_load(Path(args.config).read_text()) or {}
    for override in args.set or []:
        key, _, value = override.partition("=")
        raw[key] = yaml.safe_load(value)
    cfg = load_config(raw)
    patients = cohort_patients(cfg)
    print(f"config ok; {len(patients)} patients")


def _cmd_synthesize(args: argparse.Namespace) -> None:
    from ctp_steps.phantom import PatientSpec, PhantomParams, generate_patient, write_dicom, write_truth

    spec = PatientSpec(**json.loads(args.spec_json))
    params = PhantomParams.model_validate_json(args.params_json)
    patient = generate_patient(spec, params)
    write_dicom(patient, Path(args.dicom_dir), spec.vendor_style)
    write_truth(patient, Path(args.truth_dir))


def _cmd_synthetic_manifest(args: argparse.Namespace) -> None:
    from ctp_steps.synthetic import write_synthetic_manifest

    write_synthetic_manifest(
        [Path(p) for p in args.truth], Path(args.out), json.loads(args.outcome_json), args.seed
    )


def _cmd_convert(args: argparse.Namespace) -> None:
    def work() -> None:
        from ctp_steps.convert import convert_dicom_series, write_converted

        series = convert_dicom_series(Path(args.dicom_dir), min_frames=args.min_frames)
        write_converted(series, Path(args.series), Path(args.frames))

    run_patient_stage(
        "convert", Path(args.status), [Path(args.series), Path(args.frames)], [], work
    )


def _cmd_gather(args: argparse.Namespace) -> None:
    from ctp_steps.cohort import gather_patients, write_patients_table

    table = gather_patients(
        Path(args.manifest), Path(args.patients_dir), args.stages, args.covariates
    )
    write_patients_table(table, Path(args.out), args.config_hash)
    print(f"{len(table)} patients, {(table['status'] == 'ok').sum()} ok -> {args.out}")


def _cmd_validate_conversion(args: argparse.Namespace) -> None:
    from ctp_steps.validate import conversion_metrics, write_metrics

    rows = conversion_metrics(
        Path(args.truth_dir), Path(args.series), Path(args.frames), Path(args.status), args.params_json
    )
    write_metrics(rows, Path(args.out))


def _cmd_validation_summary(args: argparse.Namespace) -> None:
    from ctp_steps.validate import summarize_metrics

    summarize_metrics([Path(p) for p in args.inputs], Path(args.out_dir))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctp-steps", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("schema", help="print the config JSON schema").set_defaults(func=_cmd_schema)

    p = sub.add_parser("check-config", help="validate a config file and its manifest")
    p.add_argument("config")
    p.add_argument("--set", action="append", help="key=value override (top-level keys)")
    p.set_defaults(func=_cmd_check_config)

    p = sub.add_parser("synthesize", help="generate one phantom patient: DICOM + hidden truth")
    p.add_argument("--spec-json", required=True)
    p.add_argument("--params-json", required=True)
    p.add_argument("--dicom-dir", required=True)
    p.add_argument("--truth-dir", required=True)
    p.set_defaults(func=_cmd_synthesize)

    p = sub.add_parser("synthetic-manifest", help="covariates + outcomes → cohort manifest")
    p.add_argument("--truth", nargs="+", required=True)
    p.add_argument("--outcome-json", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_synthetic_manifest)

    p = sub.add_parser("convert", help="DICOM folder → 4D NIfTI (HU) + frames.json")
    p.add_argument("--dicom-dir", required=True)
    p.add_argument("--series", required=True)
    p.add_argument("--frames", required=True)
    p.add_argument("--status", required=True)
    p.add_argument("--min-frames", type=int, default=8)
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("gather", help="per-patient records → results/cohort/patients.parquet")
    p.add_argument("--manifest", required=True)
    p.add_argument("--patients-dir", required=True)
    p.add_argument("--stages", nargs="+", required=True)
    p.add_argument("--covariates", nargs="*", default=[])
    p.add_argument("--config-hash", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_gather)

    p = sub.add_parser("validate-conversion", help="conversion vs the phantom's truth")
    p.add_argument("--truth-dir", required=True)
    p.add_argument("--series", required=True)
    p.add_argument("--frames", required=True)
    p.add_argument("--status", required=True)
    p.add_argument("--params-json", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_validate_conversion)

    p = sub.add_parser("validation-summary", help="per-patient metrics → summary.parquet")
    p.add_argument("--inputs", nargs="+", required=True)
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=_cmd_validation_summary)
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    args.func(args)
