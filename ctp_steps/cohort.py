"""Cohort gather: the analysis-ready Parquet tables of results/cohort/.

patients.parquet: one row per manifest patient, usable or not; segments.parquet:
17 rows (AHA segments) per usable patient, MBF and ischemia per segment. Both
schemas are declared once here; later stages add their columns to them.
"""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pandas as pd
import pyarrow as pa

from ctp_steps import __version__
from ctp_steps.aha import SEGMENT_NAMES, SEGMENT_TERRITORY
from ctp_steps.io import read_status, write_parquet
from ctp_steps.layout import file_name, status_name
from ctp_steps.manifest import read_manifest_table
from ctp_steps.mbf.config import ExtractionPreset

SCHEMA_VERSION = "1"

PATIENT_COLUMNS: list[pa.Field] = [
    pa.field("patient_id", pa.string(), nullable=False),
    pa.field("center", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("reason", pa.string()),
    pa.field("excluded_at", pa.string()),  # the stage that excluded the patient or failed on it
    pa.field("n_frames", pa.int32()),
    pa.field("time_span_s", pa.float64()),
    pa.field("shape_z", pa.int32()),
    pa.field("shape_y", pa.int32()),
    pa.field("shape_x", pa.int32()),
    pa.field("spacing_x_mm", pa.float64()),
    pa.field("spacing_y_mm", pa.float64()),
    pa.field("spacing_z_mm", pa.float64()),
    pa.field("kvp", pa.float64()),
    # Conversion provenance: the series used and those ignored (number, description, why), the time tag
    # trusted and why others were not, exact duplicate files dropped, the largest slice-position
    # difference accepted between frames, transfer syntaxes decoded, files read without a Part-10 header,
    # the voxel order the DICOM stored (conversion reorders it to the canonical L,P,S; nothing is resampled).
    pa.field("series_used", pa.string()),
    pa.field("series_ignored", pa.string()),
    pa.field("timing_tag", pa.string()),
    pa.field("timing_note", pa.string()),
    pa.field("duplicates_dropped", pa.int32()),
    pa.field("position_max_diff_mm", pa.float64()),
    pa.field("transfer_syntax", pa.string()),
    pa.field("files_without_part10", pa.int32()),
    pa.field("stored_orientation", pa.string()),  # world direction of the stored x,y,z axes; canonical is L,P,S
    # the DICOM grid ("96x512x512 @ 1.25x0.4x0.4 mm") and the native voxels averaged per working voxel (z x y x x);
    # shape_* and spacing_* above are the working grid every later stage reads
    pa.field("native_grid", pa.string()),
    pa.field("working_block", pa.string()),
    pa.field("segment_frames_source", pa.string()),
    pa.field("register_source", pa.string()),  # the method whose result was kept (learned, simpleitk, none)
    pa.field("register_attempts", pa.string()),  # failed attempts before it (e.g. the learned net's QC failure)
    pa.field("register_model_sha256", pa.string()),
    pa.field("registration_reference_frame", pa.int32()),
    pa.field("registration_lv_dice_before", pa.float64()),
    pa.field("registration_lv_dice_after", pa.float64()),
    pa.field("registration_lv_dice_after_min", pa.float64()),
    pa.field("registration_jacobian_nonpos_frac", pa.float64()),
    pa.field("registration_max_displacement_mm", pa.float64()),
    pa.field("segment_myocardium_source", pa.string()),
    pa.field("landmarks_source", pa.string()),  # heatmap (the net), geometric (the fallback) or heatmap+geometric
    pa.field("landmarks_attempts", pa.string()),  # failed attempts before it (the net's low-confidence reason)
    pa.field("segment_frames_model_sha256", pa.string()),
    pa.field("segment_myocardium_model_sha256", pa.string()),
    pa.field("landmarks_model_sha256", pa.string()),
    pa.field("aorta_ml", pa.float64()),
    pa.field("lv_ml", pa.float64()),
    pa.field("aif_peak_hu", pa.float64()),
    pa.field("aif_peak_time_s", pa.float64()),
    pa.field("aif_baseline_hu", pa.float64()),
    pa.field("landmark_conf_min", pa.float64()),  # the net's confidence, or the geometric method's quality
    pa.field("landmark_conf_apex", pa.float64()),
    pa.field("landmark_conf_base", pa.float64()),
    pa.field("landmark_conf_rv_insertion", pa.float64()),
    pa.field("lv_long_axis_mm", pa.float64()),
    # angle (°) about the long axis between the net's RV insertion and the RV-contact estimate (landmarks.rv_insertion)
    pa.field("landmark_rv_net_vs_contact_deg", pa.float64()),
    # MBF in mL/100mL/min; IMV in mL and % of LV myocardium (null until those stages run).
    pa.field("myocardium_ml", pa.float64()),
    pa.field("mbf_method", pa.string()),
    pa.field("mbf_global", pa.float64()),
    pa.field("mbf_raw_global", pa.float64()),
    pa.field("mbf_lad", pa.float64()),
    pa.field("mbf_rca", pa.float64()),
    pa.field("mbf_lcx", pa.float64()),
    pa.field("mbf_myocardium_ml", pa.float64()),
    pa.field("mbf_aif_peak_hu", pa.float64()),
    pa.field("mbf_aif_baseline_hu", pa.float64()),
    pa.field("mbf_aif_fit_rms_hu", pa.float64()),
    pa.field("bolus_arrival_s", pa.float64()),
    pa.field("tissue_delay_s", pa.float64()),
    pa.field("mbf_working_spacing_mm", pa.string()),  # "z,y,x" of the grid the curves were fitted on
    # standard error and 95 % interval of global and territory MBF (ctp_steps/mbf/uncertainty.py), and the
    # reliability rule's verdict (mbf.uncertainty.reliable_max_ci_half_width_pct)
    *[pa.field(f"mbf_{region}_{stat}", pa.float64()) for region in ("global", "lad", "rca", "lcx")
      for stat in ("se", "ci_low", "ci_high")],
    pa.field("mbf_reliable", pa.bool_()),
    # The estimator behind the regularised map (mbf.estimator; null without shared kinetics), the patient's
    # kinetics it used, and (bayesian) the between-segment spread its pooling estimated (ctp_steps/mbf/bayes.py)
    pa.field("mbf_estimator", pa.string()),
    pa.field("mbf_kinetics_ve", pa.float64()),
    pa.field("mbf_kinetics_vb", pa.float64()),
    pa.field("mbf_kinetics_delay_s", pa.float64()),
    pa.field("mbf_segment_spread_log_ve", pa.float64()),
    pa.field("mbf_segment_spread_log_vb", pa.float64()),
    pa.field("mbf_segment_spread_delay_s", pa.float64()),
    # Extraction sensitivity (ctp_steps/mbf/extraction.py): the preset used (mbf.extraction; null for methods
    # without K1), global MBF of the same K1 map under every preset, and min/max over the configured and the
    # published iodinated-contrast presets. A MODEL interval (spread over extraction models), not a confidence
    # interval: noise is in mbf_global_ci_low/high.
    pa.field("mbf_extraction", pa.string()),
    *[pa.field(f"mbf_global_{preset}", pa.float64()) for preset in get_args(ExtractionPreset)],
    pa.field("mbf_extraction_low", pa.float64()),
    pa.field("mbf_extraction_high", pa.float64()),
    pa.field("n_baseline_frames", pa.int32()),
    pa.field("imv_mode", pa.string()),
    pa.field("imv_threshold", pa.float64()),
    pa.field("imv_ml", pa.float64()),
    pa.field("imv_pct", pa.float64()),
    pa.field("imv_ml_lad", pa.float64()),
    pa.field("imv_ml_rca", pa.float64()),
    pa.field("imv_ml_lcx", pa.float64()),
    pa.field("imv_pct_lad", pa.float64()),
    pa.field("imv_pct_rca", pa.float64()),
    pa.field("imv_pct_lcx", pa.float64()),
    pa.field("imv_n_clusters", pa.int32()),
    # IMV interval: MBF draws from its uncertainty pushed through the same threshold and cluster rule
    *[pa.field(f"imv_{unit}_{stat}", pa.float64()) for unit in ("pct", "ml") for stat in ("se", "ci_low", "ci_high")],
    pa.field("followup_days", pa.float64()),
    pa.field("event", pa.int8()),
]
PROVENANCE_COLUMNS: list[pa.Field] = [
    pa.field("software_version", pa.string(), nullable=False),
    pa.field("config_hash", pa.string(), nullable=False),
]


SEGMENT_COLUMNS: list[pa.Field] = [
    pa.field("patient_id", pa.string(), nullable=False),
    pa.field("center", pa.string(), nullable=False),
    pa.field("segment", pa.int8(), nullable=False),
    pa.field("segment_name", pa.string(), nullable=False),
    pa.field("territory", pa.string(), nullable=False),
    pa.field("n_voxels", pa.int32()),
    pa.field("volume_ml", pa.float64()),
    # MBF (mL/100mL/min) of the regularised map: mean, median, SD; voxel-wise map mean; fit of the segment's mean curve
    pa.field("mbf_mean", pa.float64()),
    pa.field("mbf_median", pa.float64()),
    pa.field("mbf_sd", pa.float64()),
    pa.field("mbf_raw_mean", pa.float64()),
    pa.field("mbf_curve_fit", pa.float64()),
    # standard error and 95 % interval of the segment's MBF (fit of its deep voxels' mean curve)
    pa.field("mbf_se", pa.float64()),
    pa.field("mbf_ci_low", pa.float64()),
    pa.field("mbf_ci_high", pa.float64()),
    pa.field("ischemic_ml", pa.float64()),
    pa.field("ischemic_pct", pa.float64()),
    pa.field("software_version", pa.string(), nullable=False),
    pa.field("config_hash", pa.string(), nullable=False),
]
SEGMENTS_SCHEMA = pa.schema(SEGMENT_COLUMNS)


def patients_schema(covariates: list[str]) -> pa.Schema:
    covariate_fields = [pa.field(c, pa.float64()) for c in covariates]
    return pa.schema(PATIENT_COLUMNS + covariate_fields + PROVENANCE_COLUMNS)


def patient_record(patient_dir: Path, stages: list[str]) -> dict:
    """Merged stage records; status (`excluded` or `failed`) and reason of the first stage that was not ok."""
    record: dict = {"status": "ok", "reason": None, "excluded_at": None}
    for stage in stages:
        status = read_status(patient_dir / status_name(stage))
        if status.status != "ok":
            record.update(status=status.status, reason=status.reason, excluded_at=status.stage)
            break
        record.update(status.record)
    return record


def gather_patients(
    manifest: Path, patients_dir: Path, stages: list[str], covariates: list[str]
) -> pd.DataFrame:
    table = read_manifest_table(manifest)
    rows = []
    for entry in table.to_dict("records"):
        patient_id, center = str(entry["patient_id"]), str(entry["center"])
        row = {"patient_id": patient_id, "center": center}
        row.update(patient_record(patients_dir / center / patient_id, stages))
        for col in ("followup_days", "event", *covariates):
            row[col] = pd.to_numeric(entry.get(col), errors="coerce")
        rows.append(row)
    return pd.DataFrame(rows)


def write_patients_table(
    table: pd.DataFrame, out: Path, covariates: list[str], config_hash: str
) -> None:
    schema = patients_schema(covariates)
    unknown = set(table.columns) - set(schema.names)
    if unknown:
        raise ValueError(f"stage records carry columns not in the patients schema: {sorted(unknown)}")
    table = table.assign(software_version=__version__, config_hash=config_hash).reindex(columns=schema.names)
    for field in schema:
        if pa.types.is_integer(field.type):  # nullable: excluded patients have no frame count
            table[field.name] = table[field.name].astype(f"Int{field.type.bit_width}")
    arrow = pa.Table.from_pandas(table, schema=schema, preserve_index=False)
    write_parquet(out, arrow, metadata={"ctp_cohort_schema_version": SCHEMA_VERSION})


def gather_segments(manifest: Path, patients_dir: Path, last_stage: str) -> pd.DataFrame:
    """17 rows per patient whose chain completed (`last_stage` ok): the MBF and IMV segment tables joined."""
    table = read_manifest_table(manifest)
    parts = []
    for entry in table.to_dict("records"):
        patient_id, center = str(entry["patient_id"]), str(entry["center"])
        folder = patients_dir / center / patient_id
        if read_status(folder / status_name(last_stage)).status != "ok":
            continue
        mbf = pd.read_parquet(folder / file_name("segments_mbf"))
        imv = pd.read_parquet(folder / file_name("segments_imv"))[["segment", "ischemic_ml", "ischemic_pct"]]
        if any(sorted(t["segment"]) != list(SEGMENT_NAMES) for t in (mbf, imv)):
            raise ValueError(f"{folder}: segment tables do not hold segments 1..17 once each")
        merged = mbf.merge(imv, on="segment", validate="one_to_one")
        parts.append(merged.assign(patient_id=patient_id, center=center))
    if not parts:
        return pd.DataFrame(columns=SEGMENTS_SCHEMA.names)
    out = pd.concat(parts, ignore_index=True)
    out["segment_name"] = out["segment"].map(SEGMENT_NAMES)
    out["territory"] = out["segment"].map(SEGMENT_TERRITORY)
    return out


def write_segments_table(table: pd.DataFrame, out: Path, config_hash: str) -> None:
    table = table.assign(software_version=__version__, config_hash=config_hash).reindex(columns=SEGMENTS_SCHEMA.names)
    table["n_voxels"] = table["n_voxels"].astype("Int32")
    table["segment"] = table["segment"].astype("int8")
    arrow = pa.Table.from_pandas(table, schema=SEGMENTS_SCHEMA, preserve_index=False)
    write_parquet(out, arrow, metadata={"ctp_cohort_schema_version": SCHEMA_VERSION})
