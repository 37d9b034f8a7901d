"""Manifest validation: every problem reported at once, by row and column."""

from pathlib import Path

import pandas as pd
import pytest

from ctp_steps.manifest import ManifestError, manifest_patients, validate_manifest

COVARIATES = ["age", "diabetes"]


def _write(tmp_path: Path, rows: list[dict]) -> Path:
    for name in ("d1", "d2", "d3", "d4", "d5", "d1/nested"):
        (tmp_path / name).mkdir(exist_ok=True)
    path = tmp_path / "cohort.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _row(**kw) -> dict:
    base = {"patient_id": "P1", "center": "C1", "dicom_dir": "d1", "followup_days": "100",
            "event": "0", "age": "60", "diabetes": "1"}
    base.update(kw)
    return base


def test_valid_manifest_resolves_relative_paths_and_types(tmp_path):
    path = _write(tmp_path, [_row(), _row(patient_id="P2", dicom_dir=str(tmp_path / "d2"), event="1", age="")])
    table = validate_manifest(path, COVARIATES)
    assert table["dicom_dir"].tolist() == [str((tmp_path / "d1").resolve()), str(tmp_path / "d2")]
    assert table["event"].tolist() == [0, 1]
    assert table["followup_days"].tolist() == [100.0, 100.0]
    assert table["age"].iloc[0] == 60 and pd.isna(table["age"].iloc[1])
    patients = manifest_patients(table)
    assert [(p.center, p.patient_id) for p in patients] == [("C1", "P1"), ("C1", "P2")]


def test_every_problem_is_listed_with_row_and_column(tmp_path):
    rows = [
        _row(),
        _row(patient_id="../x", dicom_dir="d2"),
        _row(center="bad center", patient_id="P3", dicom_dir="d3"),
        _row(dicom_dir="d4"),  # duplicate of row 2
        _row(patient_id="P5", dicom_dir="missing"),
        _row(patient_id="P6", followup_days="-3", event="2", age="old", dicom_dir="d5"),
    ]
    with pytest.raises(ManifestError) as err:
        validate_manifest(_write(tmp_path, rows), COVARIATES)
    msg = str(err.value)
    assert "7 problem(s)" in msg
    assert "row 3, column patient_id: '../x' does not match" in msg
    assert "row 4, column center: 'bad center' does not match" in msg
    assert "row 5: duplicate (center, patient_id) ('C1', 'P1'), first seen in row 2" in msg
    assert f"row 6, column dicom_dir: {(tmp_path / 'missing').resolve()} is not a directory" in msg
    assert "row 7, column followup_days: '-3' is not a number ≥ 0" in msg
    assert "row 7, column event: '2' is not 0 or 1" in msg
    assert "row 7, column age: 'old' is not a number" in msg


def test_missing_columns_and_file(tmp_path):
    path = tmp_path / "m.csv"
    pd.DataFrame([{"patient_id": "P1", "center": "C1"}]).to_csv(path, index=False)
    with pytest.raises(ManifestError, match="missing columns: dicom_dir, age, diabetes"):
        validate_manifest(path, COVARIATES)
    with pytest.raises(ManifestError, match="file not found"):
        validate_manifest(tmp_path / "nope.csv", COVARIATES)


def test_parquet_manifest(tmp_path):
    (tmp_path / "d1").mkdir()
    path = tmp_path / "m.parquet"
    pd.DataFrame([_row()]).to_parquet(path)
    assert validate_manifest(path, COVARIATES)["patient_id"].tolist() == ["P1"]


def test_ids_with_whitespace_or_control_characters_are_rejected(tmp_path):
    rows = [_row(patient_id="P005\n"), _row(patient_id=" P6", dicom_dir="d2"), _row(patient_id="P7\t", dicom_dir="d3")]
    with pytest.raises(ManifestError) as err:
        validate_manifest(_write(tmp_path, rows), COVARIATES)
    msg = str(err.value)
    assert "3 problem(s)" in msg
    assert "row 2, column patient_id: 'P005\\n' does not match" in msg
    assert "row 3, column patient_id: ' P6' does not match" in msg
    assert "row 4, column patient_id: 'P7\\t' does not match" in msg


def test_one_dicom_folder_belongs_to_one_row(tmp_path):
    """The same exam twice would enter the outcome model twice; a nested folder would be read into its parent."""
    rows = [
        _row(),
        _row(patient_id="P2", dicom_dir=str(tmp_path / "d1")),  # same folder, absolute
        _row(patient_id="P3", dicom_dir="d1/nested"),
        _row(patient_id="P4", dicom_dir="d2"),
    ]
    (tmp_path / "d2link").symlink_to(tmp_path / "d2")
    rows.append(_row(patient_id="P5", dicom_dir="d2link"))
    with pytest.raises(ManifestError) as err:
        validate_manifest(_write(tmp_path, rows), COVARIATES)
    msg = str(err.value)
    assert "3 problem(s)" in msg
    assert "row 3, column dicom_dir: same folder as row 2" in msg
    assert "row 6, column dicom_dir: same folder as row 5" in msg
    assert "row 4, column dicom_dir: inside the folder of row 2" in msg
