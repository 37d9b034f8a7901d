"""Batched one-compartment fit (torch, all voxels at once) vs per-voxel scipy `curve_fit`, one run.

Same model (K1, k2, vb, delay; exact exponential convolution of the AIF on its
0.25 s grid, evaluated at irregular frame times), same bounds, same start
(the batched variable-projection grid search's start is handed to
curve_fit, so the baseline gets the better deal), same voxels. curve_fit is
timed on a random subsample and extrapolated to all voxels (stated in the
table). Curves: a whole LV's worth of voxels (default 120,000) with stress and
ischemic MBF, Renkin-Crone extraction (PS = 60 + 0.5 MBF), 16 irregular frames, 15 HU noise.

    python benchmarks/mbf_fit.py [--voxels 120000] [--baseline-voxels 300] [--device cpu|cuda] [--threads 1]

Prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import numpy as np
import torch
from scipy.optimize import OptimizeWarning, curve_fit

from ctp_steps.devices import resolve_device
from ctp_steps.mbf.fit import DTYPE, OneCompartmentFitter, RenkinCrone, fit_curves
from ctp_steps.mbf.kinetics import GridAIF, one_compartment
from ctp_steps.mbf.tac import arterial_input, gamma_variates

TIMES = np.array([0.0, 1.7, 3.9, 5.2, 7.4, 8.6, 10.9, 12.3, 14.8, 16.1, 18.9, 21.0, 23.6, 26.9, 29.4, 33.1])
AIF_PARAMS = np.array([5.3, 6.5, 3.0, 420.0, 2.0, 9.0, 2.2, 60.0])
EXTRACTION = RenkinCrone(60.0, 0.5)  # the stage's default: PS = 60 + 0.5 MBF
MAX_DELAY_S = 10.0


def make_curves(n: int, noise_hu: float, rng: np.random.Generator):
    """The AIF the fits see, noisy one-compartment voxel curves and their true MBF."""
    aif = arterial_input(TIMES, 45.0 + gamma_variates(AIF_PARAMS, TIMES), 100.0, "gamma_variate")
    mbf = np.where(rng.random(n) < 0.2, rng.uniform(50, 100, n), rng.uniform(150, 250, n))
    k1 = EXTRACTION.k1(mbf) / 6000.0
    theta = np.stack([k1, k1 / rng.uniform(0.2, 0.3, n), rng.uniform(0.05, 0.15, n), rng.uniform(0.5, 3.0, n)], 1)
    grid = GridAIF.from_values(aif.grid_dt_s, aif.grid_hu, torch.device("cpu"), DTYPE)
    clean, _ = one_compartment(grid, torch.as_tensor(TIMES, dtype=DTYPE), torch.as_tensor(theta, dtype=DTYPE))
    return aif, clean.numpy() + rng.normal(0.0, noise_hu, clean.shape), mbf


def numpy_model(grid_dt: float, grid_hu: np.ndarray):
    """The same one-compartment model for one voxel in numpy: what a per-voxel curve_fit user writes."""
    knots = np.arange(len(grid_hu)) * grid_dt
    slopes = np.append(np.diff(grid_hu) / grid_dt, 0.0)

    def moments(k, h):
        e = np.exp(-k * h)
        a = -np.expm1(-k * h) / k
        return e, a, (a - h * e) / k

    def model(t, k1, k2, vb, delay):
        _, a, b = moments(k2, grid_dt)
        seg = a * grid_hu[1:] - b * slopes[:-1]
        j_grid = np.concatenate([[0.0], np.exp(-k2 * knots[1:]) * np.cumsum(np.exp(k2 * knots[1:]) * seg)])
        u = np.maximum(t - delay, 0.0)
        idx = np.minimum((u / grid_dt).astype(int), len(grid_hu) - 1)
        h = u - knots[idx]
        end = grid_hu[idx] + slopes[idx] * h
        e, a, b = moments(k2, h)
        j = e * j_grid[idx] + end * a - slopes[idx] * b
        inside = t - delay >= 0
        return np.where(inside, k1 * j + vb * end, 0.0)

    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxels", type=int, default=120_000)
    parser.add_argument("--baseline-voxels", type=int, default=300)
    parser.add_argument("--noise-hu", type=float, default=15.0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=20_000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rng = np.random.default_rng(20261128)
    aif, curves, true_mbf = make_curves(args.voxels, args.noise_hu, rng)

    kw = dict(max_delay_s=MAX_DELAY_S, max_iter=60, chunk=args.chunk, device=device, renkin_crone=EXTRACTION,
              max_mbf=600.0)
    fit_curves(curves[:1000], aif, "one_compartment", **kw)  # warm-up (allocator, CUDA context)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    batched = fit_curves(curves, aif, "one_compartment", **kw)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t_batched = time.perf_counter() - start

    # Baseline on a subsample: same model, bounds and start.
    sub = rng.choice(args.voxels, size=args.baseline_voxels, replace=False)
    grid = GridAIF.from_values(aif.grid_dt_s, aif.grid_hu, torch.device("cpu"), DTYPE)
    fitter = OneCompartmentFitter(grid, torch.as_tensor(TIMES, dtype=DTYPE), MAX_DELAY_S)
    starts = fitter.start(torch.as_tensor(curves[sub], dtype=DTYPE)).numpy()
    lower, upper = fitter.lower.numpy(), fitter.upper.numpy()
    model = numpy_model(aif.grid_dt_s, aif.grid_hu)
    base_theta, base_sse = np.zeros((len(sub), 4)), np.zeros(len(sub))
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        for i, v in enumerate(sub):
            p0 = np.clip(starts[i], lower + 1e-12, upper - 1e-12)
            popt, _ = curve_fit(model, TIMES, curves[v], p0=p0, bounds=(lower, upper), maxfev=2000)
            base_theta[i] = popt
            base_sse[i] = np.sum((model(TIMES, *popt) - curves[v]) ** 2)
    t_base_per_voxel = (time.perf_counter() - start) / len(sub)
    t_base = t_base_per_voxel * args.voxels

    mbf_batched = EXTRACTION.flow(batched.rate[sub], 600.0)
    mbf_base = EXTRACTION.flow(base_theta[:, 0] * 6000, 600.0)
    d_mbf = np.abs(mbf_batched - mbf_base)
    err = {"batched": mbf_batched - true_mbf[sub], "base": mbf_base - true_mbf[sub]}
    d_k1 = np.abs(batched.params["k1"][sub] - base_theta[:, 0]) * 6000
    sse_ratio = batched.sse[sub] / base_sse
    cpu = platform.processor() or platform.machine()
    on = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({cpu}), {args.threads} thread(s)"
    print(f"### One-compartment voxel fit: batched torch vs per-voxel curve_fit ({on})\n")
    print("| | batched (torch, LM + VarPro grid start) | per-voxel `scipy.optimize.curve_fit` (trf, bounds) |")
    print("|---|---|---|")
    print(f"| voxels | {args.voxels:,} (all) | {args.baseline_voxels} timed, extrapolated to {args.voxels:,} |")
    print(f"| wall time | {t_batched:.2f} s | {t_base:.0f} s (extrapolated; {1000 * t_base_per_voxel:.2f} ms/voxel) |")
    print(f"| voxels/s | {args.voxels / t_batched:,.0f} | {1 / t_base_per_voxel:,.0f} |")
    print(f"| speed ratio | **{t_base / t_batched:,.0f}x** | 1x |")
    print(f"\nAgreement on the {args.baseline_voxels} common voxels "
          f"({args.noise_hu:g} HU noise, {len(TIMES)} irregular frames):\n")
    print("| measure | value |")
    print("|---|---|")
    print(f"| median abs. K1 difference (mL/100mL/min) | {np.median(d_k1):.3g} |")
    print(f"| median abs. MBF difference (mL/100mL/min, exact Renkin-Crone inverse) | {np.median(d_mbf):.3g} |")
    print(f"| median SSE ratio batched / curve_fit | {np.median(sse_ratio):.4f} |")
    print(f"| voxels where batched SSE <= curve_fit SSE (+1e-6 rel.) | {100 * np.mean(sse_ratio <= 1 + 1e-6):.1f} % |")
    print(f"| voxels where batched SSE > curve_fit SSE by > 1 % | {100 * np.mean(sse_ratio > 1.01):.1f} % |")
    print("| MBF error vs truth, batched / curve_fit: median abs. (mL/100mL/min) | "
          f"{np.median(np.abs(err['batched'])):.2f} / {np.median(np.abs(err['base'])):.2f} |")
    print(f"| MBF error vs truth, batched / curve_fit: RMS (mL/100mL/min) | "
          f"{np.sqrt(np.mean(err['batched'] ** 2)):.1f} / {np.sqrt(np.mean(err['base'] ** 2)):.1f} |")


if __name__ == "__main__":
    main()
