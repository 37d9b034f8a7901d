"""IMV stage: thresholds (absolute, relative to remote or percentile), cluster filter, exact volumes,
the stage on files, and its validation metrics against a known truth."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ctp_steps.imv import IMVConfig, imv_record, ischemic_region, mbf_threshold, segment_table
from ctp_steps.io import read_status, read_volume, write_json, write_volume
from ctp_steps.validation.imv import imv_patient_metrics
from ctp_steps.types import Geometry

GEOMETRY = Geometry((0.0, 0.0, 0.0), (2.0, 2.0, 2.5), (1, 0, 0, 0, 1, 0, 0, 0, 1))
VOXEL_ML = 2.0 * 2.0 * 2.5 / 1000.0


def slab_patient():
    """A 6x20x20 myocardium slab: segments by column band (LAD 1, RCA 3, LCX 5); LAD block ischemic at 60,
    two isolated single low voxels in LCX (noise), everything else 200."""
    shape = (6, 20, 20)
    myo = np.zeros(shape, dtype=bool)
    myo[:, 2:18, 2:18] = True
    aha = np.zeros(shape, dtype=np.uint8)
    aha[:, 2:18, 2:8], aha[:, 2:18, 8:13], aha[:, 2:18, 13:18] = 1, 3, 5
    mbf = np.where(myo, 200.0, 0.0)
    mbf[:, 2:18, 2:6] = 60.0  # 6 x 16 x 4 = 384 voxels, inside segment 1
    mbf[1, 5, 15] = mbf[4, 12, 14] = 80.0  # isolated
    return mbf, myo, aha


def test_absolute_threshold_and_cluster_filter():
    mbf, myo, aha = slab_patient()
    result = ischemic_region(mbf, myo, aha, VOXEL_ML, IMVConfig(min_cluster_ml=0.05))
    assert result.threshold == 100.0 and result.n_clusters == 1
    assert result.ischemia.sum() == 384 and not result.ischemia[:, :, 6:].any()
    kept = ischemic_region(mbf, myo, aha, VOXEL_ML, IMVConfig(min_cluster_ml=0.0))
    assert kept.ischemia.sum() == 386 and kept.n_clusters == 3


def test_record_and_segment_table_volumes():
    mbf, myo, aha = slab_patient()
    result = ischemic_region(mbf, myo, aha, VOXEL_ML, IMVConfig())
    record = imv_record(result, myo, aha, VOXEL_ML, "absolute")
    n_myo = myo.sum()
    assert record["imv_ml"] == pytest.approx(384 * VOXEL_ML)
    assert record["imv_pct"] == pytest.approx(100 * 384 / n_myo)
    assert record["imv_ml_lad"] == pytest.approx(384 * VOXEL_ML) and record["imv_ml_rca"] == record["imv_ml_lcx"] == 0
    assert record["imv_pct_lad"] + record["imv_pct_rca"] + record["imv_pct_lcx"] == pytest.approx(record["imv_pct"])
    assert record["imv_threshold"] == 100.0 and record["imv_mode"] == "absolute"
    table = segment_table(result.ischemia, myo, aha, VOXEL_ML)
    assert len(table) == 17 and table.segment.tolist() == list(range(1, 18))
    seg1 = table.set_index("segment").loc[1]
    assert seg1.ischemic_ml == pytest.approx(384 * VOXEL_ML) and seg1.ischemic_pct == pytest.approx(100 * 4 / 6)
    assert table.set_index("segment").loc[2, "ischemic_pct"] != table.set_index("segment").loc[2, "ischemic_pct"]  # NaN


def test_relative_thresholds():
    mbf, myo, aha = slab_patient()
    values, segments = mbf[myo], aha[myo]
    remote = mbf_threshold(values, segments, IMVConfig(mode="relative"))
    assert remote == pytest.approx(0.78 * 200.0)  # RCA and LCX medians are 200
    pct = mbf_threshold(values, segments, IMVConfig(mode="relative", reference="percentile", reference_percentile=10))
    assert pct == pytest.approx(0.78 * np.percentile(values, 10))
    result = ischemic_region(mbf, myo, aha, VOXEL_ML, IMVConfig(mode="relative", threshold_rel=0.5))
    assert result.threshold == pytest.approx(100.0) and result.ischemia.sum() == 384


def test_config_is_strict_and_documented():
    assert all("description" in f for f in IMVConfig.model_json_schema()["properties"].values())
    with pytest.raises(ValueError):
        IMVConfig(threshold=90)
    with pytest.raises(ValueError):
        IMVConfig(threshold_rel=1.5)


def _write_patient(folder, mbf, myo, aha):
    write_volume(folder / "mbf.nii.gz", mbf.astype(np.float32), GEOMETRY)
    write_volume(folder / "mbf_raw.nii.gz", mbf.astype(np.float32), GEOMETRY)
    write_volume(folder / "myocardium.nii.gz", myo.astype(np.uint8), GEOMETRY)
    write_volume(folder / "aha17.nii.gz", aha, GEOMETRY)
    write_json(folder / "mbf.status.json", {"stage": "mbf", "status": "ok", "reason": None, "record": {}})


def _run_cli(folder, cfg: IMVConfig) -> None:
    from ctp_steps.cli import main

    files = {
        "input": {"upstream": "mbf.status.json", "mbf": "mbf.nii.gz", "myocardium": "myocardium.nii.gz",
                  "aha": "aha17.nii.gz"},
        "output": {"ischemia": "ischemia.nii.gz", "segments": "segments_imv.parquet", "qc": "imv_qc.png",
                   "status": "imv.status.json"},
    }
    files = {side: {k: str(folder / v) for k, v in named.items()} for side, named in files.items()}
    main(["run", "imv", "--implementation", "threshold", "--files", json.dumps(files),
          "--config-json", cfg.model_dump_json()])


IMV_RECORD_KEYS = {
    "imv_ml", "imv_pct", "imv_threshold", "imv_mode", "imv_n_clusters",
    "imv_ml_lad", "imv_pct_lad", "imv_ml_rca", "imv_pct_rca", "imv_ml_lcx", "imv_pct_lcx",
}


def test_stage_on_files(tmp_path):
    mbf, myo, aha = slab_patient()
    _write_patient(tmp_path, mbf, myo, aha)
    _run_cli(tmp_path, IMVConfig())
    status = read_status(tmp_path / "imv.status.json")
    assert status.status == "ok" and set(status.record) == IMV_RECORD_KEYS
    ischemia, geometry = read_volume(tmp_path / "ischemia.nii.gz")
    assert ischemia.dtype == np.uint8 and ischemia.sum() == 384 and geometry.allclose(GEOMETRY)
    assert len(pd.read_parquet(tmp_path / "segments_imv.parquet")) == 17
    assert (tmp_path / "imv_qc.png").stat().st_size > 5_000


def test_upstream_exclusion_propagates(tmp_path):
    mbf, myo, aha = slab_patient()
    _write_patient(tmp_path, mbf, myo, aha)
    write_json(tmp_path / "mbf.status.json",
               {"stage": "mbf", "status": "excluded", "reason": "mbf: aif.parquet: flat", "record": {}})
    _run_cli(tmp_path, IMVConfig())
    status = read_status(tmp_path / "imv.status.json")
    assert status.status == "excluded" and status.reason == "mbf: aif.parquet: flat"


def test_validation_metrics_against_truth(tmp_path):
    mbf, myo, aha = slab_patient()
    truth_dir, patient_dir = tmp_path / "truth" / "CTR-A" / "S0001", tmp_path / "patient"
    truth_dir.mkdir(parents=True)
    patient_dir.mkdir()
    true_mbf = mbf.copy()
    true_mbf[:, 2:18, 6] = 60.0  # truth: one more column ischemic (6 x 16 = 96 voxels)
    write_volume(truth_dir / "mbf.nii.gz", true_mbf.astype(np.float32), GEOMETRY)
    write_volume(truth_dir / "labels.nii.gz", np.where(myo, 3, 0).astype(np.uint8), GEOMETRY)
    write_volume(truth_dir / "aha17.nii.gz", aha, GEOMETRY)
    write_json(truth_dir / "truth.json", {"ischemia_threshold_mbf": 100.0})
    _write_patient(patient_dir, mbf, myo, aha)
    _run_cli(patient_dir, IMVConfig())
    rows = imv_patient_metrics(truth_dir, patient_dir, IMVConfig().model_dump_json())
    assert rows[["patient_id", "center", "stage"]].drop_duplicates().values.tolist() == [["S0001", "CTR-A", "imv"]]
    value = rows.set_index(["metric", "target"])["value"]
    n = myo.sum()
    # truth: 96 more voxels + the 2 isolated low ones (the truth has no cluster filter)
    assert value["imv_pct_abs_error", "lv"] == pytest.approx(100 * 98 / n)
    assert value["ischemia_dice", "lv"] == pytest.approx(2 * 384 / (384 + 482))
    assert value["imv_pct_abs_error", "lad"] == pytest.approx(100 * 96 / n)
    assert value["imv_pct_abs_error", "rca"] == 0.0
    assert ("imv_pct_abs_error", "lv_raw") in value.index
