"""Ground truth of a phantom patient: reference label and MBF maps, summaries, files.

The truth maps live on the reconstruction grid: labels are the block majority
of the fine tissue labels, MBF is the mean fine MBF of the myocardium inside
each myocardium voxel, IMV is the myocardium with MBF below the threshold.
`true_imv_pct` evaluates the same functions on the heart's box only, so it
returns the rendered patient's value without rendering any frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctp_steps.aha import TERRITORY_SEGMENTS, aha_segment_map
from ctp_steps.io import write_json, write_series, write_volume
from ctp_steps.phantom.anatomy import (
    LABEL_OF_CLASS,
    MYO,
    N_LABELS,
    Scene,
    build_scene,
    draw_anatomy,
    heart_box,
)
from ctp_steps.phantom.grid import Box, PhantomGrid, block_majority, block_sum, relative
from ctp_steps.phantom.params import PatientSpec, PhantomParams, patient_rng
from ctp_steps.phantom.perfusion import draw_perfusion, mbf_field

MYOCARDIUM = 3


def reference_maps(
    scene: Scene, mbf_myo: np.ndarray, grid: PhantomGrid, region: Box
) -> tuple[np.ndarray, np.ndarray]:
    """Labels (uint8) and MBF (float32, 0 outside myocardium) of a block-aligned region of the output box."""
    k = grid.factor
    classes = scene.classes[relative(region, scene.box)]
    labels = block_majority(LABEL_OF_CLASS[classes], k, N_LABELS)
    mbf_fine = np.zeros(scene.classes.shape, dtype=np.float64)
    mbf_fine.ravel()[scene.myo_index()] = mbf_myo
    mbf_fine = mbf_fine[relative(region, scene.box)]
    counts = block_sum(classes == MYO, k)
    mean = block_sum(mbf_fine, k) / np.maximum(counts, 1)
    return labels, np.where(labels == MYOCARDIUM, mean, 0.0).astype(np.float32)


def imv_pct(labels: np.ndarray, mbf: np.ndarray, threshold: float) -> float:
    myo = labels == MYOCARDIUM
    return float(100.0 * np.count_nonzero(myo & (mbf < threshold)) / max(np.count_nonzero(myo), 1))


def true_imv_pct(spec: PatientSpec, params: PhantomParams) -> float:
    """The patient's true IMV% from anatomy and MBF map alone (no frames rendered)."""
    anat = draw_anatomy(patient_rng(spec.seed, "anatomy"), params)
    perf = draw_perfusion(patient_rng(spec.seed, "perfusion"), params)
    region = heart_box(anat, anat.grid.output_box())
    scene = build_scene(anat, region)
    labels, mbf = reference_maps(scene, mbf_field(perf, scene.heart, anat.lv), anat.grid, region)
    return imv_pct(labels, mbf, params.ischemia_threshold_mbf)


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def mbf_summary(
    labels: np.ndarray, mbf: np.ndarray, aha17: np.ndarray, voxel_ml: float, threshold: float
) -> dict:
    """Myocardium volume, IMV, and true mean MBF globally, per territory and per segment."""
    myo = labels == MYOCARDIUM
    out = {
        "myocardium_ml": float(np.count_nonzero(myo) * voxel_ml),
        "imv_ml": float(np.count_nonzero(myo & (mbf < threshold)) * voxel_ml),
        "imv_pct": imv_pct(labels, mbf, threshold),
        "mbf_global": _mean(mbf[myo]),
        "mbf_segments": [_mean(mbf[aha17 == s]) for s in range(1, 18)],
    }
    for terr, segs in TERRITORY_SEGMENTS.items():
        out[f"mbf_{terr.lower()}"] = _mean(mbf[np.isin(aha17, segs)])
    return out


def segment_map(
    labels: np.ndarray, grid: PhantomGrid, landmarks: dict, apex_cap_fraction: float
) -> np.ndarray:
    return aha_segment_map(
        labels == MYOCARDIUM,
        grid.geometry,
        landmarks["apex"],
        landmarks["base"],
        landmarks["rv_insertion"],
        apex_cap_fraction,
    )


def write_truth(patient, truth_dir: Path) -> None:
    """labels, frame_labels, mbf, aha17 (NIfTI on the frames' geometry) and truth.json."""
    truth_dir = Path(truth_dir)
    g = patient.geometry
    write_volume(truth_dir / "labels.nii.gz", patient.labels, g)
    write_series(truth_dir / "frame_labels.nii.gz", patient.frame_labels, g)
    write_volume(truth_dir / "mbf.nii.gz", patient.mbf, g)
    write_volume(truth_dir / "aha17.nii.gz", patient.aha17, g)
    write_json(truth_dir / "truth.json", patient.truth)
