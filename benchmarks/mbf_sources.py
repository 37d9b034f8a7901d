"""Which voxels should feed the regularised MBF map? The `mbf.regularisation.sources` rules on finished runs.

    .venv/bin/python benchmarks/mbf_sources.py --run /tmp/val16 --rules depth depth_and_blood away_from_blood

For every patient of a finished run (`all validate`, synthetic cohort) whose `mbf` is ok, `estimate_mbf` and
`patient_uncertainty` (the stage's computation) run on the stage's own inputs (registered series, myocardium,
AHA map, AIF) once per rule, everything else at the config's defaults; the IMV stage's rule
(`ischemic_region`, default `IMVConfig`) then gives IMV%. Against the phantom's truth (`truth.json`: segment
and global MBF, IMV% of the true myocardium): global bias % (mean and p05-p95, and mean |bias|), segment RMSE
and ICC(2,1), coverage of the 95 % intervals (segment, global), |IMV% error| and the share of mask voxels that
are sources. Per patient with `--per-patient`. Nothing here is used by the pipeline; it reads the truth.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RULES = ("depth", "depth_and_blood", "away_from_blood")


def patient_rows(patient_dir: Path, truth: dict, rules: list[str]) -> list[dict]:
    """One row per rule: global, segment and IMV figures of this patient."""
    import torch

    from ctp_steps.imv import IMVConfig, ischemic_region
    from ctp_steps.layout import file_name
    from ctp_steps.mbf.config import MBFConfig
    from ctp_steps.mbf.estimate import estimate_mbf
    from ctp_steps.mbf.stage import Inputs, read_inputs
    from ctp_steps.mbf.uncertainty import patient_uncertainty

    inputs = read_inputs(Inputs(**{k: patient_dir / file_name(n) for k, n in (
        ("frames", "frames"), ("series", "registered"), ("myocardium", "myocardium"), ("aha", "aha17"),
        ("aif", "aif"))}))
    true_segments = np.array([np.nan if v is None else v for v in truth["mbf_segments"]], dtype=float)
    rows, cpu = [], torch.device("cpu")
    for rule in rules:
        base = MBFConfig()
        cfg = base.model_copy(update={"regularisation": base.regularisation.model_copy(update={"sources": rule})})
        est = estimate_mbf(inputs, cfg, cpu)
        unc = patient_uncertainty(est, cfg, cpu, cfg.uncertainty)
        mbf = est.regularised.mbf
        ids = [s for s in sorted(unc.segments) if np.isfinite(true_segments[s - 1])]
        seg_est = np.array([mbf[est.segments == s].mean() for s in ids])
        seg_true = true_segments[np.array(ids) - 1]
        low = np.array([unc.segments[s]["mbf_ci_low"] for s in ids])
        high = np.array([unc.segments[s]["mbf_ci_high"] for s in ids])
        ischemia = ischemic_region(est.volume(mbf), inputs.myocardium, inputs.aha17, inputs.geometry.voxel_ml,
                                   IMVConfig()).ischemia
        rec, g_true = unc.record, truth["mbf_global"]
        rows.append({
            "patient": patient_dir.name, "rule": rule, "global_bias_pct": 100 * (mbf.mean() / g_true - 1),
            "global_covered": float(rec["mbf_global_ci_low"] <= g_true <= rec["mbf_global_ci_high"]),
            "segment_covered": float(np.mean((low <= seg_true) & (seg_true <= high))),
            "seg_est": seg_est, "seg_true": seg_true,
            "imv_abs_error": abs(100 * ischemia.sum() / inputs.myocardium.sum() - truth["imv_pct"]),
            "source_share": float(est.sources.mean()) if est.sources is not None else 1.0,
        })
    return rows


def main() -> None:
    import pandas as pd
    import torch

    from ctp_steps.io import read_json, read_status
    from ctp_steps.layout import status_name
    from ctp_steps.validation.mbf import icc_2_1

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="the run's working directory (holding results/)")
    ap.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    ap.add_argument("--per-patient", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = Path(args.run) / "results"
    rows = []
    for truth_dir in sorted((results / "synthetic" / "truth").glob("*/*")):
        patient_dir = results / "patients" / truth_dir.parent.name / truth_dir.name
        status = patient_dir / status_name("mbf")
        if status.is_file() and read_status(status).status == "ok":
            rows += patient_rows(patient_dir, read_json(truth_dir / "truth.json"), args.rules)
            print(truth_dir.name, file=sys.stderr, flush=True)
    d = pd.DataFrame(rows)
    lines = ["| rule | patients | global bias % mean (p05…p95) | mean abs global bias % | segment RMSE | segment ICC | "
             "coverage segment / global | abs IMV% error | sources (share of mask) |",
             "|---|---:|---|---:|---:|---:|---|---:|---:|"]
    for rule in args.rules:
        r = d[d.rule == rule]
        est, true = np.concatenate(r.seg_est.to_list()), np.concatenate(r.seg_true.to_list())
        b = r.global_bias_pct
        lines.append(
            f"| {rule} | {len(r)} | {b.mean():+.1f} ({b.quantile(0.05):+.1f}…{b.quantile(0.95):+.1f}) | "
            f"{b.abs().mean():.1f} | {np.sqrt(np.mean((est - true) ** 2)):.1f} | "
            f"{icc_2_1(np.stack([est, true], axis=1)):.3f} | {r.segment_covered.mean():.3f} / "
            f"{r.global_covered.mean():.3f} | {r.imv_abs_error.mean():.2f} | {r.source_share.mean():.2f} |")
    print("\n".join(lines))
    if args.per_patient:
        wide = d.pivot(index="patient", columns="rule", values=["global_bias_pct", "imv_abs_error"]).round(1)
        print("\n" + wide.to_markdown())


if __name__ == "__main__":
    main()
