"""Is the MBF uncertainty calibrated, and how close to the Cramer-Rao bound is the estimator, as noise grows?

    .venv/bin/python benchmarks/noise_sweep.py --noise 0 5 10 20 30 --replicates 8 --plot /tmp/noise_sweep.png \
        --estimators least_squares bayesian --family inside

Synthetic patients: the ring phantom of tests/test_mbf.py (`ring_patient`: 4 slices, 12 segments, LAD
sectors at 70 and the rest at 200 mL/100mL/min, one-compartment curves from the estimator's own model and
AIF, i.i.d. Gaussian noise of the given SD on every voxel and frame), `--replicates` noise draws (seeds) per
level. Masks and AHA map are the truth's (oracle masks), the AIF noise-free: what is measured is the fit,
the regularisation and the uncertainty model, not segmentation, registration or AIF error. Each patient
runs `estimate_mbf` and `patient_uncertainty` (the stage's computation; regularisation radius 8 mm,
sigma 5 mm as in the tests, because the default 20 mm kernel spans most of this small ring).

Kinetics families (`--family`; ve, vb, delay): `inside` the ring's own (0.25, 0.1, 1.5 s), near the
centre of the bayesian estimator's priors; `outside` (0.45, 0.035, 6 s), about 2 prior SDs out on each
(log ve +2.0, log vb -2.1, delay +2.0); `heterogeneous`: remote as inside, the ischemic LAD sectors with their
own (0.35, 0.06, 3.5 s), a scarred, under-recruited and delayed bed that one shared set cannot fit.
Every estimator (`--estimators`, `mbf.estimator`) sees the same noise draws.

Per noise level, over all segments of all replicates (global: over replicates):
- cov_seg / cov_glob: fraction of 95 % intervals (segments_mbf / record) holding the true MBF;
- z_sd: SD of z = (estimate - truth) / reported SE over segments (1 if calibrated), z_mean its mean;
- rmse, bias: segment RMSE and mean error (mL/100mL/min);
- eff_crlb: segment RMSE / root-mean CRLB. The CRLB is the estimator's own Fisher information at the TRUE
  parameters with the TRUE noise SD: the shared-kinetics model (K1 per segment, one ve, vb, delay per
  patient), every myocardium voxel of every segment a measurement, the joint (S + 3)-parameter Fisher
  matrix inverted (the nuisance kinetics take their share), carried to MBF by the Renkin-Crone slope at
  the true MBF. Every voxel of a segment has the segment's kinetics, so this is the bound on its mean MBF.
  sd_eff_crlb: the same with the across-replicate SD instead of the RMSE (bias removed);
- eff_se: segment RMSE / root-mean reported SE, the proxy the validation rows use
  (`mbf_segment_efficiency_vs_reported_se`).
Noise 0 has a CRLB (and an SE) of 0: its efficiencies are undefined (NaN), its coverage measures bias only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the ring phantom lives with the MBF tests

FAMILIES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float] | None]] = {
    "inside": ((0.25, 0.1, 1.5), None),  # ring_patient's default (tests/test_mbf.py)
    "outside": ((0.45, 0.035, 6.0), None),
    "heterogeneous": ((0.25, 0.1, 1.5), (0.35, 0.06, 3.5)),
}
TRUE_GLOBAL_KEY = "mbf_global"


def segment_crlb_mbf(
    true_mbf: np.ndarray, n_voxels: np.ndarray, noise_sd_hu: float, aif, rc, max_delay_s: float,
    kinetics: tuple[float, float, float],
) -> np.ndarray:
    """CRLB SD of each segment's MBF (S,): joint Fisher information of (K1_1..K1_S, ve, vb, delay) at the truth.

    Segment s contributes n_s J_s'J_s / sigma² with J_s = d curve / d(K1, ve, vb, delay) (T, 4) of the
    one-compartment model (k2 = K1 / ve) on the estimator's AIF; K1_s couples only to its own segment's
    curves, the three kinetics to all. Var(K1_s) is the (s, s) element of the full inverse.
    """
    import torch

    from ctp_steps.mbf.fit import DTYPE, PER_S_TO_ML_100ML_MIN
    from ctp_steps.mbf.kinetics import GridAIF, one_compartment
    from ctp_steps.mbf.uncertainty import flow_slope, numerical_jacobian

    cpu = torch.device("cpu")
    grid = GridAIF.from_values(aif.grid_dt_s, aif.grid_hu, cpu, DTYPE)
    times = torch.as_tensor(aif.times_s, dtype=DTYPE)

    def model(theta: torch.Tensor) -> torch.Tensor:
        k1, ve, vb, delay = theta.unbind(-1)
        return one_compartment(grid, times, torch.stack([k1, k1 / ve, vb, delay], dim=-1))[0]

    k1 = rc.k1(true_mbf) / PER_S_TO_ML_100ML_MIN
    theta = torch.as_tensor(np.stack([k1, *(np.full_like(k1, v) for v in kinetics)], 1),
                            dtype=DTYPE)
    scale = torch.tensor([10.0 / 60, 1.0, 1.0, max(max_delay_s, 1.0)], dtype=DTYPE)
    jac = numerical_jacobian(model, theta, scale).numpy()  # (S, T, 4)
    s = len(true_mbf)
    fisher = np.zeros((s + 3, s + 3))
    for i in range(s):
        jtj = n_voxels[i] * jac[i].T @ jac[i] / noise_sd_hu**2
        idx = [i, s, s + 1, s + 2]
        fisher[np.ix_(idx, idx)] += jtj
    var_k1 = np.diag(np.linalg.inv(fisher))[:s]
    return np.sqrt(var_k1) * PER_S_TO_ML_100ML_MIN * flow_slope(true_mbf, rc)


def run_patient(noise_hu: float, seed: int, cfg, family: str = "inside") -> dict:
    """One ring patient: per-segment truth, estimate, SE, interval, CRLB, and the global interval."""
    import torch
    from test_mbf import ring_patient

    from ctp_steps.mbf.estimate import estimate_mbf
    from ctp_steps.mbf.uncertainty import UncertaintyConfig, patient_uncertainty, renkin_crone_of

    cpu = torch.device("cpu")
    kinetics, ischemic = FAMILIES[family]
    inputs, truth = ring_patient(noise_hu=noise_hu, seed=seed, kinetics=kinetics, ischemic_kinetics=ischemic)
    est = estimate_mbf(inputs, cfg, cpu)
    unc = patient_uncertainty(est, cfg, cpu, UncertaintyConfig())
    true_vox = truth[est.mask]
    ids = sorted(unc.segments)
    true_seg = np.array([true_vox[est.segments == s].mean() for s in ids])
    n_vox = np.array([(est.segments == s).sum() for s in ids])
    est_seg = np.array([est.regularised.mbf[est.segments == s].mean() for s in ids])
    if noise_hu > 0 and ischemic is None:  # the shared-kinetics bound is the truth's only where kinetics are shared
        crlb = segment_crlb_mbf(true_seg, n_vox, noise_hu, est.aif, renkin_crone_of(cfg, est.method), cfg.max_delay_s,
                                kinetics)
    else:
        crlb = np.full(len(ids), np.nan) if noise_hu > 0 else np.zeros(len(ids))
    return {
        "true": true_seg,
        "est": est_seg,
        "se": np.array([unc.segments[s]["mbf_se"] for s in ids]),
        "low": np.array([unc.segments[s]["mbf_ci_low"] for s in ids]),
        "high": np.array([unc.segments[s]["mbf_ci_high"] for s in ids]),
        "crlb": crlb,
        "global": (float(true_vox.mean()), unc.record["mbf_global_ci_low"], unc.record["mbf_global_ci_high"]),
    }


def level_metrics(patients: list[dict]) -> dict[str, float]:
    """The sweep's metrics of one noise level, with the validation's own definitions (ctp_steps.validation.mbf)."""
    from ctp_steps.validation.mbf import efficiency, interval_coverage, z_scores

    cat = {k: np.concatenate([p[k] for p in patients]) for k in ("true", "est", "se", "low", "high", "crlb")}
    glob = np.array([[np.nan if v is None else v for v in p["global"]] for p in patients], dtype=float)
    z = z_scores(cat["est"], cat["true"], cat["se"])
    err = cat["est"] - cat["true"]
    by_segment = np.stack([p["est"] for p in patients])  # (replicates, S): the same segments in every draw
    sd_seg = by_segment.std(axis=0, ddof=1) if len(patients) > 1 else np.full(by_segment.shape[1], np.nan)
    crlb_rms = float(np.sqrt(np.mean(cat["crlb"] ** 2)))  # NaN where no bound applies
    return {
        "cov_seg": interval_coverage(cat["true"], cat["low"], cat["high"]),
        "cov_glob": interval_coverage(glob[:, 0], glob[:, 1], glob[:, 2]),
        "z_sd": float(z.std(ddof=1)) if z.size > 1 else np.nan,
        "z_mean": float(z.mean()) if z.size else np.nan,
        "rmse": float(np.sqrt(np.mean(err**2))),
        "bias": float(err.mean()),
        "crlb": crlb_rms,
        "eff_crlb": efficiency(cat["est"], cat["true"], cat["crlb"]) if crlb_rms > 0 else np.nan,
        "sd_eff_crlb": float(np.sqrt(np.mean(sd_seg**2)) / crlb_rms) if crlb_rms > 0 else np.nan,
        "eff_se": efficiency(cat["est"], cat["true"], cat["se"]),
        "se_rms": float(np.sqrt(np.mean(cat["se"] ** 2))),
    }


COLUMNS = ["estimator", "noise_hu", "cov_seg", "cov_glob", "z_mean", "z_sd", "rmse", "bias", "crlb", "se_rms", "eff_crlb",
           "sd_eff_crlb", "eff_se"]


def markdown_table(rows: list[dict]) -> str:
    def fmt(v) -> str:
        return v if isinstance(v, str) else "—" if not np.isfinite(v) else f"{v:.3g}"

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str = "") -> None:
    """Coverage, z, efficiency and error against noise; one line style per estimator."""
    from ctp_steps.figures import subplots

    fig, ax = subplots(1, 4, figsize=(16, 3.8))
    styles = {"least_squares": ("-", "C0"), "bayesian": ("--", "C3")}
    # z and efficiencies divide by an SE that is ~0 without noise: drawn from the first noisy level on
    relative = {"z_sd", "z_mean", "eff_crlb", "eff_se"}
    for estimator in dict.fromkeys(r["estimator"] for r in rows):
        mine = [r for r in rows if r["estimator"] == estimator]
        noise, tag = [r["noise_hu"] for r in mine], f" ({estimator})"
        ls, colour = styles.get(estimator, (":", "C2"))

        def line(a, key, marker, label):
            values = [np.nan if key in relative and r["noise_hu"] == 0 else r[key] for r in mine]
            a.plot(noise, values, marker + ls, color=colour, label=label + tag)

        line(ax[0], "cov_seg", "o", "segment")
        line(ax[0], "cov_glob", "s", "global")
        line(ax[1], "z_sd", "o", "SD")
        line(ax[1], "z_mean", "s", "mean")
        line(ax[2], "eff_crlb", "o", "RMSE / CRLB")
        line(ax[2], "eff_se", "s", "RMSE / SE")
        line(ax[3], "rmse", "o", "RMSE")
        line(ax[3], "bias", "s", "bias")
        line(ax[3], "se_rms", "v", "root-mean SE")
    ax[3].plot([r["noise_hu"] for r in rows if r["estimator"] == rows[0]["estimator"]],
               [r["crlb"] for r in rows if r["estimator"] == rows[0]["estimator"]], "^:k", label="root-mean CRLB")
    ax[0].axhspan(0.90, 0.98, color="g", alpha=0.15, label="target 0.90-0.98")
    ax[0].set(title="95 % interval coverage", ylim=(-0.02, 1.02))
    ax[1].axhline(1.0, color="k", lw=0.8)
    ax[1].axhline(0.0, color="k", lw=0.8, ls=":")
    ax[1].set(title="z = error / reported SE")
    ax[2].axhline(1.3, color="r", lw=0.8, ls="--", label="target 1.3")
    ax[2].set(title="segment efficiency", yscale="log")
    ax[3].set(title="segment MBF error (mL/100mL/min)")
    for a in ax:
        a.set_xlabel("noise SD (HU)")
        a.legend(fontsize=6)
        a.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    import torch

    from ctp_steps.mbf.config import MBFConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 5.0, 10.0, 20.0, 30.0])
    ap.add_argument("--replicates", type=int, default=8, help="noise draws (seeds) per level")
    ap.add_argument("--plot", type=Path, default=Path("/tmp/noise_sweep.png"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--estimators", nargs="+", default=["least_squares", "bayesian"],
                    choices=["least_squares", "bayesian"])
    ap.add_argument("--family", default="inside", choices=sorted(FAMILIES))
    ap.add_argument("--min-depth-mm", type=float, default=None,
                    help="regularisation.min_depth_mm (default: the config's; 0 makes every voxel a source)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reg = {"radius_mm": 8.0, "spatial_sigma_mm": 5.0}
    if args.min_depth_mm is not None:
        reg["min_depth_mm"] = args.min_depth_mm
    rows, start = [], time.perf_counter()
    for estimator in args.estimators:
        cfg = MBFConfig(regularisation=reg, estimator=estimator)
        for noise in args.noise:
            patients = [run_patient(noise, seed, cfg, args.family) for seed in range(args.replicates)]
            rows.append({"estimator": estimator, "noise_hu": noise, **level_metrics(patients)})
            print(f"# {estimator} noise {noise:g} HU done ({time.perf_counter() - start:.0f} s)", file=sys.stderr,
                  flush=True)
    print(f"family {args.family}: kinetics {FAMILIES[args.family]}")
    print(markdown_table(rows))
    plot(rows, args.plot, f"ring phantom, kinetics family '{args.family}'")
    print(f"\nplot: {args.plot}; {args.replicates} replicates x 12 segments per level; "
          f"{time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
