"""Validation of the stage's uncertainty against a known truth: interval coverage, z-scores, efficiency of
segment and global MBF (ctp_steps/validation/mbf.py) and the IMV% interval (ctp_steps/validation/imv.py),
and NaN rows, never errors, for older runs without the uncertainty columns."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ctp_steps.imv import IMVConfig
from ctp_steps.io import write_json, write_parquet, write_volume
from ctp_steps.types import Geometry
from ctp_steps.validation.imv import imv_interval_rows, imv_patient_metrics
from ctp_steps.validation.mbf import (
    efficiency,
    interval_coverage,
    uncertainty_metrics,
    uncertainty_rows,
    z_scores,
)

GEOMETRY = Geometry((0.0, 0.0, 0.0), (2.0, 2.0, 2.5), (1, 0, 0, 0, 1, 0, 0, 0, 1))
UNCERTAINTY_METRICS = [
    ("mbf_ci95_coverage", "segment"),
    ("mbf_ci95_coverage", "global"),
    ("mbf_z_rms", "segment"),
    ("mbf_z_sd", "segment"),
    ("mbf_z", "global"),
    ("mbf_segment_efficiency_vs_reported_se", "one_compartment"),
]

# four segments: truths 100, 150, 80, 200; segment 3's interval misses its truth (est 120 +- 20 around 80)
TRUE = np.array([100.0, 150.0, 80.0, 200.0])
EST = np.array([110.0, 140.0, 120.0, 205.0])
SE = np.array([10.0, 10.0, 10.0, 5.0])
LOW, HIGH = EST - 2.0 * SE, EST + 2.0 * SE


def segments_table(columns: tuple[str, ...] = ("mbf_mean", "mbf_se", "mbf_ci_low", "mbf_ci_high")) -> pd.DataFrame:
    """17 rows as the MBF stage writes them: segments 1-4 measured, 5-17 empty (NaN)."""
    full = {
        "mbf_mean": np.r_[EST, np.full(13, np.nan)],
        "mbf_se": np.r_[SE, np.full(13, np.nan)],
        "mbf_ci_low": np.r_[LOW, np.full(13, np.nan)],
        "mbf_ci_high": np.r_[HIGH, np.full(13, np.nan)],
    }
    return pd.DataFrame({"segment": np.arange(1, 18), **{c: full[c] for c in columns}})


def true_segments() -> np.ndarray:
    """Truth of all 17 segments; 5-17 have a truth but no estimate, so they count in no metric."""
    return np.r_[TRUE, np.full(13, 120.0)]


RECORD = {"mbf_global": 160.0, "mbf_global_se": 8.0, "mbf_global_ci_low": 143.0, "mbf_global_ci_high": 177.0}


# ---------------------------------------------------------------- the maths
def test_interval_coverage_counts_only_complete_entries():
    assert interval_coverage(TRUE, LOW, HIGH) == 0.75
    assert interval_coverage([1.0, 2.0, np.nan], [0.0, 2.5, 0.0], [1.0, 3.0, 5.0]) == 0.5  # ends inclusive
    assert math.isnan(interval_coverage([1.0], [np.nan], [2.0]))


def test_z_scores_and_efficiency():
    np.testing.assert_allclose(z_scores(EST, TRUE, SE), [1.0, -1.0, 4.0, 1.0])
    assert z_scores([1.0, 2.0], [1.0, 1.0], [0.0, np.nan]).size == 0
    # RMSE sqrt((100 + 100 + 1600 + 25) / 4), root-mean SE² sqrt((100 * 3 + 25) / 4)
    assert efficiency(EST, TRUE, SE) == pytest.approx(math.sqrt(1825 / 4) / math.sqrt(325 / 4))
    assert efficiency(TRUE, TRUE, SE) == 0.0
    assert math.isnan(efficiency(EST, TRUE, np.full(4, np.nan)))


# ---------------------------------------------------------------- MBF rows
def test_uncertainty_rows_against_known_truth():
    rows = {(m, t): v for m, t, v in uncertainty_rows(segments_table(), true_segments(), RECORD, 150.0,
                                                      "one_compartment")}
    assert list(rows) == UNCERTAINTY_METRICS
    assert rows["mbf_ci95_coverage", "segment"] == 0.75
    assert rows["mbf_ci95_coverage", "global"] == 1.0
    assert rows["mbf_z_rms", "segment"] == pytest.approx(math.sqrt((1 + 1 + 16 + 1) / 4))
    assert rows["mbf_z_sd", "segment"] == pytest.approx(np.std([1.0, -1.0, 4.0, 1.0], ddof=1))
    assert rows["mbf_z", "global"] == pytest.approx(10.0 / 8.0)
    assert rows["mbf_segment_efficiency_vs_reported_se", "one_compartment"] == pytest.approx(math.sqrt(1825 / 325))
    missed = uncertainty_rows(segments_table(), true_segments(), RECORD, 140.0, "one_compartment")
    assert dict(((m, t), v) for m, t, v in missed)["mbf_ci95_coverage", "global"] == 0.0


@pytest.mark.parametrize(
    "segments, record",
    [
        (None, {}),  # no segment table at all
        (segments_table(("mbf_mean",)), {"mbf_global": 160.0}),  # an older run: no uncertainty columns
        (segments_table(), {"mbf_global": 160.0, "mbf_global_se": None,  # upslope: intervals null
                            "mbf_global_ci_low": None, "mbf_global_ci_high": None}),
    ],
    ids=["no_table", "old_columns", "null_record"],
)
def test_missing_uncertainty_gives_nan_rows(segments, record):
    if segments is not None and "mbf_se" in segments:
        segments = segments.assign(mbf_se=np.nan, mbf_ci_low=np.nan, mbf_ci_high=np.nan)
    rows = uncertainty_rows(segments, true_segments(), record, 150.0, "one_compartment")
    assert [(m, t) for m, t, _ in rows] == UNCERTAINTY_METRICS
    assert all(math.isnan(v) for _, _, v in rows)


def _mbf_files(tmp_path, segments: pd.DataFrame | None, record: dict):
    truth_dir, patient_dir = tmp_path / "truth" / "CTR-A" / "S0001", tmp_path / "patient"
    truth_dir.mkdir(parents=True)
    patient_dir.mkdir()
    write_json(truth_dir / "truth.json",
               {"mbf_global": 150.0, "mbf_segments": [*TRUE.tolist(), *([None] * 13)]})
    write_json(patient_dir / "mbf.status.json", {"stage": "mbf", "status": "ok", "reason": None, "record": record})
    if segments is not None:
        write_parquet(patient_dir / "segments_mbf.parquet", segments)
    return truth_dir, patient_dir


def test_uncertainty_metrics_from_files(tmp_path):
    truth_dir, patient_dir = _mbf_files(tmp_path, segments_table(), RECORD)
    rows = dict(((m, t), v) for m, t, v in uncertainty_metrics(truth_dir, patient_dir, "one_compartment"))
    assert rows["mbf_ci95_coverage", "segment"] == 0.75 and rows["mbf_ci95_coverage", "global"] == 1.0


def test_uncertainty_metrics_of_an_old_run(tmp_path):
    truth_dir, patient_dir = _mbf_files(tmp_path, None, {"mbf_global": 160.0})
    rows = uncertainty_metrics(truth_dir, patient_dir, "fermi")
    assert [t for _, t, _ in rows][-1] == "fermi" and all(math.isnan(v) for _, _, v in rows)


# ---------------------------------------------------------------- IMV rows
def test_imv_interval_rows():
    record = {"imv_pct": 12.0, "imv_pct_se": 2.0, "imv_pct_ci_low": 8.0, "imv_pct_ci_high": 16.0}
    assert imv_interval_rows(record, 15.0) == [("imv_pct_ci95_coverage", "lv", 1.0), ("imv_pct_z", "lv", -1.5)]
    assert imv_interval_rows(record, 16.5)[0] == ("imv_pct_ci95_coverage", "lv", 0.0)
    old = imv_interval_rows({"imv_pct": 12.0}, 15.0)
    assert [(m, t) for m, t, _ in old] == [("imv_pct_ci95_coverage", "lv"), ("imv_pct_z", "lv")]
    assert all(math.isnan(v) for _, _, v in old)


@pytest.mark.parametrize("with_interval", [True, False], ids=["interval", "old_record"])
def test_imv_patient_metrics_on_files(tmp_path, with_interval):
    """A 4x10x10 myocardium slab, true ischemia 20 of 400 voxels (5 %), the stage's 30 voxels (7.5 %)."""
    shape = (4, 10, 10)
    myo = np.ones(shape, dtype=bool)
    aha = np.ones(shape, dtype=np.uint8)
    true_mbf = np.full(shape, 200.0)
    true_mbf[0, 0:2, :] = 60.0
    ischemia = np.zeros(shape, dtype=np.uint8)
    ischemia[0, 0:3, :] = 1
    truth_dir, patient_dir = tmp_path / "truth" / "CTR-A" / "S0001", tmp_path / "patient"
    truth_dir.mkdir(parents=True)
    patient_dir.mkdir()
    write_volume(truth_dir / "mbf.nii.gz", true_mbf.astype(np.float32), GEOMETRY)
    write_volume(truth_dir / "labels.nii.gz", np.where(myo, 3, 0).astype(np.uint8), GEOMETRY)
    write_volume(truth_dir / "aha17.nii.gz", aha, GEOMETRY)
    write_json(truth_dir / "truth.json", {"ischemia_threshold_mbf": 100.0})
    write_volume(patient_dir / "ischemia.nii.gz", ischemia, GEOMETRY)
    write_volume(patient_dir / "mbf_raw.nii.gz", true_mbf.astype(np.float32), GEOMETRY)
    write_volume(patient_dir / "myocardium.nii.gz", myo.astype(np.uint8), GEOMETRY)
    write_volume(patient_dir / "aha17.nii.gz", aha, GEOMETRY)
    record = {"imv_pct": 7.5}
    if with_interval:
        record |= {"imv_pct_se": 1.0, "imv_pct_ci_low": 5.5, "imv_pct_ci_high": 9.5}
    write_json(patient_dir / "imv.status.json", {"stage": "imv", "status": "ok", "reason": None, "record": record})
    value = imv_patient_metrics(truth_dir, patient_dir, IMVConfig().model_dump_json()).set_index(
        ["metric", "target"])["value"]
    assert value["imv_pct_error", "lv"] == pytest.approx(2.5)  # the existing rows stay as they were
    if with_interval:
        assert value["imv_pct_ci95_coverage", "lv"] == 0.0  # 5.0 lies below [5.5, 9.5]
        assert value["imv_pct_z", "lv"] == pytest.approx(2.5)
    else:
        assert math.isnan(value["imv_pct_ci95_coverage", "lv"]) and math.isnan(value["imv_pct_z", "lv"])
