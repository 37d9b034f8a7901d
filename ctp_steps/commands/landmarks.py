"""Subcommands of the landmark net: training data, training, shipping, validation (the stage: `ctp-steps run landmarks`)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger("ctp_steps")


def _training_config(text: str | None):
    from ctp_steps.landmarks.config import LandmarkTrainingConfig

    return LandmarkTrainingConfig.model_validate_json(text) if text else LandmarkTrainingConfig()


def _data(args: argparse.Namespace) -> None:
    import torch

    from ctp_steps.landmarks.data import make_case, save_case, training_plan

    torch.set_num_threads(args.threads)
    cfg = _training_config(args.config_json)
    plan = training_plan(cfg)
    unknown = sorted(set(args.cases) - set(plan))
    if unknown:
        raise SystemExit(f"cases not in the training plan: {unknown}")
    for case_id in args.cases:
        spec, grid = plan[case_id]
        save_case(Path(args.out_dir) / f"{case_id}.npz", make_case(spec, grid, args.apex_cap_fraction, cfg.anatomy))
        log.info("case %s on grid %s written", case_id, grid.shape_zyx)


def _train(args: argparse.Namespace) -> None:
    import torch

    from ctp_steps.io import write_json
    from ctp_steps.landmarks.data import load_case
    from ctp_steps.devices import resolve_device
    from ctp_steps.landmarks.infer import LandmarkDetector
    from ctp_steps.landmarks.net import save_checkpoint
    from ctp_steps.landmarks.train import evaluate, train

    cfg = _training_config(args.config_json)
    torch.set_num_threads(cfg.threads)
    device = resolve_device(args.device)
    train_cases, val_cases = [load_case(p) for p in args.train], [load_case(p) for p in args.val]
    init = None
    if args.init:
        from ctp_steps.landmarks.net import load_checkpoint

        init, _ = load_checkpoint(args.init)
    net, meta = train(cfg, train_cases, val_cases, device, steps=args.steps, init=init)
    meta["training"]["init"] = Path(args.init).name if args.init else None  # a file name, not a machine's path
    final = evaluate(LandmarkDetector(net, meta, device), val_cases, args.apex_cap_fraction).summary()
    meta["validation"] = final
    meta["training_config"] = json.loads(cfg.model_dump_json())
    save_checkpoint(args.out, net, meta)
    write_json(args.metrics, {"validation": final, "training": meta["training"], "config": meta["training_config"]})
    log.info("validation (best weights): %s", final)


def _ship(args: argparse.Namespace) -> None:
    import shutil

    from ctp_steps.io import read_json
    from ctp_steps.landmarks.net import load_checkpoint
    from ctp_steps.models import MODELS_DIR, register_model

    net, meta = load_checkpoint(args.weights)
    dest = MODELS_DIR / f"{args.name}.pt"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.weights, dest)
    metrics = read_json(args.metrics) if args.metrics else {}
    training = metrics.get("training", meta.get("training", {}))
    info = {
        "architecture": "LandmarkNet (ctp_steps.landmarks.net): the study's landmark heatmap net, spatial-softmax heatmaps",
        "constructor": dict(net.kwargs),
        "parameters": int(sum(p.numel() for p in net.parameters())),
        "dtype": "float16 weights (loaded as float32)",
        "preprocessing": {k: meta[k] for k in ("landmarks", "crop_size", "crop_margin_mm", "input_mask",
                                              "heatmap_sigma_vox", "decode_radius_vox", "input_channels")},
        "training_command": metrics.get("command") or "snakemake --cores 2 train; ctp-steps landmarks-ship "
        "--weights results/training/landmark_net/landmark_net.pt --metrics results/training/landmark_net/metrics.json",
        "data": "phantom patients, roles train/validation (seeds disjoint from the cohort), motion-free frame averages; "
        + json.dumps({k: meta.get("training_config", {}).get(k) for k in
                      ("train_patients", "val_patients", "seed", "grids", "anatomy", "rotation_deg", "size_jitter",
                       "contrast_gain")}),
        "validation": metrics.get("validation", meta.get("validation", {})),
        "training": {
            k: training.get(k)
            for k in ("train_seconds", "train_cpu_seconds", "threads", "steps", "best_step", "loss_first", "loss_last", "device",
                      "init")
        },
    }
    entry = register_model(args.name, dest, info)
    print(json.dumps(entry, indent=2))


def _validate(args: argparse.Namespace) -> None:
    from ctp_steps.validation.landmarks import landmark_metrics
    from ctp_steps.validation.rows import write_metrics

    rows = landmark_metrics(
        Path(args.truth_dir), Path(args.landmarks), Path(args.aha), Path(args.status),
        Path(args.register_status) if args.register_status else None,
    )
    write_metrics(rows, Path(args.out))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("landmarks-data", help="phantom cases for landmark-net training / validation (<case>.npz)")
    p.add_argument("--cases", nargs="+", required=True, help="case ids of the training plan (T0001, V0001, ...)")
    p.add_argument("--config-json", help="LandmarkTrainingConfig as JSON")
    p.add_argument("--apex-cap-fraction", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=_data)

    p = sub.add_parser("landmarks-train", help="train the landmark net on phantom cases")
    p.add_argument("--train", nargs="+", required=True, help="training cases (.npz from landmarks-data)")
    p.add_argument("--val", nargs="+", required=True, help="validation cases (.npz)")
    p.add_argument("--config-json", help="LandmarkTrainingConfig as JSON")
    p.add_argument("--apex-cap-fraction", type=float, default=0.1)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--steps", type=int, help="override the configured number of steps")
    p.add_argument("--init", default="", help="start from this checkpoint (same architecture)")
    p.add_argument("--out", required=True, help="checkpoint (.pt)")
    p.add_argument("--metrics", required=True, help="validation + training record (.json)")
    p.set_defaults(func=_train)

    p = sub.add_parser("landmarks-ship", help="copy trained landmark weights to models/ and register them")
    p.add_argument("--weights", required=True)
    p.add_argument("--metrics", help="metrics.json of the training run")
    p.add_argument("--name", default="landmark_net")
    p.set_defaults(func=_ship)

    p = sub.add_parser("validate-landmarks", help="landmark errors and segment agreement vs the phantom truth")
    p.add_argument("--truth-dir", required=True)
    p.add_argument("--landmarks", required=True)
    p.add_argument("--aha", required=True)
    p.add_argument("--status", required=True)
    p.add_argument("--register-status", default="", help="register stage status (its reference frame, if any)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_validate)
