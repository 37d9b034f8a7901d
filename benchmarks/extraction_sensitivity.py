"""How much the extraction preset moves global MBF and IMV% (absolute vs relative threshold); issue 20, item 3.

The same K1 map is mapped to MBF under every preset of ctp_steps/mbf/extraction.py
(no refit), then IMV is computed with `IMVConfig` absolute (100 mL/100mL/min) and
relative (0.78 of the remote territory's median) thresholds. Cases: the ring
phantom of tests/test_mbf.py fitted end to end (8 HU noise), and K1 maps of the
same ring with 10 % smooth-free lognormal voxel heterogeneity at other flows.
The K1 maps are made with the project_default model, so its row is the truth.

    .venv/bin/python benchmarks/extraction_sensitivity.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from ctp_steps.imv import IMVConfig, ischemic_region  # noqa: E402
from ctp_steps.mbf import MBFConfig  # noqa: E402
from ctp_steps.mbf.estimate import estimate_mbf  # noqa: E402
from ctp_steps.mbf.extraction import PRESETS, preset_flows  # noqa: E402
from ctp_steps.mbf.fit import RenkinCrone  # noqa: E402
from test_mbf import ring_patient  # noqa: E402

ABSOLUTE = IMVConfig(mode="absolute", min_cluster_ml=0.0, interval_draws=0)
RELATIVE = IMVConfig(mode="relative", reference="remote", min_cluster_ml=0.0, interval_draws=0)


def imv_pct(mbf: np.ndarray, myo: np.ndarray, aha: np.ndarray, voxel_ml: float, cfg: IMVConfig) -> float:
    """IMV as % of the myocardium, from per-voxel MBF (in myocardium order)."""
    volume = np.zeros(myo.shape)
    volume[myo] = mbf
    return 100.0 * float(ischemic_region(volume, myo, aha, voxel_ml, cfg).ischemia.sum()) / float(myo.sum())


def rows(k1: np.ndarray, myo: np.ndarray, aha: np.ndarray, voxel_ml: float) -> dict[str, tuple[float, float, float]]:
    """preset -> (global MBF, IMV% absolute, IMV% relative) of one K1 map."""
    flows = preset_flows(MBFConfig(), k1)
    return {p: (float(f.mean()), imv_pct(f, myo, aha, voxel_ml, ABSOLUTE), imv_pct(f, myo, aha, voxel_ml, RELATIVE))
            for p, f in flows.items()}


def k1_map_case(ischemic: float, remote: float, seed: int):
    """Ring geometry; MBF ischemic/remote with 10 % lognormal voxel heterogeneity; K1 by project_default."""
    inputs, truth = ring_patient(noise_hu=0.0)
    myo = inputs.myocardium
    rng = np.random.default_rng(seed)
    flow = np.where(truth[myo] < 100, ischemic, remote) * rng.lognormal(0.0, 0.1, myo.sum())
    return RenkinCrone(60.0, 0.5).k1(flow), myo, inputs.aha17, inputs.geometry.voxel_ml


def main() -> None:
    torch.set_num_threads(1)
    cases = {}
    inputs, _ = ring_patient(noise_hu=8.0, seed=1)
    est = estimate_mbf(inputs, MBFConfig(regularisation={"radius_mm": 8.0, "spatial_sigma_mm": 5.0}),
                       torch.device("cpu"))
    cases["ring fitted, 70/200, 8 HU"] = rows(est.regularised.rate, inputs.myocardium, inputs.aha17,
                                              inputs.geometry.voxel_ml)
    for isch, remote in ((70.0, 200.0), (50.0, 150.0), (90.0, 300.0)):
        cases[f"K1 map, {isch:.0f}/{remote:.0f}"] = rows(*k1_map_case(isch, remote, seed=0))
    print("| case | preset | global MBF | Δ vs default | IMV% abs (<100) | IMV% rel (<0.78·remote) |")
    print("|---|---|---:|---:|---:|---:|")
    for case, table in cases.items():
        base = table["project_default"][0]
        for p in PRESETS:
            g, a, r = table[p]
            print(f"| {case} | {p} | {g:.1f} | {100 * (g / base - 1):+.0f} % | {a:.1f} | {r:.1f} |")
    print()
    print("| case | IMV% abs: range over presets (excl. unity) | IMV% rel: range over presets (excl. unity) |")
    print("|---|---:|---:|")
    for case, table in cases.items():
        sel = [table[p] for p in PRESETS if p != "unity"]
        a = [t[1] for t in sel]
        r = [t[2] for t in sel]
        print(f"| {case} | {min(a):.1f}-{max(a):.1f} ({max(a) - min(a):.1f} pp) | {min(r):.1f}-{max(r):.1f} "
              f"({max(r) - min(r):.1f} pp) |")


if __name__ == "__main__":
    main()
