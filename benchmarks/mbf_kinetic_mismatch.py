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
    from ctp_steps.mbf.extraction import extraction_model
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
    k1_true = float(true.k1(np.maximum(patient.mbf[myo], 1e-6)).mean())
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=("default", "shifted"), default="shifted")
    ap.add_argument("--n-patients", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import pandas as pd
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for spec in family_specs(args.family, args.n_patients):
        rows.append(patient_row(still_patient(args.family, spec)))
        print(rows[-1]["patient"], file=sys.stderr, flush=True)
    d = pd.DataFrame(rows)
    print(d.round(2).to_markdown(index=False))
    for col in ("configured_pct", "own_extraction_pct", "k1_pct"):
        print(f"{col}: mean {d[col].mean():+.1f} %, range {d[col].min():+.1f} to {d[col].max():+.1f} %")


if __name__ == "__main__":
    main()
