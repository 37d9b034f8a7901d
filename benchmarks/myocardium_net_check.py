"""Myocardium net(s) on the registered averages of finished runs, against the phantom's truth.

Isolates the myocardium VB-Net from the rest of the pipeline: each checkpoint segments the same
`average.nii.gz` files (e.g. of a `validate` run with `stages.registration: oracle`, so the averages are
truly aligned) with the stage's own inference and post-processing, and is scored against the true
myocardium on the average's grid. Runs of both phantom families side by side show what a retraining
buys in distribution and on the shifted family.

    python benchmarks/myocardium_net_check.py --runs default=/tmp/d/results shifted=/tmp/s/results \
        --checkpoints shipped=models/vbnet_myocardium.pt new=results/training/vbnet_myocardium/vbnet_myocardium.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from ctp_steps.io import read_volume
from ctp_steps.segmentation.infer import LoadedModel, predict
from ctp_steps.segmentation.postprocess import clean_labels, myocardium_hole_voxels
from ctp_steps.segmentation.stage import MYO_CLASS
from ctp_steps.segmentation.train import dice
from ctp_steps.segmentation.vbnet import load_checkpoint
from ctp_steps.validation.truth import truth_map_in_reference_frame

MYOCARDIUM_LABEL = 3  # the phantom's label of the myocardium


def patient_dirs(results: Path) -> list[Path]:
    return sorted(p.parent for p in (results / "patients").glob("*/*/average.nii.gz"))


def score(model: LoadedModel, patient: Path, truth_dir: Path) -> dict:
    average, geometry = read_volume(patient / "average.nii.gz")
    labels = predict(model, average[None].astype(np.float32), tuple(geometry.spacing[::-1]), 1, False)[0]
    mask = clean_labels(labels, (MYO_CLASS,), myocardium_hole_voxels(geometry.spacing)) == MYO_CLASS
    truth, _ = truth_map_in_reference_frame(truth_dir, "labels", patient / "register.status.json", geometry, average.shape)
    true_mask = truth == MYOCARDIUM_LABEL
    return {"dice": dice(mask, true_mask), "ml": float(mask.sum() * geometry.voxel_ml),
            "true_ml": float(true_mask.sum() * geometry.voxel_ml)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", required=True, help="family=results_dir of finished runs")
    ap.add_argument("--checkpoints", nargs="+", required=True, help="name=checkpoint.pt")
    ap.add_argument("--out", default=None, help="per-patient CSV")
    ap.add_argument("--markdown", default=None, help="the summary as a Markdown table (for a model card)")
    args = ap.parse_args()
    rows = []
    for spec in args.checkpoints:
        name, path = spec.split("=", 1)
        net, meta = load_checkpoint(Path(path))
        model = LoadedModel(net.eval(), meta, __import__("torch").device("cpu"))
        for run in args.runs:
            family, results = run.split("=", 1)
            for patient in patient_dirs(Path(results)):
                rel = patient.relative_to(Path(results) / "patients")
                truth_dir = Path(results) / "synthetic" / "truth" / rel
                rows.append({"checkpoint": name, "family": family, "patient": str(rel), **score(model, patient, truth_dir)})
    table = pd.DataFrame(rows)
    if args.out:
        table.to_csv(args.out, index=False)
    summary = table.groupby(["family", "checkpoint"]).agg(
        n=("dice", "size"), dice_mean=("dice", "mean"), dice_min=("dice", "min"),
        volume_ratio=("ml", lambda s: float((s / table.loc[s.index, "true_ml"]).mean())))
    print(summary.round(3).to_string())
    if args.markdown:
        rows_md = ["| family | checkpoint | patients | mean Dice | min Dice | mask/true volume |", "| --- | --- | --- | --- | --- | --- |"]
        rows_md += [f"| {f} | {c} | {r.n} | {r.dice_mean:.3f} | {r.dice_min:.3f} | {r.volume_ratio:.2f} |"
                    for (f, c), r in summary.iterrows()]
        Path(args.markdown).write_text("\n".join(rows_md) + "\n")


if __name__ == "__main__":
    main()
