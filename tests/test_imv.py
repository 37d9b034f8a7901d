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


# ---------------------------------------------------------------- IMV interval from the MBF SE map
from ctp_steps.imv import IMVInterval, imv_interval, patient_seed  # noqa: E402


def smooth_patient():
    """The slab with a graded LAD block: MBF 60 at the edge column rising by 10 per column to 200 (threshold 100
    crosses inside segment 1), so an MBF error moves the ischemic border and IMV with it."""
    mbf, myo, aha = slab_patient()
    mbf[1, 5, 15] = mbf[4, 12, 14] = 200.0
    for i, col in enumerate(range(2, 8)):
        mbf[:, 2:18, col] = 60.0 + 20.0 * i  # 60 80 100 120 140 160
    return mbf, myo, aha


def _interval(se, cfg=IMVConfig(min_cluster_ml=0.05), seed=1) -> tuple[IMVInterval, float]:
    mbf, myo, aha = smooth_patient()
    point = ischemic_region(mbf, myo, aha, VOXEL_ML, cfg).ischemia.sum() * 100.0 / myo.sum()
    se_map = np.where(myo, se, 0.0)
    return imv_interval(mbf, se_map, myo, aha, VOXEL_ML, cfg, np.random.default_rng(seed)), point


def test_imv_interval_is_degenerate_without_se_and_widens_with_it():
    zero, point = _interval(0.0)
    assert point == pytest.approx(100 * 2 * 96 / 1536)  # columns at 60 and 80
    assert zero.pct_ci_low == zero.pct_ci_high == pytest.approx(point) and zero.pct_se == 0.0 and zero.n_draws == 200
    widths = []
    for se in (5.0, 15.0, 40.0):
        result, _ = _interval(se)
        assert result.pct_ci_low <= point <= result.pct_ci_high
        assert result.ml_ci_high == pytest.approx(result.pct_ci_high / 100 * 1536 * VOXEL_ML)
        widths.append((result.pct_ci_high - result.pct_ci_low, result.pct_se))
    assert 0 < widths[0][0] < widths[1][0] < widths[2][0]
    assert 0 < widths[0][1] < widths[1][1] < widths[2][1]
    # SE 15 on a ramp of 20 per column: one column is 6.25 % of the slab; IMV moves by about a column
    assert 3.0 < widths[1][1] < 12.0


def test_imv_interval_is_reproducible_per_patient_and_follows_the_relative_rule():
    a, _ = _interval(15.0, seed=patient_seed("CTR-A/S0001"))
    b, _ = _interval(15.0, seed=patient_seed("CTR-A/S0001"))
    c, _ = _interval(15.0, seed=patient_seed("CTR-A/S0002"))
    assert a == b and a != c and patient_seed("CTR-A/S0001") == patient_seed("CTR-A/S0001")
    relative, point = _interval(15.0, IMVConfig(mode="relative", threshold_rel=0.5, min_cluster_ml=0.05))
    assert relative.pct_ci_low <= point <= relative.pct_ci_high and relative.pct_se > 0
    off, _ = _interval(15.0, IMVConfig(interval_draws=0))
    assert off.n_draws == 0 and np.isnan(off.pct_se) and off.record()["imv_pct_ci_low"] is None
    unknown, _ = _interval(np.nan)
    assert unknown.n_draws == 0 and unknown.record()["imv_pct_se"] is None


def test_stage_reports_the_interval_when_given_the_se_map(tmp_path):
    from dataclasses import dataclass
    from pathlib import Path

    from ctp_steps.imv import Inputs, Outputs, run
    from ctp_steps.stages import Context

    @dataclass(frozen=True, kw_only=True)
    class WithSE(Inputs):  # Inputs itself names mbf_se once rules/imv.smk takes the MBF stage's SE map
        mbf_se: Path | None = None

    mbf, myo, aha = smooth_patient()
    folder = tmp_path / "CTR-A" / "S0001"
    folder.mkdir(parents=True)
    _write_patient(folder, mbf, myo, aha)
    write_volume(folder / "mbf_se.nii.gz", np.where(myo, 15.0, 0.0).astype(np.float32), GEOMETRY)
    inputs = WithSE(mbf=folder / "mbf.nii.gz", myocardium=folder / "myocardium.nii.gz", aha=folder / "aha17.nii.gz",
                    mbf_se=folder / "mbf_se.nii.gz")
    outputs = Outputs(ischemia=folder / "ischemia.nii.gz", segments=folder / "segments_imv.parquet",
                      qc=folder / "imv_qc.png", status=folder / "imv.status.json")
    record = run(inputs, outputs, IMVConfig(min_cluster_ml=0.05), Context("threshold"))
    interval_keys = {"imv_pct_se", "imv_pct_ci_low", "imv_pct_ci_high", "imv_ml_se", "imv_ml_ci_low", "imv_ml_ci_high"}
    assert set(record) == IMV_RECORD_KEYS | interval_keys
    assert record["imv_pct_ci_low"] <= record["imv_pct"] <= record["imv_pct_ci_high"] and record["imv_pct_se"] > 0
    expected, _ = _interval(15.0, seed=patient_seed("CTR-A/S0001"))
    assert record["imv_pct_se"] == pytest.approx(expected.pct_se)
    without = run(Inputs(mbf=inputs.mbf, myocardium=inputs.myocardium, aha=inputs.aha), outputs,
                  IMVConfig(min_cluster_ml=0.05), Context("threshold"))
    assert set(without) == IMV_RECORD_KEYS and without["imv_pct"] == record["imv_pct"]
