"""Subcommands of the registration net: training data, training, shipping, validation (the stage: `ctp-steps run register`)."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

log = logging.getLogger("ctp_steps")

def _config(text: str | None):
    from ctp_steps.registration.config import RegistrationConfig

    return RegistrationConfig.model_validate_json(text) if text else RegistrationConfig()


def _data(args: argparse.Namespace) -> None:
    import torch

    from ctp_steps.registration.data import make_dataset

    torch.set_num_threads(args.threads)
    cfg = _config(args.config_json)
    n = cfg.training.n_patients if args.role == "train" else cfg.training.n_validation_patients
    make_dataset(cfg, args.phantom_json, args.role, n, Path(args.out))


def _train(args: argparse.Namespace) -> None:
    from ctp_steps.devices import resolve_device
    from ctp_steps.registration.train import train_command

    cfg = _config(args.config_json)
    info = train_command(
        cfg, Path(args.train), Path(args.val) if args.val else None, Path(args.out), Path(args.report),
        resolve_device(args.device),
    )
    log.info("trained in %.0f s: %s", info["training_seconds"], json.dumps(info["validation"]))


def _ship(args: argparse.Namespace) -> None:
    """Copy trained weights into models/ and register them (sha256, size, provenance, validation figures)."""
    from ctp_steps.io import read_json
    from ctp_steps.models import MANIFEST, MODELS_DIR, register_model
    from ctp_steps.registration.net import load_checkpoint

    import torch

    manifest = Path(args.manifest) if args.manifest else MANIFEST
    target = (manifest.parent if args.manifest else MODELS_DIR) / f"{args.name}.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.weights, target)
    net, grid, info = load_checkpoint(target, torch.device("cpu"))
    report = read_json(args.report) if args.report else {}
    entry = {
        "architecture": "VoxelMorph-style registration net, valid convolutions (ctp_steps.registration.net.RegNet)",
        "constructor": net.constructor_kwargs(),
        "grid": grid,
        "inputs": "fixed image, moving image (HU / intensity_scale_hu, clipped), fixed LV mask, moving LV mask "
        "on an LPS-aligned isotropic box centred on the reference LV; moving box displaced by the LV centroid shift",
        "outputs": "displacement (voxels along x, y, z of the box) on the central output_size³ voxels",
        "parameters": sum(p.numel() for p in net.parameters()),
        "dtype": "float16" if info.get("config", {}).get("training", {}).get("fp16_weights") else "float32",
        "training_command": args.command or "snakemake train (rules/train/registration.smk)",
        "training_seconds": info.get("training_seconds"),
        "data": info.get("data"),
        "training_config": info.get("config", {}).get("training"),
        "validation": {**info.get("validation", {}), **json.loads(args.validation_json or "{}")},
        "model_card": f"models/{args.name}.md",
    }
    if report.get("final"):
        entry["final_training_loss"] = report["final"]
    print(json.dumps(register_model(args.name, target, entry, manifest), indent=2))


def _validate(args: argparse.Namespace) -> None:
    from ctp_steps.validation.registration import registration_metrics
    from ctp_steps.validation.rows import write_metrics

    write_metrics(registration_metrics(Path(args.truth_dir), Path(args.patient_dir), Path(args.status)), Path(args.out))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("register-data", help="LV-box crops of train/validation phantoms for the registration net")
    p.add_argument("--role", choices=("train", "validation"), required=True)
    p.add_argument("--config-json")
    p.add_argument("--phantom-json", required=True, help="PhantomParams as JSON (the cohort's grid)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_data)

    p = sub.add_parser("register-train", help="train the registration net (unsupervised)")
    p.add_argument("--train", required=True)
    p.add_argument("--val")
    p.add_argument("--config-json")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", required=True)
    p.add_argument("--report", required=True)
    p.set_defaults(func=_train)

    p = sub.add_parser("register-ship", help="copy trained registration weights into models/ and register them")
    p.add_argument("--weights", required=True)
    p.add_argument("--report")
    p.add_argument("--name", default="regnet")
    p.add_argument("--manifest")
    p.add_argument("--command", help="the command that trained the weights (recorded)")
    p.add_argument("--validation-json", help="extra validation figures to record (JSON object)")
    p.set_defaults(func=_ship)

    p = sub.add_parser("validate-register", help="registration vs the phantom's true motion")
    p.add_argument("--truth-dir", required=True)
    p.add_argument("--patient-dir", required=True)
    p.add_argument("--status", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_validate)
