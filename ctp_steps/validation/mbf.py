"""MBF against the phantom's truth: per-patient metrics, and the cohort's segment agreement.

Only the validation rules call this module; it reads the truth folder.
Per-patient rows follow ctp_steps.validation.rows (patient_id, center, stage, metric,
target, value). MBF metrics have one target per method and map: `<method>`
for the regularised map (`mbf.nii.gz` for the configured method; the others
are re-estimated here from the same inputs), `<method>_raw` for the voxel-wise
fit. One-compartment with shared kinetics also re-estimates with the other
`mbf.estimator` (target `one_compartment_<estimator>`, its uncertainty rows'
targets `segment_<estimator>` / `global_<estimator>`): both estimators are
measured on the same curves in one run. The segment-level agreement (ICC, Bland-Altman) needs every patient, so
each patient also writes its segment comparison (`segment_rows`) and one
cohort rule (`cohort_segment_metrics`) turns them into rows with
patient_id = center = "all".

Definitions:
- mbf_global_bias_pct = 100 (mean MBF over the pipeline's myocardium - true global MBF) / true global MBF
- mbf_voxel_rel_rmse = RMS(MBF - true MBF) / mean true MBF, over voxels in both myocardium masks
- mbf_segment_icc = ICC(2,1): two-way random effects, absolute agreement, single measure
  (Shrout & Fleiss 1979), segments of all patients as subjects, estimate and truth as raters
- mbf_segment_ba_bias / _loa_low / _loa_high = Bland-Altman mean difference and 95 % limits
- target `<method>_true_extraction` (one-compartment only): the same map metrics after each voxel's K1 is
  turned into MBF by the phantom's own extraction model (truth.json `kinetics`) instead of the configured
  one. Absolute MBF needs an extraction model no image can validate (issue 20, item 3); this row shows
  what the pipeline's error is without that choice. On a family generated with the configured model it
  equals the `<method>` row.
- mbf_global_k1_bias_pct, target `<method>` (one-compartment only) = 100 (mean K1 over the pipeline's
  myocardium - mean true K1 over the true myocardium) / mean true K1, the true K1 = E(F)·F of the phantom's
  own extraction: the quantity the images carry. Near a fixed PS's ceiling (K1 -> PS) a few % of K1 are
  tens of % of MBF under any extraction model, so this row, not MBF, tells how well the images were read.

Uncertainty (the stage's own SE and 95 % intervals, ctp_steps/mbf/uncertainty.py; rows from
`uncertainty_rows`, NaN where an older run has no uncertainty columns):
- mbf_ci95_coverage, target `segment`: fraction of the patient's segments whose [mbf_ci_low, mbf_ci_high]
  (segments_mbf.parquet) holds the true segment MBF; target `global`: 1/0 for the record's global interval
- mbf_z_rms / mbf_z_sd, target `segment`: RMS and SD (ddof 1) over segments of z = (mbf_mean - true) / mbf_se
  (1 where the SEs are calibrated); mbf_z, target `global`: z of the global mean
- mbf_segment_efficiency_vs_reported_se, target `<method>`: segment RMSE / root-mean reported SE². Not the
  Cramer-Rao efficiency: the CRLB of a segment mean needs the noise of the pipeline's segment curve
  (correlated phantom noise, resampled by registration and the working grid), which truth.json does not
  hold; the reported SE (Fisher information at the fitted parameters) is the proxy, named so.
  benchmarks/noise_sweep.py measures the true-parameter CRLB efficiency where it is computable.

The truth maps describe the phantom's un-moved anatomy; the pipeline's maps are
in the space of the registration's reference frame, so the maps are first moved
there (`ctp_steps.validation.truth.truth_maps`); segment and global truths are means over tissue and need no move.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ctp_steps.aha import N_SEGMENTS
from ctp_steps.io import read_json, read_status, read_volume
from ctp_steps.layout import file_name, status_name
from ctp_steps.validation.rows import metric_frame, patient_keys, patient_rows
from ctp_steps.validation.truth import MYOCARDIUM, truth_maps

if TYPE_CHECKING:  # the stage's modules import torch; the cohort rule does not need them
    from ctp_steps.mbf.extraction import ExtractionModel
    from ctp_steps.mbf.fit import RenkinCrone

SEGMENT_COLUMNS = ["patient_id", "center", "target", "segment", "mbf_est", "mbf_true"]


def map_metrics(est: np.ndarray, mask: np.ndarray, truth: np.ndarray, true_myo: np.ndarray, true_global: float) -> dict:
    """Global bias % and voxel relative RMSE of one MBF map."""
    both = mask & true_myo
    diff = est[both] - truth[both]
    return {
        "mbf_global_bias_pct": 100.0 * (float(est[mask].mean()) - true_global) / true_global,
        "mbf_voxel_rel_rmse": float(np.sqrt(np.mean(diff**2)) / truth[both].mean()) if both.any() else math.nan,
    }


def true_extraction(kinetics: dict) -> RenkinCrone:
    """The K1 -> flow model the phantom generated its tissue with, from truth.json `kinetics`.

    Both families use Renkin-Crone: the default family on blood flow with capillary recruitment
    (PS = permeability_surface + ps_flow_slope * F); the shifted family's two-compartment exchange on
    plasma flow Fp = F (1 - Hct) with a fixed PS, i.e. E = 1 - exp(-(PS / (1 - Hct)) / F).
    """
    from ctp_steps.mbf.fit import RenkinCrone

    ps = float(kinetics["permeability_surface"])
    if "hematocrit" in kinetics:
        return RenkinCrone(ps / (1.0 - float(kinetics["hematocrit"])), 0.0)
    return RenkinCrone(ps, float(kinetics.get("ps_flow_slope", 0.0)))


def reconverted(mbf: np.ndarray, used: ExtractionModel | None, true: ExtractionModel, max_mbf: float) -> np.ndarray:
    """MBF values made under the extraction model `used` (None: MBF = K1), re-made under `true` from the same K1."""
    from ctp_steps.mbf.extraction import flow_of, k1_of

    return np.where(np.asarray(mbf) > 0, flow_of(k1_of(mbf, used), true, max_mbf), 0.0)


def k1_bias_pct(mbf: np.ndarray, mask: np.ndarray, used: ExtractionModel | None, true_mbf: np.ndarray,
                true_myo: np.ndarray, true: ExtractionModel) -> float:
    """Global K1 bias % of an MBF map made under `used`, against the true K1 (`true` applied to the true map)."""
    from ctp_steps.mbf.extraction import k1_of

    k1, k1_true = float(k1_of(mbf[mask], used).mean()), float(k1_of(true_mbf[true_myo], true).mean())
    return 100.0 * (k1 - k1_true) / k1_true


def segment_means(mbf: np.ndarray, mask: np.ndarray, aha17: np.ndarray) -> np.ndarray:
    """Mean MBF of segments 1..17 (NaN where empty)."""
    return np.array(
        [float(mbf[mask & (aha17 == s)].mean()) if (mask & (aha17 == s)).any() else math.nan for s in range(1, N_SEGMENTS + 1)]
    )


def interval_coverage(true: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    """Fraction of the intervals [low, high] that hold the true value, over entries where all three are finite.

    NaN where none is: an older run without intervals must read as "not measured", never as 0 % coverage.
    """
    true, low, high = (np.asarray(a, dtype=float) for a in (true, low, high))
    ok = np.isfinite(true) & np.isfinite(low) & np.isfinite(high)
    if not ok.any():
        return math.nan
    return float(np.mean((low[ok] <= true[ok]) & (true[ok] <= high[ok])))


def z_scores(est: np.ndarray, true: np.ndarray, se: np.ndarray) -> np.ndarray:
    """(est - true) / se where all are finite and se > 0 (only those entries): standard normal if calibrated."""
    est, true, se = (np.asarray(a, dtype=float) for a in (est, true, se))
    ok = np.isfinite(est) & np.isfinite(true) & np.isfinite(se) & (se > 0)
    return (est[ok] - true[ok]) / se[ok]


def efficiency(est: np.ndarray, true: np.ndarray, bound_se: np.ndarray) -> float:
    """RMSE / root-mean bound² over entries where all are finite: 1 at the bound, > 1 above it (NaN if none)."""
    est, true, bound_se = (np.asarray(a, dtype=float) for a in (est, true, bound_se))
    ok = np.isfinite(est) & np.isfinite(true) & np.isfinite(bound_se)
    if not ok.any():
        return math.nan
    bound = math.sqrt(float(np.mean(bound_se[ok] ** 2)))
    rmse = math.sqrt(float(np.mean((est[ok] - true[ok]) ** 2)))
    return rmse / bound if bound > 0 else math.nan


def _float(x) -> float:
    """A record value as a float; None (JSON null) and absent values as NaN."""
    return math.nan if x is None else float(x)


def uncertainty_rows(
    segments: pd.DataFrame | None, true_segments: np.ndarray, record: dict, true_global: float | None, method: str
) -> list[tuple[str, str, float]]:
    """(metric, target, value) rows of the stage's SE and intervals against the truth (see the module docstring).

    `segments`: segments_mbf.parquet (None where absent); `true_segments`: true MBF of segments 1..17;
    `record`: the MBF status record. Every row is present, NaN where its columns are missing.
    """
    cols = ("mbf_mean", "mbf_se", "mbf_ci_low", "mbf_ci_high")
    nan17 = np.full(N_SEGMENTS, math.nan)
    seg = {c: nan17.copy() for c in cols}
    if segments is not None and "segment" in segments:
        idx = segments["segment"].to_numpy(dtype=int) - 1
        for c in cols:
            if c in segments:
                seg[c][idx] = segments[c].to_numpy(dtype=float)
    true_segments = np.asarray(true_segments, dtype=float)
    z = z_scores(seg["mbf_mean"], true_segments, seg["mbf_se"])
    true_g = _float(true_global)
    low_g, high_g = _float(record.get("mbf_global_ci_low")), _float(record.get("mbf_global_ci_high"))
    z_g = z_scores(np.array([_float(record.get("mbf_global"))]), np.array([true_g]),
                   np.array([_float(record.get("mbf_global_se"))]))
    return [
        ("mbf_ci95_coverage", "segment", interval_coverage(true_segments, seg["mbf_ci_low"], seg["mbf_ci_high"])),
        ("mbf_ci95_coverage", "global", interval_coverage(np.array([true_g]), np.array([low_g]), np.array([high_g]))),
        ("mbf_z_rms", "segment", float(np.sqrt(np.mean(z**2))) if z.size else math.nan),
        ("mbf_z_sd", "segment", float(z.std(ddof=1)) if z.size > 1 else math.nan),
        ("mbf_z", "global", float(z_g[0]) if z_g.size else math.nan),
        ("mbf_segment_efficiency_vs_reported_se", method, efficiency(seg["mbf_mean"], true_segments, seg["mbf_se"])),
    ]


def read_segments(patient_dir: Path) -> pd.DataFrame | None:
    """The stage's segment table, None where the file is absent."""
    path = Path(patient_dir) / file_name("segments_mbf")
    return pd.read_parquet(path) if path.is_file() else None


def true_segment_mbf(truth: dict) -> np.ndarray:
    """True mean MBF of segments 1..17 from truth.json (NaN where the phantom has no such segment)."""
    return np.array([math.nan if v is None else v for v in truth["mbf_segments"]], dtype=float)


def uncertainty_metrics(truth_dir: Path, patient_dir: Path, method: str) -> list[tuple[str, str, float]]:
    """`uncertainty_rows` of one patient from its files: truth.json, segments_mbf.parquet, the MBF status record."""
    truth = read_json(Path(truth_dir) / "truth.json")
    record = read_status(Path(patient_dir) / status_name("mbf")).record
    return uncertainty_rows(read_segments(patient_dir), true_segment_mbf(truth), record, truth["mbf_global"], method)


def mbf_patient_metrics(
    truth_dir: Path, patient_dir: Path, mbf_config_json: str, device_name: str = "auto"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(metric rows, segment comparison rows) of one patient, for every method, raw and regularised."""
    from ctp_steps.mbf.config import METHODS, MBFConfig
    from ctp_steps.mbf.estimate import estimate_mbf
    from ctp_steps.mbf.extraction import extraction_model
    from ctp_steps.devices import resolve_device
    from ctp_steps.mbf.stage import Inputs, read_inputs

    patient_id, center = patient_keys(truth_dir)
    if read_status(patient_dir / status_name("mbf")).status != "ok":
        return patient_rows(truth_dir, "mbf", [("mbf_ok", "all", 0.0)]), pd.DataFrame(columns=SEGMENT_COLUMNS)
    cfg = MBFConfig.model_validate_json(mbf_config_json)
    truth = read_json(truth_dir / "truth.json")
    own_map, own_geometry = read_volume(patient_dir / file_name("mbf"))
    true_mbf, labels, _, _ = truth_maps(truth_dir, patient_dir, own_geometry, own_map.shape)
    true_myo = labels == MYOCARDIUM
    true_segments = true_segment_mbf(truth)
    inputs = read_inputs(
        Inputs(
            frames=patient_dir / file_name("frames"),
            series=patient_dir / file_name("registered"),
            myocardium=patient_dir / file_name("myocardium"),
            aha=patient_dir / file_name("aha17"),
            aif=patient_dir / file_name("aif"),
        )
    )
    mask, aha = inputs.myocardium, inputs.aha17
    maps = {  # the stage's own maps for the configured method
        cfg.method: read_volume(patient_dir / file_name("mbf"))[0],
        f"{cfg.method}_raw": read_volume(patient_dir / file_name("mbf_raw"))[0],
    }
    device = resolve_device(device_name)
    for method in METHODS:
        if method != cfg.method:
            est = estimate_mbf(inputs, cfg, device, method=method)
            maps[method], maps[f"{method}_raw"] = est.volume(est.regularised.mbf), est.volume(est.raw.mbf)
    rows, segment_rows = [("mbf_ok", "all", 1.0)], []
    other = other_estimator(cfg)
    if other is not None:
        target, alt_maps, alt_rows = other_estimator_rows(inputs, cfg, other, device, true_segments, truth["mbf_global"])
        maps |= alt_maps
        rows += alt_rows
    if cfg.method == "one_compartment" and "kinetics" in truth:
        used, true = extraction_model(cfg), true_extraction(truth["kinetics"])
        rows.append(("mbf_global_k1_bias_pct", cfg.method,
                     k1_bias_pct(maps[cfg.method], mask, used, true_mbf, true_myo, true)))
        maps[f"{cfg.method}_true_extraction"] = reconverted(maps[cfg.method], used, true, cfg.max_mbf).astype(np.float32)
    for target, mbf in maps.items():
        rows += [(k, target, v) for k, v in map_metrics(mbf, mask, true_mbf, true_myo, truth["mbf_global"]).items()]
        est_segments = segment_means(mbf, mask, aha)
        segment_rows += [
            (patient_id, center, target, s + 1, est_segments[s], true_segments[s]) for s in range(17)
        ]
    rows += uncertainty_metrics(truth_dir, patient_dir, cfg.method)
    return patient_rows(truth_dir, "mbf", rows), pd.DataFrame(segment_rows, columns=SEGMENT_COLUMNS)


def other_estimator(cfg) -> str | None:
    """The `mbf.estimator` not configured, where the configuration has a choice (one_compartment, shared kinetics)."""
    if cfg.method != "one_compartment" or not (cfg.regularisation.enabled and cfg.regularisation.shared_kinetics):
        return None
    return "bayesian" if cfg.estimator == "least_squares" else "least_squares"


def other_estimator_rows(inputs, cfg, other: str, device, true_segments: np.ndarray, true_global: float):
    """The other estimator on the same inputs: its map (target `one_compartment_<estimator>`) and its uncertainty
    rows, whose targets carry the estimator's name (`segment_<estimator>`, `global_<estimator>`), so that both
    estimators are measured in one run on the same curves."""
    from ctp_steps.mbf.estimate import estimate_mbf
    from ctp_steps.mbf.stage import segment_table
    from ctp_steps.mbf.uncertainty import patient_uncertainty

    alt = cfg.model_copy(update={"estimator": other})
    est = estimate_mbf(inputs, alt, device)
    target = f"one_compartment_{other}"
    unc = patient_uncertainty(est, alt, device, alt.uncertainty)
    record = unc.record | {"mbf_global": float(est.regularised.mbf.mean())}
    rows = [
        (metric, target if t == "one_compartment" else f"{t}_{other}", value)
        for metric, t, value in uncertainty_rows(
            segment_table(est, inputs.geometry, unc), true_segments, record, true_global, "one_compartment"
        )
    ]
    return target, {target: est.volume(est.regularised.mbf)}, rows


def icc_2_1(ratings: np.ndarray) -> float:
    """ICC(2,1) of an (n subjects, k raters) array: two-way random, absolute agreement, single measure."""
    n, k = ratings.shape
    grand = ratings.mean()
    ss_rows = k * ((ratings.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((ratings.mean(axis=0) - grand) ** 2).sum()
    ss_err = ((ratings - grand) ** 2).sum() - ss_rows - ss_cols
    msr, msc, mse = ss_rows / (n - 1), ss_cols / (k - 1), ss_err / ((n - 1) * (k - 1))
    return float((msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n))


def cohort_segment_metrics(segment_tables: list[Path]) -> pd.DataFrame:
    """ICC(2,1) and Bland-Altman of segment MBF over all patients, per target (patient_id 'all')."""
    tables = [pd.read_parquet(p) for p in segment_tables]
    table = pd.concat([t for t in tables if len(t)], ignore_index=True) if any(len(t) for t in tables) else None
    rows = []
    if table is not None:
        for target, part in table.groupby("target", sort=True):
            pairs = part[["mbf_est", "mbf_true"]].dropna().to_numpy(dtype=float)
            if len(pairs) < 3:
                continue
            diff = pairs[:, 0] - pairs[:, 1]
            sd = diff.std(ddof=1)
            rows += [
                ("mbf_segment_icc", target, icc_2_1(pairs)),
                ("mbf_segment_ba_bias", target, float(diff.mean())),
                ("mbf_segment_ba_loa_low", target, float(diff.mean() - 1.96 * sd)),
                ("mbf_segment_ba_loa_high", target, float(diff.mean() + 1.96 * sd)),
                ("mbf_segment_n", target, float(len(pairs))),
            ]
    return metric_frame("all", "all", "mbf", rows)
