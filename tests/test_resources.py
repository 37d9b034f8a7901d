"""Declared memory and run time follow the study's size, read from the DICOM headers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import run_snakemake, tiny_config

from ctp_steps.phantom import PhantomParams, generate_patient, make_specs, write_dicom
from ctp_steps.resources import (
    FALLBACK,
    SAFETY,
    STAGE_COSTS,
    declared_mem_mb,
    declared_runtime_min,
    modelled_peak_mb,
    study_voxel_frames,
)

# Peak RSS measured in issue 17 on a 512² × 64-slice × 15-frame study (MB): no declaration may be below.
MEASURED_512 = {"convert": 3000, "segment_frames": 3900, "register": 14400}
VOXEL_FRAMES_512 = 512 * 512 * 64 * 15


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> tuple[Path, int]:
    params = PhantomParams(shape_zyx=(6, 20, 24), spacing_zyx_mm=(5.0, 5.0, 5.0), supersample=1, n_frames=(9, 9))
    (spec,) = make_specs(1, [("c1", "series_per_frame")], seed=5, role="test")
    folder = tmp_path_factory.mktemp("resources") / "exam"
    write_dicom(generate_patient(spec, params), folder, "series_per_frame")
    return folder, 9 * 6 * 20 * 24


def test_study_size_is_read_from_the_headers(export):
    folder, voxel_frames = export
    assert study_voxel_frames(str(folder)) == voxel_frames


def test_declarations_grow_with_the_study_and_cover_measured_peaks(export):
    folder, voxel_frames = export
    for stage, cost in STAGE_COSTS.items():
        small = declared_mem_mb(stage, folder)
        assert small >= SAFETY * cost.base_mb and small % 100 == 0
        assert declared_runtime_min(stage, folder) >= 10
    for stage, peak in MEASURED_512.items():
        assert modelled_peak_mb(stage, VOXEL_FRAMES_512) >= peak, stage
    assert modelled_peak_mb("register", 10 * voxel_frames) > modelled_peak_mb("register", voxel_frames)


def test_a_folder_that_is_not_there_yet_gets_the_old_fixed_values(tmp_path):
    """Dry runs plan the synthetic cohort before its DICOM exists."""
    assert declared_mem_mb("mbf", tmp_path / "missing") == FALLBACK["mem_mb"]
    assert declared_runtime_min("mbf", tmp_path / "missing") == FALLBACK["runtime"]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no DICOM here")
    assert study_voxel_frames(str(tmp_path / "notes")) is None


def _planned_threads(workdir: Path, n_patients: int) -> dict[str, set[int]]:
    """Threads of every planned per-patient torch job of a dry run on two cores, by rule."""
    out = run_snakemake(workdir, tiny_config(workdir / "results", n_patients=n_patients), "-n").stdout
    threads: dict[str, set[int]] = {}
    rule = None
    for line in out.splitlines():
        if m := re.match(r"\s*(?:local)?rule (\w+):", line):
            rule = m.group(1)
        elif m := re.match(r"\s*threads: (\d+)", line):
            threads.setdefault(rule, set()).add(int(m.group(1)))
    return threads


def test_one_study_takes_both_cores_a_cohort_one_thread_per_job(tmp_path):
    """A single study has nothing to overlap with; on a cohort one-thread jobs side by side do more per core."""
    torch_stages = {"segment_frames", "register", "segment_myocardium", "landmarks", "mbf"}
    single = _planned_threads(tmp_path / "one", 1)
    assert torch_stages <= set(single) and all(single[s] == {2} for s in torch_stages)
    cohort = _planned_threads(tmp_path / "three", 3)
    assert not torch_stages & set(cohort)  # one thread is Snakemake's default and is not printed
