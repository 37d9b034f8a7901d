"""Segmentation nets on the inputs of finished runs, against the phantom's truth.

Isolates a VB-Net from the rest of the pipeline: each checkpoint segments the same files of finished runs
with the stage's own inference and post-processing, scored against the truth on the same grid:
- `--task myocardium`: the registered `average.nii.gz` (e.g. of a `validate` run with
  `stages.registration: oracle`, so the averages are truly aligned) against the true myocardium;
- `--task frames`: every frame of `series.nii.gz` against the true aorta and LV blood pool per frame
  (Dice pooled over a patient's frames, and its worst frame).
Runs of both phantom families side by side show what a retraining buys in distribution and on the
shifted family.

    python benchmarks/segmentation_net_check.py --task myocardium --runs default=/tmp/d/results shifted=/tmp/s/results \
        --checkpoints shipped=models/vbnet_myocardium.pt new=results/training/vbnet_myocardium/vbnet_myocardium.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ctp_steps.io import read_series, read_volume
from ctp_steps.segmentation.infer import LoadedModel, predict
from ctp_steps.segmentation.postprocess import clean_labels, clean_series, myocardium_hole_voxels
from ctp_steps.segmentation.stage import MYO_CLASS
from ctp_steps.segmentation.train import dice
from ctp_steps.segmentation.vbnet import load_checkpoint
from ctp_steps.validation.truth import truth_in_reference_frame, truth_map_in_reference_frame

MYOCARDIUM_LABEL = 3  # the phantom's label of the myocardium
FRAME_CLASSES = {1: "aorta", 2: "lv"}  # the frames model's classes = the phantom's frame labels
INPUT = {"myocardium": "average.nii.gz", "frames": "series.nii.gz"}


def patient_dirs(results: Path, task: str) -> list[Path]:
    return sorted(p.parent for p in (results / "patients").glob(f"*/*/{INPUT[task]}"))


def score_frames(model: LoadedModel, patient: Path, truth_dir: Path) -> dict:
    series, geometry = read_series(patient / "series.nii.gz")
    pred = clean_series(predict(model, series.astype(np.float32), tuple(geometry.spacing[::-1]), 4, False), tuple(FRAME_CLASSES))
    truth, truth_geometry = read_series(truth_dir / "frame_labels.nii.gz")
    if truth.shape != pred.shape or not truth_geometry.allclose(geometry):
        truth = np.stack([truth_in_reference_frame(t, truth_geometry, None, geometry, pred.shape[1:]) for t in truth])
    out = {}
    for label, name in FRAME_CLASSES.items():
        out[f"dice_{name}"] = dice(pred == label, truth == label)
        out[f"dice_min_frame_{name}"] = min(dice(p == label, t == label) for p, t in zip(pred, truth))
    return out


def score_myocardium(model: LoadedModel, patient: Path, truth_dir: Path) -> dict:
    average, geometry = read_volume(patient / "average.nii.gz")
    labels = predict(model, average[None].astype(np.float32), tuple(geometry.spacing[::-1]), 1, False)[0]
    mask = clean_labels(labels, (MYO_CLASS,), myocardium_hole_voxels(geometry.spacing)) == MYO_CLASS
    truth, _ = truth_map_in_reference_frame(truth_dir, "labels", patient / "register.status.json", geometry, average.shape)
    true_mask = truth == MYOCARDIUM_LABEL
    return {"dice_myocardium": dice(mask, true_mask), "volume_ratio": float(mask.sum() / max(true_mask.sum(), 1))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=sorted(INPUT), default="myocardium")
    ap.add_argument("--runs", nargs="+", required=True, help="family=results_dir of finished runs")
    ap.add_argument("--checkpoints", nargs="+", required=True, help="name=checkpoint.pt")
    ap.add_argument("--out", default=None, help="per-patient CSV")
    ap.add_argument("--markdown", default=None, help="the summary as a Markdown table (for a model card)")
    args = ap.parse_args()
    score = score_frames if args.task == "frames" else score_myocardium
    rows = []
    for spec in args.checkpoints:
        name, path = spec.split("=", 1)
        net, meta = load_checkpoint(Path(path))
        model = LoadedModel(net.eval(), meta, torch.device("cpu"))
        for run in args.runs:
            family, results = run.split("=", 1)
            for patient in patient_dirs(Path(results), args.task):
                rel = patient.relative_to(Path(results) / "patients")
                truth_dir = Path(results) / "synthetic" / "truth" / rel
                rows.append({"checkpoint": name, "family": family, "patient": str(rel), **score(model, patient, truth_dir)})
    table = pd.DataFrame(rows)
    if args.out:
        table.to_csv(args.out, index=False)
    metrics = [c for c in table.columns if c not in ("checkpoint", "family", "patient")]
    summary = table.groupby(["family", "checkpoint"])[metrics].mean()
    summary.insert(0, "patients", table.groupby(["family", "checkpoint"]).size())
    print(summary.round(3).to_string())
    if args.markdown:
        head = "| family | checkpoint | patients | " + " | ".join(m.replace("_", " ") for m in metrics) + " |"
        lines = [head, "|" + " --- |" * (3 + len(metrics))]
        lines += [f"| {f} | {c} | {int(r.patients)} | " + " | ".join(f"{r[m]:.3f}" for m in metrics) + " |"
                  for (f, c), r in summary.iterrows()]
        Path(args.markdown).write_text("\n".join(lines) + "\n")

if __name__ == "__main__":
    main()
