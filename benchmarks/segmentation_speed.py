"""Segmentation speed per patient (all frames): the shipped narrow VB-Net vs the published width.

    .venv/bin/python benchmarks/segmentation_speed.py [--threads 2] [--repeats 3] [--patients 1]

Times `segment_frames`' work on one default-grid phantom patient (the series in
memory; no file I/O): inference on every frame (batched, resampling included)
plus post-processing, and the myocardium model on the average. CPU at the
default (shipped) width and at the published width (16→256, random weights:
same cost); where CUDA is present, the same on GPU with and without AMP.
Prints a markdown table; ratios are against the published width on CPU
measured in the same run (the baseline a user of the published code would run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import time

import numpy as np
import torch


def _model(kind: str, task: str, device: torch.device):
    from ctp_steps.models import verified_weights
    from ctp_steps.segmentation.config import PUBLISHED_WIDTHS
    from ctp_steps.segmentation.infer import LoadedModel, load_model
    from ctp_steps.segmentation.vbnet import VBNet

    shipped = load_model(verified_weights(f"vbnet_{task}"), device)
    if kind == "shipped":
        return shipped
    net = VBNet(shipped.net.kwargs["in_channels"], shipped.net.kwargs["num_classes"], PUBLISHED_WIDTHS)
    return LoadedModel(net.to(device).eval(), shipped.meta, device)


def _time(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up (allocations, cuDNN autotune)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    from ctp_steps.phantom import PhantomParams, generate_patient, make_specs
    from ctp_steps.segmentation.infer import predict
    from ctp_steps.segmentation.postprocess import clean_labels, clean_series
    from ctp_steps.segmentation.vbnet import parameter_count

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    patient = generate_patient(make_specs(1, [("BENCH", "series_per_frame")], 99, role="test")[0], PhantomParams())
    series = patient.frames_hu.astype(np.float32)
    average = series.mean(axis=0)[None]
    spacing = tuple(patient.geometry.spacing[::-1])

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for kind in ("published", "shipped"):
            frames_model = _model(kind, "frames", device)
            myo_model = _model(kind, "myocardium", device)
            for amp in ([False, True] if device.type == "cuda" else [False]):
                def run():
                    labels = predict(frames_model, series, spacing, args.batch, amp)
                    clean_series(labels, (1, 2))
                    clean_labels(predict(myo_model, average, spacing, 1, amp)[0], (1,))

                seconds = _time(run, args.repeats, device)
                rows.append({
                    "device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({args.threads} threads)",
                    "widths": "x".join(map(str, frames_model.net.kwargs["widths"])),
                    "params": parameter_count(frames_model.net),
                    "batch": args.batch,
                    "amp": amp,
                    "seconds": seconds,
                })
    base = next(r["seconds"] for r in rows if r["device"].startswith("CPU") and r["widths"].startswith("16x"))
    print(f"Segmentation per patient ({series.shape[0]} frames of {series.shape[1:]} at {spacing} mm: "
          "frames model on every frame + post-processing + myocardium model on the average)")
    print(f"`python benchmarks/segmentation_speed.py --threads {args.threads} --repeats {args.repeats} --batch {args.batch}`; "
          f"{platform.node()} ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"{dt.date.today().isoformat()}; median of {args.repeats} after a warm-up\n")
    print("| device | widths | parameters (frames model) | batch | AMP | s / patient | frames / s | speed-up vs published on CPU |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['device']} | {r['widths']} | {r['params']:,} | {r['batch']} | {'yes' if r['amp'] else 'no'} | "
              f"{r['seconds']:.2f} | {series.shape[0] / r['seconds']:.1f} | {base / r['seconds']:.2f}× |")


if __name__ == "__main__":
    main()
