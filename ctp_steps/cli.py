"""Command line of the stages: what Snakemake's thin rules call (`python -m ctp_steps ...`).

Each stage's subcommands live in `ctp_steps/commands/<stage>.py` (found
automatically; a module defines `register(subparsers)`), with heavy imports
inside the handlers so `--help` and planning stay fast.

Every per-patient command follows one contract (`run_patient_stage`): a known
input problem (PatientInputError) writes the stage's status record with the
reason and empty placeholder outputs, and exits 0 so the rest of the cohort
goes on; any other exception is a bug and fails the job loudly.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import pkgutil
import sys
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("ctp_steps")


def run_patient_stage(
    stage: str,
    status_path: Path,
    outputs: list[Path],
    upstream_statuses: list[Path],
    work: Callable[[], dict | None],
) -> None:
    """Run `work` unless an upstream stage excluded the patient; record the outcome.

    `work` returns the stage's figures for the cohort table (or None).
    """
    from ctp_steps.io import require_ok, write_status
    from ctp_steps.types import PatientInputError, StageStatus, UpstreamExcluded

    try:
        for upstream in upstream_statuses:
            require_ok(upstream)
        record = work() or {}
    except PatientInputError as exc:
        reason = str(exc) if isinstance(exc, UpstreamExcluded) else f"{stage}: {exc}"
        log.warning("patient excluded: %s", reason)
        for out in outputs:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(b"")
        write_status(status_path, StageStatus(stage, "excluded", reason))
        return
    write_status(status_path, StageStatus(stage, "ok", record=record))


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
    print(f"config ok; {len(cohort_patients(cfg))} patients")


def build_parser() -> argparse.ArgumentParser:
    from ctp_steps import commands

    parser = argparse.ArgumentParser(prog="ctp-steps", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("schema", help="print the config JSON schema").set_defaults(func=_cmd_schema)
    p = sub.add_parser("check-config", help="validate a config file and its manifest")
    p.add_argument("config")
    p.add_argument("--set", action="append", help="key=value override (top-level keys)")
    p.set_defaults(func=_cmd_check_config)
    for module in sorted(m.name for m in pkgutil.iter_modules(commands.__path__)):
        importlib.import_module(f"ctp_steps.commands.{module}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    args.func(args)
