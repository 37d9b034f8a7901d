"""Landmark net(s) on the registered averages and myocardium masks of finished runs, against the phantom's truth.

Isolates the heatmap net from the stage's fallback and exclusion rules: each checkpoint detects apex, base
and RV insertion on the same `average.nii.gz` + `myocardium.nii.gz` of finished runs (e.g. `validate` runs
with `stages.registration: oracle`, whose averages sit on the un-moved anatomy, so the truth landmarks
apply as they are); errors in mm and the confidences the stage would test. `--stage` adds what the stage
would keep (ctp_steps.landmarks.stage.choose_landmarks and settle_landmarks with the default config:
implausible or unsure net landmarks replaced by the fallbacks', the RV insertion settled) as `<checkpoint>+stage`
rows; `--apex` and `--rv-insertion` list the `landmarks.apex` / `landmarks.rv_insertion` modes to compare
(one `+stage:<apex mode>:<rv mode>` row per pair).
The RV insertion's angle about the true long axis is reported beside its distance (`rv_angle_deg`).

    python benchmarks/landmark_net_check.py --runs default=/tmp/d/results shifted=/tmp/s/results \
        --checkpoints first=old.pt randomised=models/landmark_net.pt --markdown table.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ctp_steps.io import read_json, read_status, read_volume
from ctp_steps.landmarks.config import LandmarkConfig
from ctp_steps.landmarks.infer import LandmarkDetector
from ctp_steps.landmarks.stage import choose_landmarks, settle_landmarks
from ctp_steps.types import PatientInputError


def oracle_aligned(patient: Path) -> bool:
    """True when the run's registration aligned to the un-moved anatomy (the truth landmarks apply as they are)."""
    status = patient / "register.status.json"
    return status.is_file() and read_status(status).record.get("registration_reference_frame") is None


def rv_angle_deg(truth: dict, found: dict) -> float:
    """Angle (°) about the true long axis between the true and the found RV insertion (what the AHA map uses)."""
    base = np.asarray(truth["base"], float)
    u = np.asarray(truth["apex"], float) - base
    u /= np.linalg.norm(u)

    def about_axis(p) -> np.ndarray:
        d = np.asarray(p, float) - base
        d = d - (d @ u) * u
        return d / np.linalg.norm(d)

    return float(np.degrees(np.arccos(np.clip(about_axis(truth["rv_insertion"]) @ about_axis(found["rv_insertion"]),
                                              -1.0, 1.0))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", required=True, help="family=results_dir of finished runs (oracle registration)")
    ap.add_argument("--checkpoints", nargs="+", required=True, help="name=checkpoint.pt")
    ap.add_argument("--markdown", default=None, help="the summary as a Markdown table")
    ap.add_argument("--stage", action="store_true", help="also the landmarks the stage keeps (net + fallback)")
    ap.add_argument("--rv-insertion", nargs="+", default=None,
                    help="with --stage: landmarks.rv_insertion modes to compare (default: the config's)")
    ap.add_argument("--apex", nargs="+", default=None,
                    help="with --stage: landmarks.apex modes to compare (default: the config's)")
    ap.add_argument("--per-patient", action="store_true", help="print every patient's errors")
    args = ap.parse_args()
    rows = []
    for spec in args.checkpoints:
        name, path = spec.split("=", 1)
        detector = LandmarkDetector.from_checkpoint(path, torch.device("cpu"))
        for run in args.runs:
            family, results = run.split("=", 1)
            root = Path(results)
            for mask_path in sorted((root / "patients").glob("*/*/myocardium.nii.gz")):
                patient = mask_path.parent
                if mask_path.stat().st_size == 0 or not oracle_aligned(patient):
                    continue
                rel = patient.relative_to(root / "patients")
                average, geometry = read_volume(patient / "average.nii.gz")
                mask, _ = read_volume(mask_path)
                truth = read_json(root / "synthetic" / "truth" / rel / "truth.json")["landmarks"]
                det = detector.detect(average.astype(np.float32), mask > 0, geometry)
                found = [(name, det.world_mm, det.confidence, "heatmap")]
                modes = [(a, r) for a in (args.apex or [None]) for r in (args.rv_insertion or [None])]
                for apex_mode, rv_mode in modes if args.stage else []:
                    chosen_modes = {k: v for k, v in (("apex", apex_mode), ("rv_insertion", rv_mode)) if v}
                    cfg = LandmarkConfig(**chosen_modes)
                    label = f"{name}+stage" + "".join(f":{v}" for v in chosen_modes.values())
                    try:
                        chosen = choose_landmarks(det, average, mask > 0, geometry, cfg)
                        chosen = settle_landmarks(chosen, average, mask > 0, geometry, cfg)
                        found.append((label, chosen.world_mm, chosen.confidence, chosen.source))
                    except PatientInputError:
                        found.append((label, np.full((3, 3), np.nan), np.zeros(3), "excluded"))
                for label, world, confidence, source in found:
                    row = {"checkpoint": label, "family": family, "patient": str(rel), "source": source}
                    for i, landmark in enumerate(det.names):
                        row[f"{landmark}_mm"] = float(np.linalg.norm(world[i] - np.asarray(truth[landmark])))
                        row[f"{landmark}_conf"] = float(confidence[i])
                    row["rv_angle_deg"] = rv_angle_deg(truth, dict(zip(det.names, world)))
                    rows.append(row)
    table = pd.DataFrame(rows)
    if args.per_patient:
        print(table.round(2).to_string())
    errors = [c for c in table.columns if c.endswith("_mm")] + ["rv_angle_deg"]
    summary = table.groupby(["family", "checkpoint"]).agg(
        patients=("patient", "size"), **{c: (c, "mean") for c in errors}, **{f"{c}_max": (c, "max") for c in errors},
        min_confidence=("apex_conf", lambda s: float(table.loc[s.index, [c for c in table.columns if c.endswith("_conf")]].min(axis=1).min())),
    )
    print(summary.round(2).to_string())
    if args.markdown:
        lines = ["| family | checkpoint | patients | apex mm (max) | base mm (max) | RV insertion mm (max) "
                 "| RV angle ° (max) | lowest confidence |",
                 "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for (f, c), r in summary.iterrows():
            cells = [f"{r[e]:.1f} ({r[e + '_max']:.1f})" for e in ("apex_mm", "base_mm", "rv_insertion_mm", "rv_angle_deg")]
            lines.append(f"| {f} | {c} | {int(r.patients)} | " + " | ".join(cells) + f" | {r.min_confidence:.2f} |")
        Path(args.markdown).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
