"""Landmark stage speed: the shipped narrow net vs the published width, per patient, on this machine.

    python benchmarks/landmark_speed.py [--repeats 5] [--device auto]

One default-grid phantom patient (40 × 80 × 80 at 3 × 2.5 × 2.5 mm). Times, per
patient: LV crop (resampling), network forward + decoding, AHA 17-segment map;
for the shipped weights (models/landmark_net.pt) and for the published width
(w = 16, same crop, random weights: speed only), which is the baseline of the
ratios. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time

import numpy as np
import torch


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from ctp_steps.aha import aha_segment_map
    from ctp_steps.landmarks.crop import crop_channels
    from ctp_steps.landmarks.data import make_cases
    from ctp_steps.devices import resolve_device
    from ctp_steps.landmarks.infer import LandmarkDetector
    from ctp_steps.landmarks.net import LandmarkNet
    from ctp_steps.landmarks.config import LandmarkGridConfig
    from ctp_steps.models import verified_weights

    device = resolve_device(args.device)
    grid = LandmarkGridConfig(shape_zyx=(40, 80, 80), spacing_zyx_mm=(3.0, 2.5, 2.5))
    case = make_cases(1, "test", 777, [grid])[0]
    shipped = LandmarkDetector.from_checkpoint(verified_weights("landmark_net"), device)
    k = shipped.net.kwargs
    published = LandmarkDetector(
        LandmarkNet(k["in_channels"], k["n_landmarks"], width=16, head_channels=k["n_landmarks"] + 1), shipped.meta, device
    )
    crop = shipped.crop_of(case.mask, case.geometry)
    t_crop = _time(lambda: crop_channels(case.image, case.mask, case.geometry, crop, shipped.size, True), args.repeats)
    det = shipped.detect(case.image, case.mask, case.geometry)
    lm = dict(zip(det.names, det.world_mm))
    t_aha = _time(lambda: aha_segment_map(case.mask, case.geometry, lm["apex"], lm["base"], lm["rv_insertion"]), args.repeats)
    rows = []
    times = {}
    for name, detector in (("published width 16 (baseline)", published), (f"shipped width {k['width']}", shipped)):
        times[name] = _time(lambda d=detector: d.detect(case.image, case.mask, case.geometry, crop), args.repeats)
        params = sum(p.numel() for p in detector.net.parameters())
        rows.append((name, params, times[name]))
    base = rows[0][2]
    err = np.linalg.norm(det.world_mm - case.landmarks, axis=1)
    print(f"command: python benchmarks/landmark_speed.py --repeats {args.repeats} --device {args.device} --threads {args.threads}")
    print(f"machine: {platform.node()} {platform.machine()}, device {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; date {datetime.date.today()}")
    print(f"crop {shipped.size}³ voxels; crop resampling {t_crop * 1e3:.1f} ms, AHA map {t_aha * 1e3:.1f} ms per patient")
    print(f"shipped net on this patient: errors apex/base/rv_insertion {err.round(2).tolist()} mm\n")
    print("| net | parameters | crop + forward + decode (s/patient) | speed vs baseline |")
    print("| --- | ---: | ---: | ---: |")
    for name, params, t in rows:
        print(f"| {name} | {params:,} | {t:.3f} | {base / t:.2f}× |")


if __name__ == "__main__":
    main()
