"""`ctp-steps run <stage>`: the one command of every per-patient stage (contract: ctp_steps/stages.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ctp_steps.cli import run_patient_stage
from ctp_steps.stages import STAGES, Context, build, load_contract


def run_stage(stage: str, files: dict, config_json: str, ctx: Context) -> None:
    """Build the stage's Inputs/Outputs from the rule's named files and run it under the failure contract."""
    contract = load_contract(stage, ctx.implementation)
    inputs = build(contract.Inputs, files["input"])
    outputs = build(contract.Outputs, files["output"])
    cfg = contract.Config.model_validate_json(config_json) if contract.Config is not None else None
    upstream = [inputs.upstream] if inputs.upstream is not None else []
    run_patient_stage(stage, outputs.status, outputs.files(), upstream, lambda: contract.run(inputs, outputs, cfg, ctx))


def _run(args: argparse.Namespace) -> None:
    ctx = Context(args.implementation, args.device, args.threads, args.title,
                  Path(args.models_manifest) if args.models_manifest else None)
    run_stage(args.stage, json.loads(args.files), args.config_json, ctx)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="one per-patient stage on one patient (the rule's named files as JSON)")
    p.add_argument("stage", choices=list(STAGES))
    p.add_argument("--files", required=True, help='{"input": {key: path}, "output": {key: path}} of the rule')
    p.add_argument("--implementation", required=True, help="the configured implementation (config `stages:`)")
    p.add_argument("--config-json", default="{}", help="the stage's config section as JSON")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--title", default="", help="figure title (<center>/<patient>)")
    p.add_argument("--models-manifest", help="models manifest (default: the shipped models/manifest.json)")
    p.set_defaults(func=_run)
