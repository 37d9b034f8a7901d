"""Cohort manifest: read and validate every row before any job is planned.

All problems are collected and reported at once, by row and column, so a user
fixes a 10,000-row sheet in one pass instead of one error per run.
Rows are numbered as in a spreadsheet: row 2 is the first data row of a CSV.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ctp_steps.types import ID_PATTERN

REQUIRED_COLUMNS = ("patient_id", "center", "dicom_dir")
OUTCOME_COLUMNS = ("followup_days", "event")
_ID_RE = re.compile(ID_PATTERN)


class ManifestError(ValueError):
    """Raised with every manifest problem listed, one per line."""


@dataclass(frozen=True)
class ManifestPatient:
    patient_id: str
    center: str
    dicom_dir: Path


def read_manifest_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path}: file not found")
    if path.suffix.lower() == ".parquet":
        return pd.read_parquet(path)
    if path.suffix.lower() in {".csv", ".txt"}:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    raise ManifestError(f"manifest {path}: expected a .csv or .parquet file")


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def _number(value) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def validate_manifest(path: str | Path, covariates: list[str]) -> pd.DataFrame:
    """Return the manifest as a typed DataFrame (absolute `dicom_dir`), or raise ManifestError.

    Checks: required and covariate columns present; IDs match the ID pattern (no
    path tricks like `../x`, no whitespace or control characters); (center,
    patient_id) unique; `dicom_dir` exists (relative paths are relative to the
    manifest) and belongs to one row only, neither the same folder as another
    row's nor inside it (conversion reads a folder recursively, so either would
    put one exam into two patients, or two exams into one); `followup_days` ≥ 0 and
    `event` ∈ {0, 1} where given. Empty covariate cells are allowed (the risk
    stage reports complete-case exclusions); a missing covariate column or a
    non-numeric covariate value is an error.
    """
    path = Path(path)
    table = read_manifest_table(path)
    problems: list[str] = []
    missing_cols = [c for c in (*REQUIRED_COLUMNS, *covariates) if c not in table.columns]
    if missing_cols:
        problems.append(f"missing columns: {', '.join(missing_cols)}")
    if table.empty:
        problems.append("no data rows")
    if problems:
        raise ManifestError(f"manifest {path}:\n" + "\n".join(f"  {p}" for p in problems))

    base = path.parent.resolve()
    first_seen: dict[tuple[str, str], int] = {}
    dicom_dirs: list[str] = []
    followups: list[float | None] = []
    events: list[int | None] = []
    for i, row in enumerate(table.to_dict("records")):
        rownum = i + 2
        where = f"row {rownum}"
        for col in ("patient_id", "center"):
            value = "" if _is_missing(row[col]) else str(row[col])
            if not _ID_RE.fullmatch(value):  # fullmatch: `$` alone would accept "P005\n"
                problems.append(f"{where}, column {col}: {value!r} does not match {ID_PATTERN}")
        key = (str(row["center"]), str(row["patient_id"]))
        if key in first_seen:
            problems.append(
                f"{where}: duplicate (center, patient_id) {key}, first seen in row {first_seen[key]}"
            )
        else:
            first_seen[key] = rownum
        dicom_dir = Path(str(row["dicom_dir"]).strip())
        if _is_missing(row["dicom_dir"]):
            problems.append(f"{where}, column dicom_dir: empty")
        else:
            dicom_dir = dicom_dir if dicom_dir.is_absolute() else base / dicom_dir
            if not dicom_dir.is_dir():
                problems.append(f"{where}, column dicom_dir: {dicom_dir} is not a directory")
        dicom_dirs.append(str(dicom_dir))
        for col in covariates:
            if not _is_missing(row[col]) and _number(row[col]) is None:
                problems.append(f"{where}, column {col}: {row[col]!r} is not a number")
        followups.append(_check_followup(row.get("followup_days"), where, problems))
        events.append(_check_event(row.get("event"), where, problems))
    problems += shared_dicom_dirs(dicom_dirs)
    if problems:
        raise ManifestError(
            f"manifest {path}: {len(problems)} problem(s)\n" + "\n".join(f"  {p}" for p in problems)
        )
    out = table.copy()
    out["patient_id"] = out["patient_id"].astype(str)
    out["center"] = out["center"].astype(str)
    out["dicom_dir"] = dicom_dirs
    out["followup_days"] = pd.array(followups, dtype="Float64")
    out["event"] = pd.array(events, dtype="Int64")
    for col in covariates:
        out[col] = pd.to_numeric(out[col].replace("", None), errors="coerce")
    return out


def shared_dicom_dirs(dicom_dirs: list[str]) -> list[str]:
    """Rows whose DICOM folder is another row's folder, or lies inside it (symlinks resolved)."""
    problems = []
    first_row: dict[str, int] = {}
    real = [os.path.realpath(d) for d in dicom_dirs]
    for i, d in enumerate(real):
        if d in first_row:
            problems.append(f"row {i + 2}, column dicom_dir: same folder as row {first_row[d]}")
        else:
            first_row[d] = i + 2
    for i, d in enumerate(real):
        for parent in Path(d).parents:
            if str(parent) in first_row:
                problems.append(
                    f"row {i + 2}, column dicom_dir: inside the folder of row {first_row[str(parent)]}"
                )
                break
    return problems


def _check_followup(value, where: str, problems: list[str]) -> float | None:
    if _is_missing(value):
        return None
    x = _number(value)
    if x is None or x < 0:
        problems.append(f"{where}, column followup_days: {value!r} is not a number ≥ 0")
        return None
    return x


def _check_event(value, where: str, problems: list[str]) -> int | None:
    if _is_missing(value):
        return None
    x = _number(value)
    if x not in (0.0, 1.0):
        problems.append(f"{where}, column event: {value!r} is not 0 or 1")
        return None
    return int(x)


def manifest_patients(table: pd.DataFrame) -> list[ManifestPatient]:
    return [
        ManifestPatient(r.patient_id, r.center, Path(r.dicom_dir))
        for r in table[["patient_id", "center", "dicom_dir"]].itertuples(index=False)
    ]
