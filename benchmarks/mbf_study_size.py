"""MBF stage cost against study size: `estimate_mbf` on a synthetic fine-grid study, new vs old style.

A half-ellipsoidal LV myocardium shell (~120 mL: outer semi-axes 38 mm in-plane, 75 mm long; wall 10 mm)
in a (z, y, x) field of view, one-compartment tissue curves from the pipeline's own model (K1 from
Renkin-Crone at 200 mL/100mL/min, 70 in the anterior/anteroseptal segments; ve 0.25, vb 0.1, delay 1.5 s)
on a first-pass + recirculation AIF, 15 HU Gaussian noise per voxel and frame, float32 series.

    new: the defaults (working grid at 1.5 mm, offsets on a >= 2.5 mm lattice, myocardium box crop)
    old: working_spacing_mm 0 and regularisation.min_offset_spacing_mm 0 (every voxel, every offset)

Each case runs in its own process, so `ru_maxrss` is that case's peak RSS (the series included).
Where the old style cannot finish (it grows with the inverse voxel volume squared), `--extrapolate-old`
times one averaging pass over `--sample-offsets` of its offsets and scales to all of them.

    .venv/bin/python benchmarks/mbf_study_size.py                       # 96x512x512 @ 1.25x0.4x0.4 mm, new
    .venv/bin/python benchmarks/mbf_study_size.py --extrapolate-old     # + the old style's averaging, extrapolated
    .venv/bin/python benchmarks/mbf_study_size.py --shape 48 160 160 --spacing 2.5 1.25 1.25 --modes new old
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

AIF_PARAMS = np.array([5.3, 6.5, 3.0, 420.0, 2.0, 9.0, 2.2, 60.0])  # first pass + recirculation (enhancement HU)
ISCHEMIC_SEGMENTS = (1, 2, 7, 8, 13, 14)


def frame_times(n: int) -> np.ndarray:
    """Shuttle-mode-like irregular frame times (s): alternating 1.6 / 2.2 s steps."""
    return np.concatenate([[0.0], np.cumsum(np.where(np.arange(n - 1) % 2 == 0, 1.6, 2.2))])


def shell(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Myocardium mask and simplified AHA labels (basal/mid 6 sectors, apical 4) of a half-ellipsoid shell."""
    nz, ny, nx = shape
    sz, sy, sx = spacing
    base_z = 0.85 * nz * sz  # base plane (mm); the apex points to slice 0
    a_out, c_out, a_in, c_in = 38.0, 75.0, 28.0, 65.0
    z0 = max(0, int((base_z - c_out) / sz) - 1)
    half_y, half_x = int(a_out / sy) + 2, int(a_out / sx) + 2
    cy, cx = ny // 2, nx // 2
    box = (slice(z0, int(base_z / sz) + 1), slice(cy - half_y, cy + half_y), slice(cx - half_x, cx + half_x))
    z, y, x = np.meshgrid(*(np.arange(s.start, s.stop) * d for s, d in zip(box, spacing)), indexing="ij")
    y, x, h = y - cy * sy, x - cx * sx, base_z - z  # h: depth below the base plane
    r2 = y**2 + x**2
    inside_out = r2 / a_out**2 + h**2 / c_out**2 <= 1.0
    inside_in = r2 / a_in**2 + h**2 / c_in**2 <= 1.0
    myo_box = inside_out & ~inside_in & (h >= 0)
    angle = np.degrees(np.arctan2(y, x)) % 360.0
    third = np.clip((h / c_out * 3).astype(int), 0, 2)  # 0 basal, 1 mid, 2 apical
    label = np.where(third < 2, 1 + 6 * third + (angle // 60).astype(int), 13 + (angle // 90).astype(int))
    myo = np.zeros(shape, bool)
    aha = np.zeros(shape, np.uint8)
    myo[box] = myo_box
    aha[box] = np.where(myo_box, label, 0)
    return myo, aha


def build_inputs(shape, spacing, n_frames: int, noise_hu: float, seed: int):
    import torch

    from ctp_steps.mbf.estimate import PerfusionInputs
    from ctp_steps.mbf.fit import DTYPE, RenkinCrone
    from ctp_steps.mbf.kinetics import GridAIF, one_compartment
    from ctp_steps.mbf.tac import arterial_input, gamma_variates
    from ctp_steps.types import Geometry

    rng = np.random.default_rng(seed)
    times = frame_times(n_frames)
    aif_hu = 45.0 + gamma_variates(AIF_PARAMS, times)
    aif = arterial_input(times, aif_hu, 100.0, "gamma_variate")
    grid = GridAIF.from_values(aif.grid_dt_s, aif.grid_hu, torch.device("cpu"), DTYPE)
    myo, aha = shell(shape, spacing)
    mbf = np.array([200.0, 70.0])
    k1 = RenkinCrone(60.0, 0.5).k1(mbf) / 6000.0
    theta = torch.as_tensor(np.stack([k1, k1 / 0.25, [0.1, 0.1], [1.5, 1.5]], axis=1), dtype=DTYPE)
    curves, _ = one_compartment(grid, torch.as_tensor(times, dtype=DTYPE), theta)
    curves = curves.numpy()
    which = np.isin(aha[myo], ISCHEMIC_SEGMENTS).astype(int)
    series = np.full((n_frames, *shape), 40.0, dtype=np.float32)
    for t in range(n_frames):
        frame = series[t]
        frame[myo] += (curves[which, t] + rng.normal(0.0, noise_hu, which.size)).astype(np.float32)
    geometry = Geometry((0.0, 0.0, 0.0), tuple(reversed(spacing)), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    truth = np.where(which == 1, 70.0, 200.0)
    return PerfusionInputs(series, geometry, times, aif_hu, myo, aha), truth


def old_style(cfg):
    return cfg.model_copy(
        update={
            "working_spacing_mm": 0.0,
            "regularisation": cfg.regularisation.model_copy(update={"min_offset_spacing_mm": 0.0}),
        }
    )


def run_case(args) -> dict:
    import torch

    from ctp_steps.mbf import MBFConfig
    from ctp_steps.mbf.estimate import estimate_mbf

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    inputs, truth = build_inputs(tuple(args.shape), tuple(args.spacing), args.frames, args.noise, args.seed)
    build_s = time.perf_counter() - t0
    rss_inputs = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    cfg = MBFConfig() if args.child == "new" else old_style(MBFConfig())
    t0 = time.perf_counter()
    est = estimate_mbf(inputs, cfg, torch.device("cpu"))
    seconds = time.perf_counter() - t0
    reg = est.regularised.mbf
    return {
        "mode": args.child,
        "shape_zyx": list(args.shape),
        "spacing_zyx_mm": list(args.spacing),
        "frames": args.frames,
        "myocardium_voxels": int(inputs.myocardium.sum()),
        "myocardium_ml": round(float(inputs.myocardium.sum() * inputs.geometry.voxel_ml), 1),
        "series_gb": round(inputs.series_hu.nbytes / 1e9, 2),
        "working_spacing_zyx_mm": [round(s, 3) for s in est.working_spacing_mm],
        "n_offsets": est.n_offsets,
        "build_s": round(build_s, 1),
        "estimate_s": round(seconds, 1),
        "peak_rss_gb_inputs": round(rss_inputs, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
        "mbf_normal_mean": round(float(reg[truth == 200.0].mean()), 1),
        "mbf_ischemic_mean": round(float(reg[truth == 70.0].mean()), 1),
        "mbf_rmse_pct": round(float(np.sqrt(np.mean((reg - truth) ** 2)) / truth.mean() * 100), 1),
    }


def extrapolate_old(args) -> dict:
    """Old style's averaging cost on this grid: one pass over a sample of its dense offsets, scaled."""
    import torch

    from ctp_steps.mbf import MBFConfig
    from ctp_steps.mbf.regularise import Neighbourhood, bilateral_average

    torch.set_num_threads(args.threads)
    shape, spacing = tuple(args.shape), tuple(args.spacing)
    myo, _ = shell(shape, spacing)
    reg = MBFConfig().regularisation
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(myo))
    hood = Neighbourhood.build(myo[box], spacing, reg.radius_mm, torch.device("cpu"))
    n = hood.n_offsets
    keep = torch.randperm(n, generator=torch.Generator().manual_seed(0))[: args.sample_offsets]
    sample = Neighbourhood(hood.index, hood.base, hood.steps[keep], hood.distances_mm[keep], hood.depth_mm)
    curves = torch.randn(len(hood.base), args.frames, dtype=torch.float64)
    guide = torch.rand(len(hood.base), dtype=torch.float64) * 200
    sources = hood.deep(reg.min_depth_mm)
    t0 = time.perf_counter()
    bilateral_average(curves, sample, reg.spatial_sigma_mm, None, guide, reg.range_sigma, sources)
    per_offset = (time.perf_counter() - t0) / len(keep)
    passes = 1 + reg.passes
    return {
        "mode": "old (extrapolated averaging only)",
        "myocardium_voxels": int(len(hood.base)),
        "n_offsets": n,
        "sampled_offsets": int(len(keep)),
        "s_per_offset": round(per_offset, 4),
        "averaging_s_extrapolated": round(per_offset * n * passes, 0),
        "passes": passes,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=int, nargs=3, default=[96, 512, 512], metavar=("Z", "Y", "X"))
    p.add_argument("--spacing", type=float, nargs=3, default=[1.25, 0.4, 0.4], metavar=("Z", "Y", "X"))
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--noise", type=float, default=15.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)  # 2 threads stall on a loaded 2-core host
    p.add_argument("--modes", nargs="+", default=["new"], choices=["new", "old"])
    p.add_argument("--extrapolate-old", action="store_true")
    p.add_argument("--sample-offsets", type=int, default=300)
    p.add_argument("--child", choices=["new", "old", "extrapolate"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        result = extrapolate_old(args) if args.child == "extrapolate" else run_case(args)
        print(json.dumps(result))
        return
    passed = [a for a in (argv if argv is not None else sys.argv[1:]) if a not in ("--extrapolate-old",)]
    children = list(args.modes) + (["extrapolate"] if args.extrapolate_old else [])
    for child in children:
        proc = subprocess.run([sys.executable, __file__, *passed, "--child", child], capture_output=True, text=True)
        if proc.returncode != 0:
            print(json.dumps({"mode": child, "error": proc.stderr[-2000:]}))
        else:
            print(proc.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
