"""Where MBF error comes from: the MBF estimator on phantom variants with perfect masks and no motion.

    .venv/bin/python benchmarks/mbf_error_budget.py --n-patients 6 --variants default no_noise fixed_ps_120 motion_undone

Each variant changes the phantom (params below), renders N cohort-role patients
without motion (`motion_undone`: with the default motion, every frame moved back
with the true displacement, i.e. a perfect registration), and runs `estimate_mbf`
(the stage's computation, default config with the variant's PS) on the true myocardium, AHA map and an AIF from the eroded
true aorta. It prints segment-level agreement with the truth (ICC(2,1), bias,
RMSE) for the regularised map, the voxel-wise map and the fit of the segment mean
curves, and for the maps the IMV stage's result (default threshold) against the
true ischemia: mean |IMV% error| (signed mean in brackets) and Dice where true
IMV% >= 5; `--per-patient` adds each patient's mean segment error and shared kinetics.
Registration, segmentation and landmark errors are thereby excluded:
what is left is physics (extraction), noise and partial volume.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS: dict[str, dict] = {
    "default": {},
    "no_noise": {"noise_sd_hu": (0.0, 0.0)},
    "noise_15_25": {"noise_sd_hu": (15.0, 25.0)},
    "fixed_ps_120": {"permeability_surface": 120.0, "ps_flow_slope": 0.0},
    "extraction_1": {"permeability_surface": 1e5, "noise_sd_hu": (15.0, 25.0)},
    "motion_undone": {},
}
MOVING = {"motion_undone"}


def main() -> None:
    import torch
    from scipy.ndimage import binary_erosion

    from ctp_steps.imv import IMVConfig, ischemic_region
    from ctp_steps.mbf.config import MBFConfig
    from ctp_steps.mbf.estimate import PerfusionInputs, estimate_mbf
    from ctp_steps.phantom import PhantomParams, displacement_field_mm, generate_patient, make_specs, undo_motion
    from ctp_steps.validation.mbf import icc_2_1, segment_means

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-patients", type=int, default=6)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--per-patient", action="store_true", help="also a row per patient: regularised map's error")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    specs = make_specs(args.n_patients, [("CTR-A", "series_per_frame")], 20260101)

    print("| variant | map | segment ICC | bias % | RMSE (mL/100mL/min) | abs. IMV% error (signed) | ischemic Dice |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in args.variants:
        still = {} if name in MOVING else {"rigid_shift_max_mm": 0.0, "deformation_max_mm": 0.0}
        params = PhantomParams(**still, **VARIANTS[name])
        cfg = MBFConfig(ps_ml_100ml_min=params.permeability_surface, ps_flow_slope=params.ps_flow_slope)
        pairs: dict[str, list] = {"regularised": [], "voxel-wise": [], "segment curve fit": []}
        imv_errors: dict[str, list] = {"regularised": [], "voxel-wise": []}
        dices: dict[str, list] = {"regularised": [], "voxel-wise": []}
        for spec in specs:
            p = generate_patient(spec, params)
            frames = p.frames_hu
            if name in MOVING:
                motion = p.truth["motion"]["frames"]
                frames = np.stack([undo_motion(f, displacement_field_mm(m, p.geometry, f.shape), p.geometry)
                                   for f, m in zip(frames, motion)])
            myo = p.labels == 3
            aif = frames[:, binary_erosion(p.labels == 1)].mean(axis=1)
            inputs = PerfusionInputs(frames, p.geometry, p.frame_times_s, aif, myo, np.where(myo, p.aha17, 0))
            est = estimate_mbf(inputs, cfg, torch.device("cpu"))
            truth = np.array([np.nan if v is None else v for v in p.truth["mbf_segments"]])
            fitted = dict(zip(est.segment_ids.tolist(), est.segment_fit.mbf.tolist()))
            maps = {
                "regularised": segment_means(est.volume(est.regularised.mbf), myo, inputs.aha17),
                "voxel-wise": segment_means(est.volume(est.raw.mbf), myo, inputs.aha17),
                "segment curve fit": np.array([fitted.get(s, np.nan) for s in range(1, 18)]),
            }
            for key, values in maps.items():
                ok = np.isfinite(truth) & np.isfinite(values)
                pairs[key] += list(zip(values[ok], truth[ok]))
            if args.per_patient:
                ok = np.isfinite(truth) & np.isfinite(maps["regularised"])
                d = maps["regularised"][ok] - truth[ok]
                sh = est.shared
                print(f"| {name} | {spec.patient_id} ({p.truth['noise_sd_hu']:.1f} HU) | segment error "
                      f"{100 * d.mean() / truth[ok].mean():+.1f} %, SD {d.std():.1f} | shared delay {sh.delay_s:.2f} s, "
                      f"ve {sh.ve:.3f}, vb {sh.vb:.3f} | | | |", flush=True)
            true_ischemia = myo & (p.mbf < p.truth["ischemia_threshold_mbf"])
            voxel_ml = float(np.prod(p.geometry.spacing)) / 1000.0
            for key, fit in (("regularised", est.regularised), ("voxel-wise", est.raw)):
                ischemia = ischemic_region(est.volume(fit.mbf), myo, inputs.aha17, voxel_ml, IMVConfig()).ischemia
                imv_errors[key].append(100.0 * (ischemia.sum() - true_ischemia.sum()) / myo.sum())
                if true_ischemia.sum() >= 0.05 * myo.sum():
                    dices[key].append(2.0 * (ischemia & true_ischemia).sum() / (ischemia.sum() + true_ischemia.sum()))
        for key, rows in pairs.items():
            r = np.asarray(rows)
            d = r[:, 0] - r[:, 1]
            imv = (f"{np.mean(np.abs(imv_errors[key])):.1f} ({np.mean(imv_errors[key]):+.1f}) | "
                   f"{np.mean(dices[key]):.2f} (n={len(dices[key])})") if key in imv_errors else "– | –"
            print(f"| {name} | {key} | {icc_2_1(r):.3f} | {100 * d.mean() / r[:, 1].mean():+.1f} | "
                  f"{np.sqrt((d**2).mean()):.1f} | {imv} |", flush=True)


if __name__ == "__main__":
    main()
