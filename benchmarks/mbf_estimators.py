"""Time and compare the two MBF estimators (`mbf.estimator`) on patients of a finished run, in one process.

    .venv/bin/python benchmarks/mbf_estimators.py <run>/results/patients/CTR-A/S0001 [more patient folders] \
        [--truth <run>/results/synthetic/truth]

Each patient's registered series, masks and AIF (the MBF stage's inputs) are read once; `estimate_mbf` and
`patient_uncertainty` (the stage's computation) run with each estimator, `--repeats` times, best time kept.
Printed per patient and estimator: wall seconds (estimate, uncertainty), global MBF and its SE, and, with
`--truth`, segment RMSE against truth.json. Timings are ratios within the run; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import torch

    from ctp_steps.layout import file_name
    from ctp_steps.mbf.config import MBFConfig
    from ctp_steps.mbf.estimate import estimate_mbf
    from ctp_steps.mbf.stage import Inputs, read_inputs
    from ctp_steps.mbf.uncertainty import patient_uncertainty

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("patients", type=Path, nargs="+")
    ap.add_argument("--truth", type=Path, default=None, help="synthetic/truth folder of the run (segment RMSE)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    print("| patient | estimator | estimate s | uncertainty s | global MBF | global SE | segment RMSE |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for folder in args.patients:
        inputs = read_inputs(Inputs(frames=folder / file_name("frames"), series=folder / file_name("registered"),
                                    myocardium=folder / file_name("myocardium"), aha=folder / file_name("aha17"),
                                    aif=folder / file_name("aif")))
        true_segments = None
        if args.truth is not None:
            truth = json.loads((args.truth / folder.parent.name / folder.name / "truth.json").read_text())
            true_segments = np.array([np.nan if v is None else v for v in truth["mbf_segments"]], dtype=float)
        for estimator in ("least_squares", "bayesian"):
            cfg = MBFConfig(estimator=estimator)
            t_est = t_unc = np.inf
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                est = estimate_mbf(inputs, cfg, cpu)
                t1 = time.perf_counter()
                unc = patient_uncertainty(est, cfg, cpu, cfg.uncertainty)
                t2 = time.perf_counter()
                t_est, t_unc = min(t_est, t1 - t0), min(t_unc, t2 - t1)
            rmse = "—"
            if true_segments is not None:
                seg = np.array([est.regularised.mbf[est.segments == s].mean() if (est.segments == s).any() else np.nan
                                for s in range(1, 18)])
                ok = np.isfinite(seg) & np.isfinite(true_segments)
                rmse = f"{np.sqrt(np.mean((seg[ok] - true_segments[ok]) ** 2)):.1f}"
            print(f"| {folder.parent.name}/{folder.name} | {estimator} | {t_est:.2f} | {t_unc:.2f} | "
                  f"{est.regularised.mbf.mean():.1f} | {unc.record['mbf_global_se']:.1f} | {rmse} |", flush=True)


if __name__ == "__main__":
    main()
