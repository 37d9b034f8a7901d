"""How much of a family's global MBF error is the kinetic model, before any pipeline stage touches the images?

    .venv/bin/python benchmarks/mbf_kinetic_mismatch.py --family shifted --n-patients 12
    .venv/bin/python benchmarks/mbf_kinetic_mismatch.py --family default --n-patients 16

Renders each cohort patient of the family's configuration (same seeds and centres as `config/config.yaml`,
plus `config/shifted.yaml` for `shifted`, so S0001... are the runs' patients) noise-free, without motion, on
its anatomy grid, and runs the MBF stage's `estimate_mbf` (default `MBFConfig`) with the true myocardium, the
true AHA labels and the AIF of the eroded true aorta. Each voxel's K1 is read as MBF twice: with the
configured extraction model (what the stage reports) and with the phantom's own (truth.json `kinetics`,
`ctp_steps.validation.mbf.true_extraction`). What is left with the phantom's own extraction is the
one-compartment fit's structural error on that family's curves (for the shifted family: two-compartment
exchange with a vascular transit the one-compartment model lacks, a Parker AIF, the working grid); the
difference between the two columns is the extraction model alone. Nothing here is used by the pipeline.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def family_specs(family: str, n_patients: int):
    """The run's cohort specs of `family` (config/config.yaml, overlaid by config/shifted.yaml for `shifted`)."""
    import yaml

    from ctp_steps.phantom import make_specs

    synthetic = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["synthetic"]
    if family == "shifted":
        synthetic |= yaml.safe_load((ROOT / "config" / "shifted.yaml").read_text())["synthetic"]
    centers = [(c["name"], c["vendor_style"]) for c in synthetic["centers"]]
    return make_specs(n_patients, centers, synthetic["seed"])


def still_patient(family: str, spec):
    """The patient noise-free and without motion, on its anatomy grid."""
    from ctp_steps.phantom import PhantomParams, generate_patient
    from ctp_steps.phantom.shifted import ShiftedParams, shifted_study

    if family == "shifted":
        return shifted_study(spec, PhantomParams(), ShiftedParams(rigid_shift_max_mm=0.0, deformation_max_mm=0.0)).clean
    return generate_patient(spec, PhantomParams(rigid_shift_max_mm=0.0, deformation_max_mm=0.0), with_noise=False)


def patient_row(patient) -> dict:
    """Global MBF of the stage's regularised map under the configured and under the phantom's extraction."""
    import torch
    from scipy.ndimage import binary_erosion

    from ctp_steps.mbf.config import MBFConfig
    from ctp_steps.mbf.estimate import PerfusionInputs, estimate_mbf
    from ctp_steps.mbf.extraction import extraction_model, k1_of
    from ctp_steps.validation.mbf import reconverted, true_extraction

    cfg = MBFConfig()
    myo = patient.labels == 3
    aorta = binary_erosion(patient.labels == 1)
    inputs = PerfusionInputs(patient.frames_hu, patient.geometry, patient.frame_times_s,
                             patient.frames_hu[:, aorta].mean(axis=1), myo, np.where(myo, patient.aha17, 0))
    est = estimate_mbf(inputs, cfg, torch.device("cpu"))
    mbf = est.regularised.mbf
    truth = patient.truth
    used, true = extraction_model(cfg), true_extraction(truth["kinetics"])
    own = reconverted(mbf, used, true, cfg.max_mbf)
    k1_true = float(k1_of(patient.mbf[myo], true).mean())
    t = truth["mbf_global"]
    kin = truth["kinetics"]
    return {
        "patient": patient.spec.patient_id, "true_global": t,
        "configured_pct": 100 * (float(mbf.mean()) / t - 1), "own_extraction_pct": 100 * (float(own.mean()) / t - 1),
        "k1_pct": 100 * (float(est.regularised.rate.mean()) / k1_true - 1),
        "k1_saturation_fraction": k1_true / true.ps if true.flow_slope == 0 else np.nan,
        "ps": kin["permeability_surface"], "hct": kin.get("hematocrit", np.nan), "vb": kin["blood_volume"],
        "vb_fit": float(est.shared.vb) if est.shared else np.nan, "delay_true_s": kin["tissue_delay_s"],
        "delay_fit_s": float(est.shared.delay_s) if est.shared else np.nan,
    }


def transit_fit(patient, taus: list[float]) -> dict:
    """K1 error of the mean-curve fit at τ = 0 and at the residual's best τ (see the module docstring)."""
    from scipy.ndimage import binary_erosion
    from scipy.optimize import least_squares

    from ctp_steps.mbf.extraction import k1_of
    from ctp_steps.validation.mbf import true_extraction

    dt = 0.05
    t = patient.frame_times_s
    myo, aorta = patient.labels == 3, binary_erosion(patient.labels == 1)
    ca, y = (patient.frames_hu[:, m].mean(axis=1) for m in (aorta, myo))
    ca, y = ca - ca[:2].mean(), y - y[:2].mean()
    fine = np.arange(0.0, t[-1] + 20.0, dt)

    def curve(q: np.ndarray, tau: float) -> np.ndarray:
        k1, ve, vb, delay = q
        a = np.interp(fine - delay, t, ca, left=0.0)
        tissue = np.convolve(a, k1 / 6000 * np.exp(-k1 / max(ve, 1e-4) / 6000 * fine))[: fine.size] * dt
        vascular = a if tau <= 0 else np.convolve(a, np.exp(-fine / tau) / tau)[: fine.size] * dt
        return np.interp(t, fine, tissue + vb * vascular)

    k1_true = float(k1_of(patient.mbf[myo], true_extraction(patient.truth["kinetics"])).mean())
    fits = []
    for tau in taus:
        best = min((least_squares(lambda q: curve(q, tau) - y, [100.0, 0.2, 0.1, d0],
                                  bounds=([0, 0.01, 0, -2], [600, 1, 0.5, 8])) for d0 in (0.0, 2.0, 4.0)),
                   key=lambda r: r.cost)
        fits.append((tau, best))
    zero = next(r for tau, r in fits if tau == 0)
    tau_best, best = min(fits, key=lambda f: f[1].cost)
    return {"patient": patient.spec.patient_id, "k1_pct_tau0": 100 * (zero.x[0] / k1_true - 1),
            "vb_tau0": zero.x[2], "tau_best_s": tau_best, "k1_pct_best": 100 * (best.x[0] / k1_true - 1),
            "vb_best": best.x[2], "cost_tau0": zero.cost, "cost_best": best.cost}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=("default", "shifted"), default="shifted")
    ap.add_argument("--n-patients", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--transit-taus", type=float, nargs="+", default=None,
                    help="prototype a vascular-transit term with these τ (s; include 0) instead")
    args = ap.parse_args()
    import pandas as pd
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    taus = args.transit_taus
    if taus is not None and 0.0 not in taus:
        ap.error("--transit-taus must include 0 (the stage's model)")
    for spec in family_specs(args.family, args.n_patients):
        patient = still_patient(args.family, spec)
        rows.append(patient_row(patient) if taus is None else transit_fit(patient, taus))
        print(rows[-1]["patient"], file=sys.stderr, flush=True)
    d = pd.DataFrame(rows)
    print(d.round(2).to_markdown(index=False))
    cols = ("configured_pct", "own_extraction_pct", "k1_pct") if taus is None else ("k1_pct_tau0", "k1_pct_best")
    for col in cols:
        print(f"{col}: mean {d[col].mean():+.1f} %, range {d[col].min():+.1f} to {d[col].max():+.1f} %")


if __name__ == "__main__":
    main()
