"""Cohort gather and the per-patient stage contract: exact table contents."""

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from ctp_steps.cli import run_patient_stage
from ctp_steps.cohort import SCHEMA_VERSION, gather_patients, write_patients_table
from ctp_steps.io import read_status
from ctp_steps.types import PatientInputError

RECORD = {"n_frames": 14, "time_span_s": 33.5, "shape_z": 16, "shape_y": 40, "shape_x": 40,
          "spacing_x_mm": 5.0, "spacing_y_mm": 5.0, "spacing_z_mm": 6.0, "kvp": 100.0}


def _stage(patient_dir: Path, stage: str, work, upstream: list[str] = ()) -> None:
    run_patient_stage(
        stage, patient_dir / f"{stage}.status.json", [patient_dir / f"{stage}.out"],
        [patient_dir / f"{u}.status.json" for u in upstream], work,
    )


def _fail(msg: str):
    def work():
        raise PatientInputError(msg)
    return work


def test_stage_contract_records_reason_and_propagates(tmp_path):
    ok, bad = tmp_path / "C" / "P1", tmp_path / "C" / "P2"
    _stage(ok, "convert", lambda: RECORD)
    _stage(bad, "convert", _fail("/data/P2: no readable DICOM files (3 files skipped)"))
    (bad / "next.out").parent.mkdir(parents=True, exist_ok=True)
    for d in (ok, bad):
        _stage(d, "next", lambda: {}, upstream=["convert"])
    assert read_status(ok / "next.status.json").status == "ok"
    bad_next = read_status(bad / "next.status.json")
    assert bad_next.status == "excluded"
    # absolute paths never reach a reason (real archives name folders after patients)
    assert bad_next.reason == "convert: <path>/P2: no readable DICOM files (3 files skipped)"
    assert (bad / "next.out").read_bytes() == b""


def test_an_unexpected_error_fails_the_patient_not_the_cohort(tmp_path, caplog):
    """A bug on one patient: status `failed` with the exception, the log's path and no PHI; downstream follows."""
    results = tmp_path / "results"
    patient = results / "patients" / "CTR-A" / "P7"
    dicom = "/archive/DOE_JANE_ACC1234/SE002/IM0001.dcm"

    def work():
        raise ValueError(f"rate x duration above 700.0\nwhile reading {dicom} (StudyDate 20240917)\n{patient}/aif.parquet")

    _stage(patient, "mbf", work)
    status = read_status(patient / "mbf.status.json")
    assert status.status == "failed"
    assert status.reason == (
        "mbf: failed with ValueError: rate x duration above 700.0 while reading <path>/IM0001.dcm "
        "(StudyDate <date>) <results>/patients/CTR-A/P7/aif.parquet (log: logs/mbf/CTR-A/P7.log)"
    )
    assert (patient / "mbf.out").read_bytes() == b""
    logged = caplog.text
    assert "Traceback" not in logged and "in work" in logged  # the frames, for whoever debugs it
    assert "DOE_JANE" not in logged and "20240917" not in logged and str(results) not in logged
    _stage(patient, "imv", lambda: {}, upstream=["mbf"])
    downstream = read_status(patient / "imv.status.json")
    assert (downstream.status, downstream.reason) == ("failed", status.reason)


def test_interrupts_are_not_contained(tmp_path):
    """Ctrl-C or a scheduler's signal must still stop the job, leaving no status behind."""
    def work():
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        _stage(tmp_path / "C" / "P1", "convert", work)
    assert not (tmp_path / "C" / "P1" / "convert.status.json").exists()


def test_gather_one_row_per_manifest_patient(tmp_path):
    patients = tmp_path / "patients"
    _stage(patients / "C1" / "P1", "convert", lambda: RECORD)
    _stage(patients / "C1" / "P2", "convert", _fail("frame 3 has 15 of 16 slices (incomplete)"))
    _stage(patients / "C1" / "P3", "convert", lambda: 1 / 0)
    manifest = tmp_path / "m.csv"
    pd.DataFrame([
        {"patient_id": "P1", "center": "C1", "dicom_dir": "x", "followup_days": "10.5", "event": "1", "age": "70"},
        {"patient_id": "P2", "center": "C1", "dicom_dir": "y", "followup_days": "", "event": "", "age": "55"},
        {"patient_id": "P3", "center": "C1", "dicom_dir": "z", "followup_days": "3", "event": "0", "age": "60"},
    ]).to_csv(manifest, index=False)
    table = gather_patients(manifest, patients, ["convert"], ["age"])
    out = tmp_path / "patients.parquet"
    write_patients_table(table, out, ["age"], "abc123")
    got = pd.read_parquet(out)
    assert got["status"].tolist() == ["ok", "excluded", "failed"]
    assert got["reason"].tolist()[1] == "convert: frame 3 has 15 of 16 slices (incomplete)"
    assert got["reason"].tolist()[2] == (
        "convert: failed with ZeroDivisionError: division by zero (log: logs/convert/C1/P3.log)"
    )
    assert got["excluded_at"].tolist() == [None, "convert", "convert"]
    assert got["n_frames"].tolist()[0] == 14 and pd.isna(got["n_frames"].tolist()[1])
    assert got["followup_days"].tolist()[0] == 10.5 and pd.isna(got["followup_days"][1])
    assert got["event"].tolist()[0] == 1 and got["age"].tolist() == [70.0, 55.0, 60.0]
    assert got["config_hash"].unique().tolist() == ["abc123"]
    meta = pq.read_schema(out).metadata
    assert meta[b"ctp_cohort_schema_version"] == SCHEMA_VERSION.encode()
    assert str(pq.read_schema(out).field("n_frames").type) == "int32"


def test_unknown_record_column_is_a_bug(tmp_path):
    patients = tmp_path / "patients"
    _stage(patients / "C1" / "P1", "convert", lambda: {"made_up": 1})
    manifest = tmp_path / "m.csv"
    pd.DataFrame([{"patient_id": "P1", "center": "C1", "dicom_dir": "x"}]).to_csv(manifest, index=False)
    table = gather_patients(manifest, patients, ["convert"], [])
    with pytest.raises(ValueError, match="made_up"):
        write_patients_table(table, tmp_path / "o.parquet", [], "h")


def _segment_tables(folder: Path, offset: float) -> None:
    from ctp_steps.io import write_parquet

    segs = list(range(1, 18))
    write_parquet(folder / "segments_mbf.parquet", pd.DataFrame({
        "segment": segs, "territory": ["x"] * 17, "mbf_mean": [offset + s for s in segs],
        "mbf_median": [offset + s for s in segs], "mbf_sd": [1.0] * 17, "mbf_raw_mean": [offset] * 17,
        "mbf_curve_fit": [offset] * 17, "n_voxels": [100 + s for s in segs], "volume_ml": [2.0] * 17,
    }))
    write_parquet(folder / "segments_imv.parquet", pd.DataFrame({
        "segment": segs[::-1], "territory": ["x"] * 17, "ischemic_ml": [0.1 * s for s in segs[::-1]],
        "ischemic_pct": [5.0 * s for s in segs[::-1]], "volume_ml": [2.0] * 17,
    }))


def test_segments_table_has_17_rows_per_usable_patient(tmp_path):
    from ctp_steps.cohort import gather_segments, write_segments_table

    patients = tmp_path / "patients"
    for pid, work in (("P1", lambda: {}), ("P2", _fail("mbf: AIF peak 40 HU below the minimum 100 HU")),
                      ("P3", lambda: {})):
        _stage(patients / "C1" / pid, "imv", work)
    _segment_tables(patients / "C1" / "P1", 100.0)
    _segment_tables(patients / "C1" / "P3", 200.0)
    manifest = tmp_path / "m.csv"
    pd.DataFrame([{"patient_id": p, "center": "C1", "dicom_dir": "x"} for p in ("P1", "P2", "P3")]).to_csv(
        manifest, index=False
    )
    out = tmp_path / "segments.parquet"
    write_segments_table(gather_segments(manifest, patients, "imv"), out, "h")
    got = pd.read_parquet(out)
    assert len(got) == 34 and got["patient_id"].unique().tolist() == ["P1", "P3"]
    p3 = got[got.patient_id == "P3"].set_index("segment")
    assert p3.loc[4, "mbf_mean"] == 204.0 and p3.loc[4, "ischemic_pct"] == 20.0 and p3.loc[4, "n_voxels"] == 104
    assert p3.loc[1, "segment_name"] == "basal anterior" and p3.loc[17, "territory"] == "LAD"
    schema = pq.read_schema(out)
    assert str(schema.field("segment").type) == "int8" and schema.metadata[b"ctp_cohort_schema_version"]


def test_segments_table_rejects_a_patient_missing_segments(tmp_path):
    from ctp_steps.cohort import gather_segments
    from ctp_steps.io import write_parquet

    folder = tmp_path / "patients" / "C1" / "P1"
    _stage(folder, "imv", lambda: {})
    _segment_tables(folder, 0.0)
    mbf = pd.read_parquet(folder / "segments_mbf.parquet")
    write_parquet(folder / "segments_mbf.parquet", mbf[mbf.segment != 17])
    manifest = tmp_path / "m.csv"
    pd.DataFrame([{"patient_id": "P1", "center": "C1", "dicom_dir": "x"}]).to_csv(manifest, index=False)
    with pytest.raises(ValueError, match="P1: segment tables do not hold segments 1..17"):
        gather_segments(manifest, tmp_path / "patients", "imv")
