"""Why do the MBF stage's 95 % intervals miss through the pipeline? Two experiments that split the error.

    # 1. the pipeline's own inputs, one replaced at a time by the phantom's truth
    .venv/bin/python benchmarks/mbf_interval_attribution.py inputs --run /tmp/val16 \
        --swaps pipeline aif aha mask mask+aha+aif
    # 2. oracle masks, no motion: each patient's noise-free twin and noise replicates
    .venv/bin/python benchmarks/mbf_interval_attribution.py twins --n-patients 16 --replicates 8

`inputs` reads a finished run (`all validate`, synthetic cohort): for every patient whose `mbf` is ok it
re-runs `estimate_mbf` and `patient_uncertainty` (the stage's computation, default `MBFConfig`) on the
registered series with the pipeline's myocardium, AHA map and AIF, and with one or more of them replaced by
the truth moved into the reference frame (`truth_maps`): `mask` the true myocardium (keeping the pipeline's
AHA labels, each voxel the nearest labelled one), `aha` the true AHA labels on the pipeline's mask (nearest
true label), `aif` the true aortic curve at the frame times (plus the pipeline AIF's baseline). If a swap
brings coverage to 0.95, that stage's error is what the intervals miss.

`twins` renders cohort-role patients of the configured synthetic cohort (same seed and centres as
`config/config.yaml`, so S0001... are the run's patients) without motion, with true masks and an AIF from the
eroded true aorta, once noise-free and `--replicates` times with fresh noise of the patient's own SD and
correlation. The noise-free error is the estimator's structural error on that patient (no interval built
from noise can cover it); the replicates' SD against the root-mean reported SE tells whether the SE
describes the noise (ratio 1).

Per level (segment, global): coverage of the 95 % intervals, SD and mean of z = (estimate - truth) / SE,
RMSE and root-mean SE. Nothing here is used by the pipeline; it reads the truth.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SWAPS = ("pipeline", "aif", "aha", "mask", "mask+aha", "mask+aha+aif")


def nearest_labels(labels: np.ndarray, onto: np.ndarray) -> np.ndarray:
    """`labels` (0 = none) carried onto the voxels of `onto`: each takes the nearest labelled voxel's label."""
    from scipy import ndimage

    idx = ndimage.distance_transform_edt(labels == 0, return_distances=False, return_indices=True)
    return np.where(onto, labels[tuple(idx)], 0).astype(labels.dtype)


def swapped(inputs, swap: str, true_myo: np.ndarray, true_aha: np.ndarray, true_aif_hu: np.ndarray):
    """The pipeline's `PerfusionInputs` with the parts named in `swap` ("mask+aha", ...) replaced by the truth."""
    parts = set(swap.split("+")) - {"pipeline"}
    mask = true_myo if "mask" in parts else inputs.myocardium
    aha = inputs.aha17 if not parts & {"mask", "aha"} else nearest_labels(true_aha if "aha" in parts else inputs.aha17, mask)
    aif = true_aif_hu if "aif" in parts else inputs.aif_hu
    return dataclasses.replace(inputs, myocardium=mask, aha17=aha, aif_hu=aif)


def estimate_rows(inputs, true_segments: np.ndarray, true_global: float, key: dict) -> list[dict]:
    """One row per segment and one for global: estimate, truth, SE and 95 % interval of the stage's computation."""
    import torch

    from ctp_steps.mbf.config import MBFConfig
    from ctp_steps.mbf.estimate import estimate_mbf
    from ctp_steps.mbf.uncertainty import patient_uncertainty

    cfg, cpu = MBFConfig(), torch.device("cpu")
    est = estimate_mbf(inputs, cfg, cpu)
    unc = patient_uncertainty(est, cfg, cpu, cfg.uncertainty)
    mbf, rows = est.regularised.mbf, []
    for s, u in sorted(unc.segments.items()):
        if np.isfinite(true_segments[s - 1]):
            rows.append(key | {"level": "segment", "region": s, "est": float(mbf[est.segments == s].mean()),
                               "true": float(true_segments[s - 1]), "se": u["mbf_se"], "low": u["mbf_ci_low"],
                               "high": u["mbf_ci_high"]})
    rec = unc.record
    rows.append(key | {"level": "global", "region": 0, "est": float(mbf.mean()), "true": float(true_global),
                       "se": rec["mbf_global_se"], "low": rec["mbf_global_ci_low"], "high": rec["mbf_global_ci_high"]})
    return rows


def level_table(rows, by: list[str]):
    """Coverage, z SD / mean, RMSE and root-mean SE per group of `by` + level."""
    import pandas as pd

    d = pd.DataFrame(rows)
    d["z"] = (d.est - d.true) / d.se
    d["covered"] = (d.low <= d.true) & (d.true <= d.high)
    d["err2"], d["se2"] = (d.est - d.true) ** 2, d.se**2
    g = d.groupby([*by, "level"])
    return pd.DataFrame({
        "n": g.size(), "coverage": g.covered.mean(), "z_sd": g.z.std(), "z_mean": g.z.mean(),
        "rmse": np.sqrt(g.err2.mean()), "se_rms": np.sqrt(g.se2.mean()),
    }).round(3), d


def run_inputs(args) -> None:
    from ctp_steps.io import read_json, read_status
    from ctp_steps.layout import file_name, status_name
    from ctp_steps.mbf.stage import Inputs, read_inputs
    from ctp_steps.validation.truth import MYOCARDIUM, truth_maps

    results = Path(args.run) / "results"
    rows = []
    for truth_dir in sorted((results / "synthetic" / "truth").glob("*/*")):
        patient_dir = results / "patients" / truth_dir.parent.name / truth_dir.name
        status = patient_dir / status_name("mbf")
        if not status.is_file() or read_status(status).status != "ok":
            continue
        truth = read_json(truth_dir / "truth.json")
        inputs = read_inputs(Inputs(**{k: patient_dir / file_name(n) for k, n in (
            ("frames", "frames"), ("series", "registered"), ("myocardium", "myocardium"), ("aha", "aha17"),
            ("aif", "aif"))}))
        _, labels, true_aha, _ = truth_maps(truth_dir, patient_dir, inputs.geometry, inputs.myocardium.shape)
        true_myo = labels == MYOCARDIUM
        true_aha = np.where(true_myo, true_aha, 0).astype(inputs.aha17.dtype)
        # the truth's AIF is enhancement; the stage subtracts its own baseline, so give it the pipeline's
        true_aif = np.asarray(truth["aif"], dtype=float) + float(np.median(inputs.aif_hu[:2]))
        true_segments = np.array([np.nan if v is None else v for v in truth["mbf_segments"]], dtype=float)
        for swap in args.swaps:
            x = swapped(inputs, swap, true_myo, true_aha, true_aif)
            rows += estimate_rows(x, true_segments, truth["mbf_global"], {"patient": truth_dir.name, "swap": swap})
        print(truth_dir.name, file=sys.stderr, flush=True)
    table, d = level_table(rows, ["swap"])
    print(table.to_markdown())
    if args.per_patient:
        glob = d[d.level == "global"].pivot(index="patient", columns="swap", values="z").round(2)
        print("\nglobal z per patient\n" + glob.to_markdown())


def run_twins(args) -> None:
    import torch
    import yaml
    from scipy.ndimage import binary_erosion

    from ctp_steps.mbf.estimate import PerfusionInputs
    from ctp_steps.phantom import PhantomParams, generate_patient, make_specs
    from ctp_steps.phantom.patient import CT_RANGE_HU
    from ctp_steps.phantom.render import add_noise

    torch.set_num_threads(args.threads)
    synthetic = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["synthetic"]
    centers = [(c["name"], c["vendor_style"]) for c in synthetic["centers"]]
    specs = make_specs(args.n_patients, centers, args.seed if args.seed is not None else synthetic["seed"])
    params = PhantomParams(rigid_shift_max_mm=0.0, deformation_max_mm=0.0)
    rows = []
    for spec in specs:
        p = generate_patient(spec, params, with_noise=False)
        myo = p.labels == 3
        aha = np.where(myo, p.aha17, 0)
        aorta = binary_erosion(p.labels == 1)
        true_segments = np.array([np.nan if v is None else v for v in p.truth["mbf_segments"]], dtype=float)
        for rep in range(-1, args.replicates):  # -1: the noise-free twin
            frames = p.frames_hu if rep < 0 else np.clip(add_noise(
                p.frames_hu, p.truth["noise_sd_hu"], np.random.default_rng(1000 + rep),
                params.noise_correlation_sigma_vox), *CT_RANGE_HU)
            inputs = PerfusionInputs(frames, p.geometry, p.frame_times_s, frames[:, aorta].mean(axis=1), myo, aha)
            key = {"patient": spec.patient_id, "draw": "noise_free" if rep < 0 else "noisy", "rep": rep,
                   "imv_pct": p.truth["imv_pct"]}
            rows += estimate_rows(inputs, true_segments, p.truth["mbf_global"], key)
        print(spec.patient_id, file=sys.stderr, flush=True)
    table, d = level_table([r for r in rows if r["draw"] == "noisy"], [])
    print("noise replicates, all patients\n" + table.to_markdown())
    glob = d[d.level == "global"].groupby("patient")
    free = {r["patient"]: r for r in rows if r["draw"] == "noise_free" and r["level"] == "global"}
    lines = ["| patient | true IMV % | true global | noise-free error % | replicate mean error % | replicate SD | "
             "RMS SE | SD / SE | coverage |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for pid, g in glob:
        t = g.true.iloc[0]
        lines.append(f"| {pid} | {g.imv_pct.iloc[0]:.1f} | {t:.1f} | {100 * (free[pid]['est'] / t - 1):+.1f} | "
                     f"{100 * (g.est.mean() / t - 1):+.1f} | {g.est.std():.1f} | {np.sqrt((g.se**2).mean()):.1f} | "
                     f"{g.est.std() / np.sqrt((g.se**2).mean()):.2f} | {g.covered.mean():.2f} |")
    print("\nglobal MBF per patient\n" + "\n".join(lines))
    seg = d[d.level == "segment"].groupby(["patient", "region"])
    ratio = seg.est.std() / np.sqrt(seg.se.apply(lambda s: float((s**2).mean())))
    print(f"\nsegments: replicate SD / RMS SE median {ratio.median():.2f} (p10 {ratio.quantile(0.1):.2f}, "
          f"p90 {ratio.quantile(0.9):.2f}) over {len(ratio)} segments")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    a = sub.add_parser("inputs", help="a finished run's patients, inputs swapped for the truth")
    a.add_argument("--run", required=True, help="the run's working directory (holding results/)")
    a.add_argument("--swaps", nargs="+", default=list(SWAPS), choices=SWAPS)
    a.add_argument("--per-patient", action="store_true", help="also each patient's global z per swap")
    b = sub.add_parser("twins", help="oracle masks, no motion: noise-free twin and noise replicates")
    b.add_argument("--n-patients", type=int, default=16)
    b.add_argument("--replicates", type=int, default=8)
    b.add_argument("--seed", type=int, default=None, help="cohort seed (default: config/config.yaml's)")
    b.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(getattr(args, "threads", 1))
    run_inputs(args) if args.mode == "inputs" else run_twins(args)


if __name__ == "__main__":
    main()
