"""The MBF stage on files: read the patient's inputs, estimate, write maps, tables, QC figure, record.

Contract (ctp_steps/stages.py): `Inputs`, `Outputs` (the keys of rules/mbf.smk), `Config`, `run`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ctp_steps.aha import N_SEGMENTS, SEGMENT_TERRITORY, TERRITORY_SEGMENTS
from ctp_steps.io import read_json, read_series, read_volume, write_parquet, write_volume
from ctp_steps.mbf.config import MBFConfig
from ctp_steps.mbf.estimate import MBFEstimate, PerfusionInputs, estimate_mbf
from ctp_steps.mbf.extraction import INTERVAL_PRESETS, PRESETS, preset_flows, used_preset
from ctp_steps.mbf.fit import model_curves
from ctp_steps.mbf.tac import AIFError, read_aif
from ctp_steps.mbf.uncertainty import PatientUncertainty, patient_uncertainty
from ctp_steps.stages import Context, PatientInputs, PatientOutputs
from ctp_steps.types import Geometry, PatientInputError

Config = MBFConfig

PLOT_DT_S = 0.25


@dataclass(frozen=True, kw_only=True)
class Inputs(PatientInputs):
    frames: Path
    series: Path  # the registered frames
    myocardium: Path
    aha: Path
    aif: Path


@dataclass(frozen=True, kw_only=True)
class Outputs(PatientOutputs):
    mbf: Path  # the regularised map
    mbf_raw: Path  # the voxel-wise fit
    tac: Path
    segments: Path
    qc: Path
    blood_volume: Path | None = None  # exactly when `MBFConfig.writes_blood_volume`
    mbf_se: Path | None = None  # SE of the regularised map; when asked for, the uncertainty columns come with it


def read_inputs(paths: Inputs) -> PerfusionInputs:
    """The stage's inputs as arrays; a geometry mismatch between them is a bug upstream (ValueError)."""
    frames = read_json(paths.frames)
    series, geometry = read_series(paths.series)
    myocardium, g_myo = read_volume(paths.myocardium)
    aha17, g_aha = read_volume(paths.aha)
    for name, g in (("myocardium", g_myo), ("aha17", g_aha)):
        if not g.allclose(geometry):
            raise ValueError(f"{name} geometry differs from {paths.series}")
    times = np.asarray(frames["frame_times_s"], dtype=float)
    if len(times) != series.shape[0]:
        raise ValueError(f"{paths.frames}: {len(times)} frame times for {series.shape[0]} frames")
    return PerfusionInputs(
        series_hu=series,
        geometry=geometry,
        times_s=times,
        aif_hu=read_aif(paths.aif, frames["frame_times_s"]),
        myocardium=myocardium > 0,
        aha17=aha17,
    )


def segment_table(est: MBFEstimate, geometry: Geometry, uncertainty: PatientUncertainty | None = None) -> pd.DataFrame:
    """17 rows: MBF statistics of the regularised map per AHA segment (NaN where a segment is empty).

    With `uncertainty`: mbf_se, mbf_ci_low, mbf_ci_high of mbf_mean (ctp_steps/mbf/uncertainty.py).
    """
    rows = []
    empty = {"mbf_se": math.nan, "mbf_ci_low": math.nan, "mbf_ci_high": math.nan}
    curve_fit = dict(zip(est.segment_ids.tolist(), est.segment_fit.mbf.tolist()))
    for s in range(1, N_SEGMENTS + 1):
        sel = est.segments == s
        values, raw = est.regularised.mbf[sel], est.raw.mbf[sel]
        rows.append(
            {
                "segment": s,
                "territory": SEGMENT_TERRITORY[s],
                "mbf_mean": float(values.mean()) if values.size else math.nan,
                "mbf_median": float(np.median(values)) if values.size else math.nan,
                "mbf_sd": float(values.std()) if values.size else math.nan,
                "mbf_raw_mean": float(raw.mean()) if raw.size else math.nan,
                "mbf_curve_fit": curve_fit.get(s, math.nan),
                "n_voxels": int(sel.sum()),
                "volume_ml": float(sel.sum() * geometry.voxel_ml),
            }
            | ({} if uncertainty is None else uncertainty.segments.get(s, empty))
        )
    return pd.DataFrame(rows)


def tac_table(est: MBFEstimate) -> pd.DataFrame:
    """Long table of curves: the AIF (measured, model) and each segment's mean curve (measured, fitted)."""
    aif = est.aif
    fine = np.arange(0.0, aif.times_s[-1] + 1e-9, PLOT_DT_S)

    def rows(curve: str, segment: int, kind: str, times: np.ndarray, hu: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame({"curve": curve, "segment": segment, "kind": kind, "time_s": times, "hu": hu})

    parts = [rows("aif", 0, "measured", aif.times_s, aif.enhancement_hu), rows("aif", 0, "model", fine, aif.curve(fine))]
    fitted = model_curves(est.segment_fit, est.method, aif, fine) if est.method != "upslope" else None
    for i, s in enumerate(est.segment_ids):
        parts.append(rows("segment", int(s), "measured", aif.times_s, est.segment_curves[i]))
        if fitted is not None:
            parts.append(rows("segment", int(s), "fitted", fine, fitted[i]))
    table = pd.concat(parts, ignore_index=True)
    return table.astype({"segment": "int64", "time_s": "float64", "hu": "float64"})


def _mean_or_none(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def working_spacing(est: MBFEstimate) -> str:
    """The grid the curves were fitted on, "z,y,x" in mm (the native one unless finer than the working spacing)."""
    return ",".join(f"{s:.4g}" for s in est.working_spacing_mm)


EXTRACTION_KEYS = [*(f"mbf_global_{p}" for p in PRESETS), "mbf_extraction_low", "mbf_extraction_high"]


def extraction_record(est: MBFEstimate, cfg: MBFConfig) -> dict:
    """Global MBF of the same regularised K1 map under every extraction preset, and their model interval.

    The extraction of iodine is a model choice, not a measurement (ctp_steps/mbf/extraction.py):
    re-mapping the fitted K1 (no refit) shows how much of the patient's MBF is that choice.
    low/high span `INTERVAL_PRESETS` and the preset used, so they contain mbf_global; a model
    interval, not a confidence interval. None for methods without K1 (upslope, fermi).
    """
    if est.method != "one_compartment" or not est.regularised.rate.size:
        return {"mbf_extraction": None} | dict.fromkeys(EXTRACTION_KEYS)
    used = used_preset(cfg)
    means = {p: float(flow.mean()) for p, flow in preset_flows(cfg, est.regularised.rate).items()}
    span = [means[p] for p in (*INTERVAL_PRESETS, used)]
    return (
        {"mbf_extraction": used}
        | {f"mbf_global_{p}": means[p] for p in PRESETS}
        | {"mbf_extraction_low": min(span), "mbf_extraction_high": max(span)}
    )


def mbf_record(est: MBFEstimate, geometry: Geometry, cfg: MBFConfig) -> dict:
    """The stage's columns in patients.parquet (None where undefined), with the extraction sensitivity."""
    mbf = est.regularised.mbf
    record = {
        "mbf_global": _mean_or_none(mbf),
        "mbf_raw_global": _mean_or_none(est.raw.mbf),
        "mbf_myocardium_ml": float(est.mask.sum() * geometry.voxel_ml),
        "mbf_aif_peak_hu": est.aif.peak_hu,
        "mbf_aif_baseline_hu": est.aif.baseline_hu,
        "mbf_aif_fit_rms_hu": est.aif.fit_rms_hu,
        "bolus_arrival_s": est.aif.arrival_s,
        "n_baseline_frames": est.aif.n_baseline,
        "mbf_method": est.method,
        "tissue_delay_s": None if math.isnan(est.tissue_delay_s) else est.tissue_delay_s,
        "mbf_working_spacing_mm": working_spacing(est),
    }
    for terr, segs in TERRITORY_SEGMENTS.items():
        record[f"mbf_{terr.lower()}"] = _mean_or_none(mbf[np.isin(est.segments, segs)])
    return record | kinetics_record(est, cfg) | extraction_record(est, cfg)


KINETICS_KEYS = ["mbf_kinetics_ve", "mbf_kinetics_vb", "mbf_kinetics_delay_s", "mbf_segment_spread_log_ve",
                 "mbf_segment_spread_log_vb", "mbf_segment_spread_delay_s"]


def kinetics_record(est: MBFEstimate, cfg: MBFConfig) -> dict:
    """Which estimator made the regularised map and the patient's kinetics it used (None where not shared).

    The bayesian estimator adds the between-segment spread its pooling estimated (ctp_steps/mbf/bayes.py).
    """
    record: dict = {"mbf_estimator": cfg.estimator if est.shared is not None else None} | dict.fromkeys(KINETICS_KEYS)
    if est.pooled is not None:
        return record | est.pooled.record()
    if est.shared is not None:
        record |= {"mbf_kinetics_ve": est.shared.ve, "mbf_kinetics_vb": est.shared.vb,
                   "mbf_kinetics_delay_s": est.shared.delay_s}
    return record


def run(inputs: Inputs, outputs: Outputs, cfg: MBFConfig, ctx: Context) -> dict:
    """Estimate MBF for one patient and write every output; returns the record."""
    from ctp_steps.mbf.plots import mbf_figure

    if cfg.writes_blood_volume != (outputs.blood_volume is not None):
        raise ValueError(f"the blood volume map is an output exactly for one_compartment (method {cfg.method})")
    data = read_inputs(inputs)
    try:
        est = estimate_mbf(data, cfg, ctx.device)
    except AIFError as exc:  # found on arrays; the reason names the file the curve came from
        raise PatientInputError(f"{inputs.aif.name}: {exc}") from exc
    write_volume(outputs.mbf, est.volume(est.regularised.mbf), data.geometry)
    write_volume(outputs.mbf_raw, est.volume(est.raw.mbf), data.geometry)
    if outputs.blood_volume is not None:
        write_volume(outputs.blood_volume, est.volume(est.raw.params["vb"]), data.geometry)
    unc = None
    if outputs.mbf_se is not None:
        unc = patient_uncertainty(est, cfg, ctx.device, cfg.uncertainty)
        write_volume(outputs.mbf_se, est.volume(unc.voxel_se), data.geometry)
    tac = tac_table(est)
    write_parquet(outputs.tac, tac)
    segments = segment_table(est, data.geometry, unc)
    write_parquet(
        outputs.segments,
        segments,
        metadata={"method": est.method, "units": "mL/100mL/min", "working_spacing_zyx_mm": working_spacing(est)}
        | ({"estimator": cfg.estimator, "priors": cfg.priors.model_dump_json()} if est.pooled is not None else {}),
    )
    mbf_figure(est, tac, segments, outputs.qc)
    return mbf_record(est, data.geometry, cfg) | ({} if unc is None else unc.record)
