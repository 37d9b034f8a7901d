"""Conversion against the phantom re-rendered from its seed (exact, deterministic)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from ctp_steps.io import read_json, read_series, read_status
from ctp_steps.types import Geometry
from ctp_steps.validation.rows import patient_keys, patient_rows


def conversion_metrics(
    truth_dir: Path, series_path: Path, frames_path: Path, status_path: Path, params_json: str
) -> pd.DataFrame:
    """Converted series vs the phantom re-rendered from its seed (exact, deterministic)."""
    from ctp_steps.phantom import PatientSpec, PhantomParams
    from ctp_steps.phantom.families import render_patient, rendering_of

    patient_id, center = patient_keys(truth_dir)
    truth = read_json(truth_dir / "truth.json")
    rows = [("conversion_ok", "all", 0.0)]
    if read_status(status_path).status == "ok":
        spec = PatientSpec(
            patient_id=patient_id,
            center=center,
            vendor_style=truth["vendor_style"],
            seed=truth["seed"],
            role=truth.get("role", "cohort"),
        )
        phantom = render_patient(spec, PhantomParams.model_validate_json(params_json), *rendering_of(truth))
        hu, geometry = read_series(series_path)
        frames = read_json(frames_path)
        expected, expected_geometry = working_grid_frames(
            phantom.frames_hu, phantom.geometry, tuple(frames.get("working_block_zyx", (1, 1, 1))), geometry
        )
        same_shape = hu.shape == expected.shape
        rows = [
            ("conversion_ok", "all", float(same_shape)),
            (
                "conversion_max_abs_error_hu",
                "all",
                float(np.abs(hu - expected).max()) if same_shape else np.nan,
            ),
            (
                "frame_time_error_s",
                "all",
                float(np.abs(np.subtract(frames["frame_times_s"], phantom.frame_times_s)).max())
                if len(frames["frame_times_s"]) == len(phantom.frame_times_s)
                else np.nan,
            ),
            (
                "origin_error_mm",
                "all",
                float(np.linalg.norm(np.subtract(geometry.origin, expected_geometry.origin))),
            ),
        ]
    return patient_rows(truth_dir, "conversion", rows)


def working_grid_frames(frames_hu: np.ndarray, geometry: Geometry, block: tuple[int, int, int], converted: Geometry):
    """The phantom's frames as conversion's working grid holds them: whole-block means (conversion drops the
    voxels past the last whole block at the end of the *stored* order, so at either end of the canonical one:
    the end whose block grid puts its first voxel where the converted series has it)."""
    from ctp_steps.convert.pixels import block_mean

    if tuple(block) == (1, 1, 1):
        return frames_hu, geometry
    best = None
    for offsets in itertools.product(*[(0, n % b) if n % b else (0,) for n, b in zip(frames_hu.shape[1:], block)]):
        start = np.asarray(offsets[::-1], dtype=float)  # x, y, z voxels skipped at the start
        g = Geometry(tuple(geometry.index_to_world(start).tolist()), geometry.spacing, geometry.direction).blocks(block)
        error = float(np.linalg.norm(np.subtract(g.origin, converted.origin)))
        if best is None or error < best[0]:
            best = (error, offsets, g)
    _, offsets, g = best
    cropped = frames_hu[:, offsets[0]:, offsets[1]:, offsets[2]:]
    return np.stack([block_mean(f, block) for f in cropped]), g
