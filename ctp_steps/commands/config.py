"""Subcommands about the configuration: its JSON schema, and checking a config with its manifest."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _schema(args: argparse.Namespace) -> None:
    from ctp_steps.config import json_schema

    json.dump(json_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")


def _check_config(args: argparse.Namespace) -> None:
    import yaml

    from ctp_steps.config import load_config
    from ctp_steps.workflow import cohort_patients

    raw = yaml.safe_load(Path(args.config).read_text()) or {}
    for override in args.set or []:
        key, _, value = override.partition("=")
        raw[key] = yaml.safe_load(value)
    cfg = load_config(raw)
    print(f"config ok; {len(cohort_patients(cfg))} patients")


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("schema", help="print the config JSON schema").set_defaults(func=_schema)
    p = sub.add_parser("check-config", help="validate a config file and its manifest")
    p.add_argument("config")
    p.add_argument("--set", action="append", help="key=value override (top-level keys)")
    p.set_defaults(func=_check_config)
