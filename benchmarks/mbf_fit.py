"""Batched one-compartment fit (torch, all voxels at once) vs per-voxel scipy `curve_fit`, one run.

Same model (K1, k2, vb, delay; exact exponential convolution of the AIF on its
0.25 s grid, evaluated at irregular frame times), same bounds, same start
(the batched variable-projection grid search's start is handed to
curve_fit, so the baseline gets the better deal), same voxels. curve_fit is
timed on a random subsample and extrapolated to all voxels (stated in the
table). Curves: a whole LV's worth of voxels (default 120,000) with stress and
ischemic MBF, Renkin-Crone extraction (PS = 60 + 0.5 MBF), 16 irregular frames, 15 HU noise.
The batched fit runs eagerly and with `compiled=True` (torch.compile'd LM
iterations and grid search; the compile is timed apart, on a 1,000-voxel warm-up,
and is what each process pays once: cold, or from torch's on-disk cache).

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
    compile_s = timed(lambda: fit_curves(curves[:1000], aif, "one_compartment", compiled=True, **kw), device)[1]
    batched, t_batched = timed(lambda: fit_curves(curves, aif, "one_compartment", **kw), device)
    compiled, t_compiled = timed(lambda: fit_curves(curves, aif, "one_compartment", compiled=True, **kw), device)

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

    mbf_base = EXTRACTION.flow(base_theta[:, 0] * 6000, 600.0)
    runs = {"eager": batched, "compiled": compiled}
    mbf = {name: EXTRACTION.flow(r.rate[sub], 600.0) for name, r in runs.items()}
    sse_ratio = {name: r.sse[sub] / base_sse for name, r in runs.items()}
    cpu = platform.processor() or platform.machine()
    on = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({cpu}), {args.threads} thread(s)"
    print(f"### One-compartment voxel fit: batched torch vs per-voxel curve_fit ({on})\n")
    print("| | batched, eager | batched, `compiled=True` | per-voxel `scipy.optimize.curve_fit` (trf, bounds) |")
    print("|---|---|---|---|")
    print(f"| voxels | {args.voxels:,} (all) | {args.voxels:,} (all) | {args.baseline_voxels} timed, "
          f"extrapolated to {args.voxels:,} |")
    print(f"| wall time | {t_batched:.2f} s | {t_compiled:.2f} s (+ {compile_s:.1f} s compiling, once per process) | "
          f"{t_base:.0f} s (extrapolated; {1000 * t_base_per_voxel:.2f} ms/voxel) |")
    rates = (args.voxels / t_batched, args.voxels / t_compiled, 1 / t_base_per_voxel)
    print("| voxels/s | " + " | ".join(f"{r:,.0f}" for r in rates) + " |")
    print(f"| speed ratio | **{t_base / t_batched:,.0f}x** | **{t_base / t_compiled:,.0f}x** "
          f"({t_base / (t_compiled + compile_s):,.0f}x with the compile) | 1x |")
    print(f"\nAgreement with curve_fit on the {args.baseline_voxels} common voxels "
          f"({args.noise_hu:g} HU noise, {len(TIMES)} irregular frames), eager / compiled:\n")
    print("| measure | value |")
    print("|---|---|")

    def row(label: str, fn, fmt: str) -> None:
        print(f"| {label} | {' / '.join(format(fn(name), fmt) for name in runs)} |")

    row("median abs. K1 difference (mL/100mL/min)",
        lambda n: np.median(np.abs(runs[n].params["k1"][sub] - base_theta[:, 0]) * 6000), ".3g")
    row("median abs. MBF difference (mL/100mL/min, exact Renkin-Crone inverse)",
        lambda n: np.median(np.abs(mbf[n] - mbf_base)), ".3g")
    row("median SSE ratio batched / curve_fit", lambda n: np.median(sse_ratio[n]), ".4f")
    row("% voxels where batched SSE <= curve_fit SSE (+1e-6 rel.)",
        lambda n: 100 * np.mean(sse_ratio[n] <= 1 + 1e-6), ".1f")
    row("% voxels where batched SSE > curve_fit SSE by > 1 %", lambda n: 100 * np.mean(sse_ratio[n] > 1.01), ".1f")
    base_err = mbf_base - true_mbf[sub]
    row(f"MBF error vs truth, median abs. (mL/100mL/min; curve_fit {np.median(np.abs(base_err)):.2f})",
        lambda n: np.median(np.abs(mbf[n] - true_mbf[sub])), ".2f")
    row(f"MBF error vs truth, RMS (mL/100mL/min; curve_fit {np.sqrt(np.mean(base_err ** 2)):.1f})",
        lambda n: np.sqrt(np.mean((mbf[n] - true_mbf[sub]) ** 2)), ".1f")


def timed(fn, device: torch.device):
    """(fn(), wall seconds), with the GPU's queue drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


if __name__ == "__main__":
    main()
