"""Ship a trained checkpoint: copy it to models/, register it in models/manifest.json, write its model card.

Training rules never write into models/ (a normal run never retrains); this
command is run by hand after `snakemake train`:
    python -m ctp_steps ship-segmentation vbnet_frames \
        --checkpoint results/training/vbnet_frames/vbnet_frames.pt --report results/training/vbnet_frames/report.json
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ctp_steps.io import atomic_path, read_json
from ctp_steps.models import MODELS_DIR, register_model, sha256_of
from ctp_steps.segmentation.config import SegmentationConfig, widened_phantom

ALIGNMENT_NOTE = (
    "Training averages use the phantom's TRUE alignment: every frame moved back onto the reference anatomy with "
    "the true motion (ctp_steps.phantom.motion.undo_motion, the oracle registration's resampling), not the registration "
    "stage's output. Retrain on the registration stage's averages once it is validated."
)


def model_info(checkpoint: Path, report: dict, cfg: SegmentationConfig) -> dict:
    import torch

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    meta, tr = ckpt["meta"], cfg.training
    task = meta["task"]
    tcfg = getattr(tr, task)
    validation = report["validation"]
    info = {
        "architecture": "VB-Net (ctp_steps.segmentation.vbnet.VBNet)",
        "constructor": ckpt["kwargs"],
        "task": task,
        "classes": meta["classes"],
        "input": {
            "spacing_zyx_mm": meta["spacing_zyx_mm"],
            "hu_window": meta["hu_window"],
            "context": meta["context"],
            "what": "single frames of the unregistered series (HU)" if task == "frames" else "average of the aligned frames (HU)",
        },
        "weights_dtype": "float16" if tr.fp16_weights else "float32",
        "training_command": report.get("command") or "snakemake train (rules/train/segmentation.smk)",
        "training": {
            "steps": report["steps"],
            "batch_size": tcfg.batch_size,
            "crop_zyx": list(tcfg.crop_zyx),
            "learning_rate": tcfg.learning_rate,
            "loss": "cross-entropy + soft Dice (foreground classes)",
            "augmentation": f"random crops ({tcfg.foreground_fraction:.0%} near foreground); domain randomisation "
            f"(ctp_steps/segmentation/augment.py): {tr.augmentation.model_dump(mode='json')}",
            "cpu_s": report["train_cpu_s"],
            "wall_s": report["train_wall_s"],
            "threads": report["threads"],
            "seed": tr.seed,
            "stages": report.get("stages"),
        },
        "data": {
            "generator": "ctp_steps.phantom (generate_patient)",
            "train": {"role": "train", "n_patients": tr.n_patients, "root_seed": tr.seed},
            "validation": {"role": "validation", "n_patients": tr.n_validation_patients, "root_seed": tr.seed},
            "phantom_grid": {"shape_zyx": list(tr.phantom.shape_zyx), "spacing_zyx_mm": list(tr.phantom.spacing_zyx_mm)},
            "phantom_changes": widened_phantom(tr.phantom),
            "disjoint_from": "seeds disjoint from the default cohort's (role `cohort`): make_specs spawns seeds per role",
        },
        "validation": {
            "patients": "validation-role phantoms (all frames for the frames model)",
            **{k: v for k, v in validation.items() if k.startswith("dice_") and k != "dice_per_patient"},
            "per_patient": validation["dice_per_patient"],
        },
    }
    if task == "frames":
        info["data"]["samples"] = "every frame of every training patient (all contrast phases)"
    else:
        info["data"]["samples"] = "averages of random subsets (≥ 60 %) or all of a patient's aligned frames"
        info["data"]["alignment"] = ALIGNMENT_NOTE
    return info


def model_card(name: str, entry: dict) -> str:
    v, t, d = entry["validation"], entry["training"], entry["data"]
    dice_lines = "\n".join(f"| {k.removeprefix('dice_')} | {val:.4f} |" for k, val in v.items() if k.startswith("dice_") and k != "dice_mean")
    lines = [
        f"# {name}",
        "",
        f"{entry['architecture']}, task `{entry['task']}`, classes {', '.join(entry['classes'])}.",
        f"Constructor: `{entry['constructor']}`; {entry['size_bytes'] / 1e6:.2f} MB ({entry['weights_dtype']}), sha256 `{entry['sha256'][:16]}…`.",
        "",
        "## Input",
        f"{entry['input']['what']}; resampled to {entry['input']['spacing_zyx_mm']} mm (z, y, x) and back; "
        f"HU window {entry['input']['hu_window']} → [-1, 1]; context channel: `{entry['input']['context']}`.",
        "",
        "## Training",
        entry["training_command"] if "`" in entry["training_command"] else f"`{entry['training_command']}`",
        "",
        f"{t['steps']} steps in all × {t['batch_size']} crops {t['crop_zyx']}, AdamW one-cycle "
        + (f"in {len(t['stages'])} stages (see the command), " if t.get("stages") else f"lr {t['learning_rate']}, ")
        + f"{t['loss']}; augmentation: {t['augmentation']}. Seed {t['seed']}; {t['cpu_s']:.0f} s CPU "
        f"({t['wall_s']:.0f} s wall, shared machine) on {t['threads']} thread(s).",
        "",
        f"Data: {d['train']['n_patients']} phantom patients of role `train`, {d['validation']['n_patients']} of role "
        f"`validation` (root seed {d['train']['root_seed']}; {d['disjoint_from']}); grid {d['phantom_grid']['shape_zyx']} "
        f"at {d['phantom_grid']['spacing_zyx_mm']} mm; samples: {d['samples']}.",
    ]
    if d.get("phantom_changes"):
        lines += ["", "Training distribution: the default phantom with "
                  + ", ".join(f"`{k}` {v}" for k, v in d["phantom_changes"].items())
                  + " (ctp_steps.segmentation.config.randomised_training_phantom says why each)."]
    if "alignment" in d:
        lines += ["", f"**Alignment.** {d['alignment']}"]
    lines += [
        "",
        "## Validation (validation-role patients, post-processed; "
        + ("Dice pooled over all frames of a patient)" if entry["task"] == "frames" else "Dice on each patient's aligned average)"),
        "",
        "| structure | mean Dice |",
        "| --- | --- |",
        dice_lines,
        "",
        "The held-out figures of the default cohort come from `snakemake validate` (results/validation/summary.parquet).",
        "",
    ]
    if entry.get("generalisation"):
        lines += ["## Generalisation (in distribution vs the shifted phantom family)", "", entry["generalisation"], ""]
    lines += [
        "## Limits",
        "Trained on the synthetic phantom only; not validated on patient data.",
        "",
    ]
    return "\n".join(lines)


def ship_model(name: str, checkpoint: Path, report_path: Path, cfg: SegmentationConfig, models_dir: Path = MODELS_DIR,
               generalisation: str | None = None) -> dict:
    """Copy, register, write the card; `generalisation` is a measured Markdown table (with its command) for the card."""
    report = read_json(report_path)
    target = models_dir / f"{name}.pt"
    if not (target.exists() and sha256_of(target) == sha256_of(checkpoint)):  # same bytes: keep the mtime, no reruns
        with atomic_path(target) as tmp:
            shutil.copyfile(checkpoint, tmp)
    info = model_info(target, report, cfg)
    if generalisation:
        info["generalisation"] = generalisation
    entry = register_model(name, target, info, manifest=models_dir / "manifest.json")
    with atomic_path(models_dir / f"{name}.md") as tmp:
        tmp.write_text(model_card(name, entry))
    return entry
