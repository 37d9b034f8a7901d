"""Subcommands of the segmentation nets: validation, training data, training, shipping (the stages: `ctp-steps run segment_frames|segment_myocardium`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _config(args: argparse.Namespace):
    from ctp_steps.segmentation.config import SegmentationConfig

    return SegmentationConfig.model_validate_json(args.config_json) if args.config_json else SegmentationConfig()


def _validate(args: argparse.Namespace) -> None:
    from ctp_steps.validation.rows import write_metrics
    from ctp_steps.validation.segmentation import frames_metrics, myocardium_metrics

    truth = Path(args.truth_dir)
    if args.what == "frames":
        rows = frames_metrics(truth, Path(args.masks), Path(args.aif), Path(args.status))
    else:
        rows = myocardium_metrics(truth, Path(args.masks), Path(args.status), Path(args.register_status) if args.register_status else None)
    write_metrics(rows, Path(args.out))


def _make_data(args: argparse.Namespace) -> None:
    import torch

    from ctp_steps.segmentation.data import make_case, training_specs, write_case

    torch.set_num_threads(1)
    cfg = _config(args).training
    specs = {s.patient_id: s for role in training_specs(cfg.n_patients, cfg.n_validation_patients, cfg.seed).values() for s in role}
    for patient in args.patients:
        write_case(Path(args.out_dir) / f"{patient}.npz", make_case(specs[patient], cfg.phantom))


def _train(args: argparse.Namespace) -> None:
    import logging

    from ctp_steps.io import write_json
    from ctp_steps.segmentation.train import train_model

    logging.getLogger("ctp_steps").setLevel(logging.INFO)
    report = train_model(
        args.task, [Path(p) for p in args.train], [Path(p) for p in args.val], _config(args), Path(args.out),
        steps=args.steps, progress=not args.no_progress, device=args.device,
        init=Path(args.init) if args.init else None,
    )
    report["command"] = args.command_line or None
    write_json(Path(args.report), report)


def _ship(args: argparse.Namespace) -> None:
    from ctp_steps.segmentation.ship import ship_model

    generalisation = Path(args.generalisation).read_text() if args.generalisation else None
    entry = ship_model(args.name, Path(args.checkpoint), Path(args.report), _config(args), generalisation=generalisation)
    print(json.dumps(entry, indent=2))


def register(sub: argparse._SubParsersAction) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config-json", default="", help="the `segmentation` config section as JSON")

    p = sub.add_parser("validate-segmentation", help="segmentation outputs vs the phantom's truth")
    p.add_argument("what", choices=["frames", "myocardium"])
    p.add_argument("--truth-dir", required=True)
    p.add_argument("--masks", required=True)
    p.add_argument("--aif", default="")
    p.add_argument("--status", required=True)
    p.add_argument("--register-status", default="", help="register stage status (its reference frame, if any)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_validate)

    p = sub.add_parser("segmentation-data", help="training phantom patients → .npz training cases")
    p.add_argument("--patients", nargs="+", required=True, help="training/validation patient ids (T0001, V0001, ...)")
    p.add_argument("--out-dir", required=True)
    common(p)
    p.set_defaults(func=_make_data)

    p = sub.add_parser("train-segmentation", help="train one VB-Net (frames or myocardium)")
    p.add_argument("task", choices=["frames", "myocardium"])
    p.add_argument("--train", nargs="+", required=True, help="training cases (.npz)")
    p.add_argument("--val", nargs="+", required=True, help="validation cases (.npz)")
    p.add_argument("--out", required=True, help="checkpoint to write")
    p.add_argument("--report", required=True, help="training report (JSON)")
    p.add_argument("--steps", type=int, default=None, help="override the configured steps")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--init", default="", help="start from this checkpoint (same architecture) instead of random weights")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--command-line", default="", help="how the run was started (recorded in the report)")
    common(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("ship-segmentation", help="copy a trained checkpoint to models/ and register it")
    p.add_argument("name", help="model name, e.g. vbnet_frames")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--report", required=True)
    p.add_argument("--generalisation", default="", help="Markdown with the measured in-distribution vs shifted figures")
    common(p)
    p.set_defaults(func=_ship)
