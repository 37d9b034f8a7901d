"""The DAG for real: Snakemake runs the tiny synthetic cohort end to end, bad input is contained."""

from __future__ import annotations

import json
import os
import shutil
import sys
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, TINY_PHANTOM, run_snakemake, tiny_config
from test_orientation import restore_in_storage_order

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One real run of `all` + `validate` on 3 patients, one per vendor style."""
    work = tmp_path_factory.mktemp("tiny")
    run_snakemake(work, tiny_config(work / "results"), "all", "validate")
    return work


def test_patients_table_one_ok_row_per_patient(tiny_run):
    table = pd.read_parquet(tiny_run / "results" / "cohort" / "patients.parquet")
    assert table["patient_id"].tolist() == ["S0001", "S0002", "S0003"]
    assert table["center"].tolist() == ["CTR-A", "CTR-B", "CTR-C"]
    assert (table["status"] == "ok").all() and table["reason"].isna().all()
    assert table[["shape_z", "shape_y", "shape_x"]].drop_duplicates().values.tolist() == [TINY_PHANTOM["shape_zyx"]]
    assert table["n_frames"].between(8, 25).all()
    assert table["time_span_s"].between(25, 45).all()
    assert table["followup_days"].notna().all() and set(table["event"]) <= {0, 1}
    assert {"age", "sex", "diabetes", "hypertension", "smoking", "config_hash", "software_version"} <= set(table.columns)


def test_cohort_segments_and_quantification_columns(tiny_run):
    """MBF and IMV reach both cohort tables: 17 segment rows per patient, patient columns filled."""
    table = pd.read_parquet(tiny_run / "results" / "cohort" / "patients.parquet")
    assert table[["mbf_global", "imv_pct", "imv_ml", "mbf_lad"]].notna().all().all()
    assert (table["mbf_method"] == "one_compartment").all() and (table["imv_threshold"] == 100.0).all()
    assert table["imv_pct"].between(0, 100).all()
    assert table["landmarks_model_sha256"].str.fullmatch("[0-9a-f]{64}").all()
    segments = pd.read_parquet(tiny_run / "results" / "cohort" / "segments.parquet")
    assert segments.groupby("patient_id")["segment"].apply(sorted).tolist() == [list(range(1, 18))] * 3
    # the segment table and the patient row come from the same map: ischemic mL add up to IMV mL
    summed = segments.groupby("patient_id")["ischemic_ml"].sum()
    assert summed.to_numpy() == pytest.approx(table.set_index("patient_id").loc[summed.index, "imv_ml"].to_numpy())


def test_validation_summary_conversion_exact(tiny_run):
    summary = pd.read_parquet(tiny_run / "results" / "validation" / "summary.parquet")
    assert list(summary.columns) == ["stage", "metric", "target", "n", "mean", "median", "p05", "p95", "family"]
    assert (summary["family"] == "default").all()
    rows = summary.set_index("metric")
    assert rows.loc["conversion_ok", "mean"] == 1.0 and rows.loc["conversion_ok", "n"] == 3
    # int16 storage with rescale slope ≤ 1: the round trip is exact to half a stored unit.
    assert rows.loc["conversion_max_abs_error_hu", "p95"] <= 0.5 + 1e-4
    assert rows.loc["frame_time_error_s", "p95"] < 1e-3
    assert rows.loc["origin_error_mm", "p95"] < 1e-3
    # both MBF estimators are measured on the same curves: the configured one and the other
    from ctp_steps.mbf.config import MBFConfig

    other = "least_squares" if MBFConfig().estimator == "bayesian" else "bayesian"
    mbf = summary[summary["stage"] == "mbf"].set_index(["metric", "target"])
    for target in ("one_compartment", f"one_compartment_{other}"):
        assert mbf.loc[("mbf_global_bias_pct", target), "n"] == 3
        assert np.isfinite(mbf.loc[("mbf_segment_icc", target), "mean"])
    # the same segments of the same patients, whichever estimator
    segments = [mbf.loc[("mbf_segment_n", t), "mean"] for t in ("one_compartment", f"one_compartment_{other}")]
    assert segments[0] == segments[1] == 3 * 17
    assert mbf.loc[("mbf_ci95_coverage", f"segment_{other}"), "n"] == 3
    # the default family's tissue is made with the configured extraction: under the phantom's own it reads the same
    configured = mbf.loc[("mbf_global_bias_pct", "one_compartment"), "mean"]
    assert mbf.loc[("mbf_global_bias_pct", "one_compartment_true_extraction"), "mean"] == pytest.approx(configured, abs=0.01)
    assert mbf.loc[("mbf_global_k1_bias_pct", "one_compartment"), "n"] == 3
    # the tiny nets' maps are ~20 % low in MBF, so low in K1 too (how much lower depends on the map's spread: K1 is
    # concave in flow, so a spread map's mean K1 falls further than its mean MBF; exact values: test_validation_extraction)
    k1 = mbf.loc[("mbf_global_k1_bias_pct", "one_compartment"), "mean"]
    assert configured < -10.0 and -60.0 < k1 < -10.0, (k1, configured)
    assert 0.0 <= mbf.loc[("mbf_ci95_coverage", f"segment_{other}"), "mean"] <= 1.0


def test_config_and_versions_are_written_beside_the_tables(tiny_run):
    from ctp_steps.config import load_config
    from ctp_steps.provenance import read_config

    cohort = tiny_run / "results" / "cohort"
    written = read_config(cohort / "config.json")
    assert written == load_config(yaml.safe_load((tiny_run / "test-config.yaml").read_text()))
    table = pd.read_parquet(cohort / "patients.parquet")
    from ctp_steps.config import config_hash

    assert set(table["config_hash"]) == {config_hash(written)}
    prov = json.loads((cohort / "provenance.json").read_text())
    assert prov["config_hash"] == config_hash(written) and prov["libraries"]["torch"].startswith("2.13.0")
    assert set(prov["models"]) >= {"regnet", "landmark_net"} and all(len(m["sha256"]) == 64 for m in prov["models"].values())


def test_report_holds_each_patients_qc_figures_by_stage(tiny_run):
    """`snakemake --report` gives a browsable cohort QC report: per-patient figures filed by stage, risk plots."""
    import zipfile

    run_snakemake(tiny_run, tiny_config(tiny_run / "results"), "all", "--report", str(tiny_run / "report.zip"))
    names = zipfile.ZipFile(tiny_run / "report.zip").namelist()
    figures = [n for n in names if n.endswith(".png") and "/data/raw/" in n]
    for name in ("landmarks.png", "mbf_qc.png", "imv_qc.png"):
        assert sum(n.endswith(name) for n in figures) == 3, (name, figures)
    assert any(n.endswith("km.png") for n in figures) and any(n.endswith("forest.png") for n in figures)
    text = "".join(zipfile.ZipFile(tiny_run / "report.zip").read(n).decode("latin-1") for n in names
                   if n.endswith((".js", ".html")))
    assert all(stage in text for stage in ("landmarks", "mbf", "imv", "risk")) and "S0003" in text


def test_second_run_has_nothing_to_do(tiny_run):
    proc = run_snakemake(tiny_run, tiny_config(tiny_run / "results"), "all", "validate", "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_truth_is_kept_apart_and_no_phi(tiny_run):
    results = tiny_run / "results"
    frames = (results / "patients" / "CTR-A" / "S0001" / "frames.json").read_text()
    assert "SYNTHETIC" not in frames and "truth" not in frames
    assert not any("truth" in p.name for p in (results / "patients").rglob("*"))


def add_calcium_score_scan(exam: Path) -> None:
    """A calcium-score stack on the perfusion's grid, acquired 8 minutes before its first frame (series 2).

    Before series selection, conversion took it as frame 1 and MBF failed for the whole cohort."""
    from datetime import datetime, timedelta

    import pydicom
    from pydicom.uid import generate_uid

    headers = [(p, pydicom.dcmread(p, stop_before_pixels=True, force=True)) for p in sorted(exam.rglob("*"))
               if p.is_file()]
    headers = [(p, h) for p, h in headers if "AcquisitionTime" in h and "ImagePositionPatient" in h]  # images only
    first = min(h.AcquisitionTime for _, h in headers)
    series, stamp = generate_uid(), datetime.strptime(first.split(".")[0], "%H%M%S") - timedelta(minutes=8)
    for k, (path, header) in enumerate(h for h in headers if h[1].AcquisitionTime == first):
        ds = pydicom.dcmread(path, force=True)
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series, 2, "Calcium score"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.AcquisitionTime = ds.ContentTime = ds.SeriesTime = stamp.strftime("%H%M%S.000000")
        ds.ConvolutionKernel, ds.KVP, ds.SliceThickness = "Qr36", 120, 3.0
        (exam / "CASC").mkdir(exist_ok=True)
        ds.save_as(exam / "CASC" / f"IM{k + 1:04d}.dcm")


@pytest.fixture(scope="module")
def user_run(tiny_run, tmp_path_factory) -> Path:
    """A user manifest mixing good patients with broken DICOM folders; S0001's folder is named after the patient.

    Real archives name folders after patients and accession numbers; the headers carry the phantom's fake PHI.
    """
    tmp_path = tmp_path_factory.mktemp("user")
    synthetic = tiny_run / "results" / "synthetic"
    manifest = pd.read_csv(synthetic / "manifest.csv")
    manifest["dicom_dir"] = [str(synthetic / d) for d in manifest["dicom_dir"]]
    named = tmp_path / "archive" / "DOE_JANE_ACC9981"
    shutil.copytree(synthetic / "dicom" / "CTR-A" / "S0001", named)
    manifest.loc[manifest["patient_id"] == "S0001", "dicom_dir"] = str(named)
    incomplete = tmp_path / "EXAM_MISSING_SLICE"
    shutil.copytree(synthetic / "dicom" / "CTR-A" / "S0001", incomplete)
    victim = sorted(p for p in incomplete.rglob("*") if p.is_file())[5]
    victim.unlink()
    text_only = tmp_path / "EXAM_NOTES_ONLY"
    text_only.mkdir()
    (text_only / "notes.txt").write_text("not DICOM")
    broken = manifest.iloc[:2].copy()
    broken["patient_id"] = ["B0001", "B0002"]
    broken["dicom_dir"] = [str(incomplete), str(text_only)]
    feet_first = tmp_path / "EXAM_FEET_FIRST"
    shutil.copytree(synthetic / "dicom" / "CTR-C" / "S0003", feet_first)
    restore_in_storage_order(feet_first, flip_row=True, flip_column=False)
    twin = manifest[manifest["patient_id"] == "S0003"].assign(patient_id="T0003", dicom_dir=str(feet_first))
    with_calcium = tmp_path / "EXAM_WITH_CALCIUM_SCORE"
    shutil.copytree(synthetic / "dicom" / "CTR-A" / "S0001", with_calcium)
    add_calcium_score_scan(with_calcium)
    calcium = manifest[manifest["patient_id"] == "S0001"].assign(patient_id="C0001", dicom_dir=str(with_calcium))
    path = tmp_path / "cohort.csv"
    pd.concat([manifest, broken, twin, calcium]).to_csv(path, index=False)
    run_snakemake(tmp_path / "work", tiny_config(tmp_path / "results", manifest=str(path)), "all")
    return tmp_path


def test_bad_patients_are_excluded_and_cohort_completes(user_run):
    table = pd.read_parquet(user_run / "results" / "cohort" / "patients.parquet").set_index("patient_id")
    assert table.loc[["S0001", "S0002", "S0003", "T0003", "C0001"], "status"].eq("ok").all()
    assert table.loc["B0001", "status"] == "excluded"
    assert table.loc["B0001", "reason"].startswith("convert: ") and "incomplete" in table.loc["B0001", "reason"]
    assert table.loc["B0002", "reason"].startswith("convert: ") and "no readable DICOM" in table.loc["B0002", "reason"]
    assert table.loc["B0002", "excluded_at"] == "convert" and pd.isna(table.loc["B0002", "n_frames"])


def test_calcium_score_scan_in_the_exam_folder_is_ignored(user_run):
    """The exam folder that once stopped the whole cohort: the calcium scan is named as ignored, the numbers
    equal those of the same perfusion alone."""
    table = pd.read_parquet(user_run / "results" / "cohort" / "patients.parquet").set_index("patient_id")
    assert table.loc["C0001", "status"] == "ok"
    assert "series 2 'Calcium score'" in table.loc["C0001", "series_ignored"]
    assert table.loc["C0001", "n_frames"] == table.loc["S0001", "n_frames"]
    assert table.loc["C0001", "mbf_global"] == pytest.approx(table.loc["S0001", "mbf_global"], rel=0.01)
    assert table.loc["C0001", "imv_pct"] == pytest.approx(table.loc["S0001", "imv_pct"], abs=0.5)


def test_feet_first_twin_gives_the_same_masks_and_mbf(user_run):
    """The same study stored feet-first (mirrored rows, slices foot to head) goes through every stage alike."""
    import SimpleITK as sitk

    table = pd.read_parquet(user_run / "results" / "cohort" / "patients.parquet").set_index("patient_id")
    assert table.loc["T0003", "status"] == "ok" and table.loc["T0003", "stored_orientation"] == "R,P,I"
    assert table.loc["S0003", "stored_orientation"] == "L,P,S"
    assert table.loc["T0003", "mbf_global"] == pytest.approx(table.loc["S0003", "mbf_global"], rel=0.01)
    assert table.loc["T0003", "imv_pct"] == pytest.approx(table.loc["S0003", "imv_pct"], abs=0.5)
    patients = user_run / "results" / "patients" / "CTR-C"
    for mask in ("myocardium.nii.gz", "aha17.nii.gz"):
        a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(patients / p / mask))) for p in ("S0003", "T0003"))
        dice = 2 * ((a > 0) & (b > 0)).sum() / ((a > 0).sum() + (b > 0).sum())
        assert dice >= 0.98 and (a == b).mean() >= 0.98, (mask, dice)


def _phi_values(dicom_dir: Path, patient_id: str) -> set[str]:
    """Identifying header values of one exam (the phantom writes fake ones), its absolute folder and the
    folder's name (unless that is the manifest's pseudonymous ID, which the tables carry by design)."""
    import pydicom

    values = {str(dicom_dir)} | ({dicom_dir.name} - {patient_id})
    for path in sorted(p for p in dicom_dir.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            continue
        values |= {str(ds.PatientName), ds.PatientID, ds.AccessionNumber, ds.StudyDate, ds.PatientBirthDate,
                   ds.StudyInstanceUID}
        break
    return {v for v in values if v}


def _output_texts(results: Path):
    """Every file under results as text: gzip decompressed, Parquet decoded (data and metadata)."""
    import gzip

    import pyarrow.parquet as pq

    for path in sorted(p for p in results.rglob("*") if p.is_file() and p.stat().st_size):  # 0 B: placeholders
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            yield path, table.to_pandas().to_csv() + str(table.schema.metadata)
        elif path.suffix == ".gz":
            yield path, gzip.decompress(path.read_bytes()).decode("latin-1")
        else:
            yield path, path.read_bytes().decode("latin-1")


def test_no_phi_or_input_path_in_any_output(user_run):
    """Names, IDs, dates, UIDs and absolute input paths never reach results/ (tables, records, maps, logs)."""
    manifest = pd.read_csv(user_run / "cohort.csv")
    phi = set().union(*(_phi_values(Path(d), p) for d, p in zip(manifest["dicom_dir"], manifest["patient_id"])))
    assert "DOE_JANE_ACC9981" in phi and any(v.startswith("SYNTHETIC^") for v in phi)
    leaks = [(path.relative_to(user_run), value) for path, text in _output_texts(user_run / "results")
             for value in phi if value in text]
    assert leaks == []


def test_a_failing_stage_fails_one_patient_and_the_run_still_writes_every_table(user_run):
    """A corrupt intermediate file makes `mbf` raise on S0002: that patient fails, the rest completes, exit 1."""
    results = user_run / "results"
    aif = results / "patients" / "CTR-B" / "S0002" / "aif.parquet"
    aif.write_bytes(b"PAR1 not a parquet file")
    proc = run_snakemake(user_run / "work", tiny_config(results, manifest=str(user_run / "cohort.csv")), "all",
                         check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "1 patient(s) FAILED" in out and "CTR-B/S0002: mbf: failed with " in out
    table = pd.read_parquet(results / "cohort" / "patients.parquet").set_index("patient_id")
    assert table.loc["S0002", "status"] == "failed" and table.loc["S0002", "excluded_at"] == "mbf"
    reason = table.loc["S0002", "reason"]
    assert reason.startswith("mbf: failed with ") and reason.endswith("(log: logs/mbf/CTR-B/S0002.log)")
    assert "\n" not in reason and str(user_run) not in reason
    assert "Traceback" not in (results / "logs" / "mbf" / "CTR-B" / "S0002.log").read_text()
    assert table.loc[["S0001", "S0003", "T0003"], "status"].eq("ok").all()
    assert table.loc[["B0001", "B0002"], "status"].eq("excluded").all()
    report = (results / "cohort" / "risk" / "report.md").read_text()
    assert "## Failed patients" in report and "| CTR-B | S0002 | mbf | mbf: failed with " in report
    assert "1 failed" in (results / "cohort" / "risk" / "summary.txt").read_text()
    # the lock is released: the same command plans again without --unlock, and has nothing left to do
    again = run_snakemake(user_run / "work", tiny_config(results, manifest=str(user_run / "cohort.csv")), "all", "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


def test_a_killed_run_resumes_to_the_same_tables(tiny_run, tmp_path):
    """README's resume recipe: kill -9 mid-stage, `--unlock`, the same command again: the tables equal
    an uninterrupted run's (config_hash differs only because results_dir does)."""
    import signal
    import time

    import yaml

    work = tmp_path / "work"
    work.mkdir()
    config = tiny_config(tmp_path / "results")
    (work / "test-config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work),
           "--configfile", str(work / "test-config.yaml"), "--cores", "2", "all"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    started = tmp_path / "results" / "logs" / "register"
    deadline = time.monotonic() + 600
    while not (started.exists() and any(started.rglob("*.log"))) and proc.poll() is None:
        assert time.monotonic() < deadline, "the run never reached register"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the scheduler, its jobs and their children, mid-stage
    proc.wait()
    assert not (tmp_path / "results" / "cohort" / "patients.parquet").exists()
    locked = run_snakemake(work, config, "all", check=False)
    refusal = (locked.stdout + locked.stderr).lower()
    # Without the profile's rerun-incomplete, a job killed after writing an output is reported before the lock.
    assert locked.returncode != 0 and ("lock" in refusal or "incomplete" in refusal)
    run_snakemake(work, config, "--unlock")
    run_snakemake(work, config, "all", "--rerun-incomplete")
    for table in ("patients", "segments"):
        resumed = pd.read_parquet(tmp_path / "results" / "cohort" / f"{table}.parquet").drop(columns="config_hash")
        whole = pd.read_parquet(tiny_run / "results" / "cohort" / f"{table}.parquet").drop(columns="config_hash")
        pd.testing.assert_frame_equal(resumed, whole)


def test_bad_config_stops_before_any_job(tmp_path):
    cfg = tiny_config(tmp_path / "results", device="tpu")
    cfg["synthetic"]["n_patients"] = 0
    proc = run_snakemake(tmp_path, cfg, "all", check=False)
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "device" in err and "n_patients" in err
    assert not (tmp_path / "results").exists()


def test_bad_manifest_stops_before_any_job(tmp_path):
    path = tmp_path / "cohort.csv"
    (tmp_path / "d").mkdir()
    pd.DataFrame(
        [{"patient_id": "../x", "center": "C", "dicom_dir": "d", "age": 1, "sex": 1, "diabetes": 0,
          "hypertension": 0, "smoking": 0, "event": 3}]
    ).to_csv(path, index=False)
    proc = run_snakemake(tmp_path, tiny_config(tmp_path / "results", manifest=str(path)), "all", check=False)
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "row 2, column patient_id: '../x' does not match" in err
    assert "row 2, column event: '3' is not 0 or 1" in err
    assert not (tmp_path / "results").exists()


def test_default_cohort_plans_and_lints(repo, tmp_path):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--directory", str(tmp_path)]
    plan = subprocess.run([*cmd, "-n", "--quiet", "rules", "--config", f"results_dir={tmp_path}/r"],
                          capture_output=True, text=True, check=True)
    counts = {}
    for line in plan.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    assert counts["synthesize_patient"] == 40 and counts["convert"] == 40
    assert counts["synthetic_manifest"] == 1 and counts["gather_patients"] == 1
    lint = subprocess.run([*cmd, "--lint"], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
