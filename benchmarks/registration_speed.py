"""Learned registration vs the SimpleITK baseline on the same phantom patients, in one run.

    .venv/bin/python benchmarks/registration_speed.py --n-patients 4 --threads 2

Patients are the default cohort's first N (role `cohort`, held out from training),
rendered on the default grid; the LV masks fed to both methods are either the
true per-frame masks (`--masks truth`: what the `segment_frames` oracle gives) or
the shipped frame VB-Net's (`--masks vbnet`: what the default pipeline gives). Each method runs the
stage's in-memory path (`register_arrays`: reference choice, LV box, method,
field pasted back, frames and masks warped, QC) with the same thread count;
accuracy is measured against the phantom's true motion (ctp_steps.validation.registration).
Rows: learned (shipped weights, loaded per patient as a pipeline job does),
simpleitk (the configured baseline), optionally simpleitk-fast (a coarse,
short B-spline), and the LV-centroid translation alone (the initialisation both
methods start from). Prints a markdown table; times are wall seconds per patient.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METRICS = [
    ("lv_dice_before", "lv"),
    ("lv_dice_after", "lv"),
    ("lv_dice_exact_field", "lv"),
    ("myocardium_dice_after", "myocardium"),
    ("tre_mm", "landmarks"),
    ("tre_max_mm", "landmarks"),
    ("field_error_mm", "myocardium"),
    ("jacobian_nonpos_frac", "lv_box"),
]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    import SimpleITK as sitk
    import torch

    from ctp_steps.phantom import PhantomParams, generate_patient, make_specs
    from ctp_steps.registration.config import RegistrationConfig, SimpleITKConfig
    from ctp_steps.registration.crop import box_region
    from ctp_steps.registration.learned import LearnedRegistrar, resolve_device
    from ctp_steps.registration.stage import register_arrays
    from ctp_steps.validation.registration import metrics_from_arrays
    from ctp_steps.registration.warp import crop_geometry

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-patients", type=int, default=4)
    ap.add_argument("--seed", type=int, default=20261127, help="cohort seed (the default config's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--weights", help="checkpoint (default: the shipped, checksum-verified regnet)")
    ap.add_argument("--methods", default="learned,simpleitk,simpleitk-fast,translation")
    ap.add_argument("--masks", default="truth", choices=("truth", "vbnet"), help="source of the per-frame LV masks")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    device = resolve_device(args.device)
    if args.weights:
        weights = Path(args.weights)
    else:
        from ctp_steps.models import verified_weights

        weights = verified_weights("regnet")
    cfg = RegistrationConfig()
    fast = cfg.model_copy(update={"simpleitk": SimpleITKConfig(bspline_mesh=2, bspline_iterations=20, affine_iterations=50)})
    methods = args.methods.split(",")
    centers = [("CTR-A", "series_per_frame"), ("CTR-B", "temporal_position"), ("CTR-C", "trigger_time"), ("CTR-D", "temporal_position")]
    specs = make_specs(args.n_patients, centers, args.seed, role="cohort")

    times: dict[str, list[float]] = {m: [] for m in methods}
    method_times: dict[str, list[float]] = {m: [] for m in methods}
    values: dict[str, dict[tuple[str, str], list[float]]] = {m: {} for m in methods}
    n_frames = []
    segmenter = None
    if args.masks == "vbnet":
        from ctp_steps.models import verified_weights as _verified
        from ctp_steps.segmentation.config import SegmentationConfig
        from ctp_steps.segmentation.infer import load_model

        seg_cfg = SegmentationConfig()
        segmenter = load_model(_verified(seg_cfg.frames_model), device)
    mask_dice = []
    for spec in specs:
        patient = generate_patient(spec, PhantomParams())
        masks = np.where(np.isin(patient.frame_labels, (1, 2)), patient.frame_labels, 0).astype(np.uint8)
        if segmenter is not None:  # exactly what the segment_frames stage writes
            from ctp_steps.registration.qc import dice
            from ctp_steps.segmentation.infer import predict
            from ctp_steps.segmentation.postprocess import clean_series

            truth_masks = masks
            masks = clean_series(
                predict(segmenter, patient.frames_hu.astype(np.float32), tuple(patient.geometry.spacing[::-1]),
                        seg_cfg.batch_size, seg_cfg.amp), (1, 2)
            ).astype(np.uint8)
            mask_dice.append(np.mean([dice(m == 2, t == 2) for m, t in zip(masks, truth_masks)]))
        n_frames.append(len(patient.frame_times_s))
        for method in methods:
            t0 = time.perf_counter()
            if method == "learned":
                registrar = LearnedRegistrar.from_checkpoint(weights, device, cfg.inference_batch)
                res = register_arrays(patient.frames_hu, masks, patient.geometry, "learned", cfg, device, weights,
                                      args.threads, registrar=registrar)
            elif method == "simpleitk-fast":
                res = register_arrays(patient.frames_hu, masks, patient.geometry, "simpleitk", fast, device, None, args.threads)
            else:
                res = register_arrays(patient.frames_hu, masks, patient.geometry, method, cfg, device, None, args.threads)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[method].append(time.perf_counter() - t0)
            rep = res["report"]
            method_times[method].append(rep["seconds"]["method"])
            b = rep["box"]
            region = box_region(patient.geometry, patient.frames_hu.shape[1:], crop_geometry(b["center_mm"], b["size"], b["spacing_mm"]), b["size"])
            rows = metrics_from_arrays(res["fields"], patient.geometry, rep["reference_frame"], patient.frame_labels,
                                       patient.truth["motion"]["frames"], patient.truth["landmarks"], region)
            for metric, target, value in rows:
                values[method].setdefault((metric, target), []).append(value)
            print(f"{spec.patient_id} {method}: {times[method][-1]:.1f} s ({rep['seconds']}), LV Dice "
                  f"{np.mean([v for m, t, v in rows if m == 'lv_dice_after']):.3f}", file=sys.stderr)

    ref = "simpleitk" if "simpleitk" in methods else methods[0]
    print(f"Registration benchmark: `{' '.join(sys.argv)}`  ")
    print(f"Machine: {cpu_name()}, {args.threads} threads, device {device}; torch {torch.__version__}, "
          f"SimpleITK {sitk.Version_VersionString()}; {dt.datetime.now().isoformat(timespec='minutes')}  ")
    print(f"Patients: {len(specs)} cohort phantoms ({', '.join(s.patient_id for s in specs)}), "
          f"{np.mean(n_frames):.1f} frames each, default grid; LV masks: "
          + ("true frame masks" if args.masks == "truth" else
             f"frame VB-Net (LV Dice to truth {np.mean(mask_dice):.3f})") + ".\n")
    head = ["method", "s / patient (stage)", f"speed-up vs {ref}", "s / patient (method only)", "speed-up (method)"]
    head += [f"{m} ({t})" for m, t in METRICS]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for method in methods:
        t = np.asarray(times[method])
        tm = np.asarray(method_times[method])
        cells = [method, f"{t.mean():.1f} ± {t.std():.1f}", f"{np.mean(times[ref]) / t.mean():.1f}×",
                 f"{tm.mean():.2f}",
                 f"{np.mean(method_times[ref]) / tm.mean():.1f}×" if tm.mean() >= 0.01 else "—"]
        for key in METRICS:
            v = values[method].get(key, [np.nan])
            cells.append(f"{np.mean(v):.2e}" if key[0] == "jacobian_nonpos_frac" else f"{np.mean(v):.3f}")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
