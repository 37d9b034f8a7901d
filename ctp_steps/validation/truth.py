"""The phantom's truth where the pipeline's outputs live (validation only: reads the hidden truth).

Frames of reference. The phantom's frame k at world p shows the un-moved anatomy
at p + u_k(p); its truth masks and landmarks live in that un-moved anatomy. The
registration stage aligns every frame to a chosen reference frame r, itself moved by u_r. So:

* a point p of the registered frames is the anatomy point p + u_r(p);
* the exact field for frame k is T_k(p) = (id + u_k)⁻¹(p + u_r(p)) − p
  (the inverse by fixed-point iteration: u is smooth and small);
* a truth landmark L sits at (id + u_r)⁻¹(L) in the reference frame and at
  (id + u_k)⁻¹(L) in frame k.

Downstream stages (myocardium, landmarks, MBF) work in the reference frame's
space, so their truth must be taken there too: `truth_in_reference_frame`
resamples a truth map (labels, AHA segments, MBF) by u_r, exactly as the
phantom made frame r's labels. The stage records r as `reference_frame` in
registration_qc.json and `registration_reference_frame` in its status record.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctp_steps.io import read_json, read_status, read_volume
from ctp_steps.layout import status_name
from ctp_steps.types import Geometry

# labels of the phantom's truth maps (labels.nii.gz, frame_labels.nii.gz)
AORTA, LV_BLOOD, MYOCARDIUM, N_TRUTH_LABELS = 1, 2, 3, 5


def motion_at(motion: dict, points: np.ndarray) -> np.ndarray:
    """The phantom's u(p) (world mm) at world points (..., 3), from its documented closed form."""
    points = np.asarray(points, dtype=float)
    u = np.broadcast_to(np.asarray(motion["translation_mm"], dtype=float), points.shape).copy()
    for mode in motion["modes"]:
        d2 = ((points - np.asarray(mode["center_mm"], dtype=float)) ** 2).sum(axis=-1, keepdims=True)
        u += np.asarray(mode["vector_mm"], dtype=float) * np.exp(-d2 / (2.0 * mode["sigma_mm"] ** 2))
    return u


def where_seen(motion: dict, anatomy_points: np.ndarray, iterations: int = 30) -> np.ndarray:
    """Points p of a frame showing the anatomy points q: p + u(p) = q (fixed-point iteration p ← q − u(p))."""
    q = np.asarray(anatomy_points, dtype=float)
    p = q.copy()
    for _ in range(iterations):
        p = q - motion_at(motion, p)
    return p


def true_field(motion_reference: dict, motion_frame: dict, points: np.ndarray) -> np.ndarray:
    """Exact displacement from the reference frame to another frame at reference-frame points (..., 3)."""
    return where_seen(motion_frame, points + motion_at(motion_reference, points)) - points


def truth_in_reference_frame(
    volume: np.ndarray,
    geometry: Geometry,
    motion_reference: dict | None,
    onto: Geometry | None = None,
    onto_shape: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """A truth map of the un-moved anatomy (labels, AHA, MBF; (z, y, x)) as the reference frame shows it,
    on the grid `onto` (default: the truth's own; a working grid of whole-block means or another native grid
    when the pipeline's outputs are there).

    Nearest neighbour for every map, so that a voxel's label, segment and MBF come from the same
    anatomy voxel (linear interpolation blended the myocardium's MBF with the zero outside it and
    made its rim falsely ischemic). `motion_reference` None (the oracle's un-moved reference)
    on the truth's own grid returns the volume unchanged.
    """
    if onto is None or (tuple(onto_shape) == tuple(volume.shape) and onto.allclose(geometry)):
        onto, onto_shape = geometry, volume.shape  # the same grid (DICOM rounds positions to 1e-4 mm)
        if motion_reference is None:
            return volume
    import torch

    from ctp_steps.registration.warp import sample_world, world_points

    points = world_points(onto, tuple(onto_shape), torch.device("cpu"), torch.float64).numpy()
    anatomy = points + motion_at(motion_reference, points) if motion_reference is not None else points
    vol = torch.as_tensor(np.ascontiguousarray(volume), dtype=torch.float64)[None, None]
    out = sample_world(vol, geometry, torch.as_tensor(anatomy)[None], mode="nearest")[0, 0].numpy()
    return out.astype(volume.dtype)


def landmarks_in_reference_frame(landmarks: dict, motion_reference: dict | None) -> dict:
    """Truth landmarks (world mm, un-moved anatomy) where the reference frame shows them."""
    if motion_reference is None:
        return {k: list(map(float, v)) for k, v in landmarks.items()}
    return {k: where_seen(motion_reference, np.asarray(v, dtype=float)).tolist() for k, v in landmarks.items()}


def reference_motion(truth_dir: Path, patient_dir: Path | None = None, status_path: Path | None = None) -> dict | None:
    """The true motion of the frame the registered series is aligned to, or None (un-moved anatomy).

    Reads the `register` stage's status record (`registration_reference_frame`) from `status_path`,
    or from `patient_dir`/register.status.json. The oracle registration records none (it aligns to
    the un-moved anatomy), and neither does a missing status file or an excluded patient: None.
    """
    if status_path is None:
        if patient_dir is None:
            return None
        status_path = Path(patient_dir) / status_name("register")
    status_path = Path(status_path)
    if not status_path.is_file() or status_path.stat().st_size == 0:
        return None
    frame = read_status(status_path).record.get("registration_reference_frame")
    if frame is None:
        return None
    return read_json(Path(truth_dir) / "truth.json")["motion"]["frames"][int(frame)]


def truth_map_in_reference_frame(
    truth_dir: Path, name: str, register_status: Path | None, onto: Geometry | None = None,
    onto_shape: tuple[int, int, int] | None = None,
) -> tuple[np.ndarray, Geometry]:
    """A truth volume of the phantom (`labels`, `aha17`, `mbf`, ...: `<name>.nii.gz` in `truth_dir`) where the
    registered series shows it, on the grid `onto` (default: the truth's): (map, its geometry), by nearest
    neighbour (`truth_in_reference_frame`). Unchanged when the register stage aligned to the un-moved anatomy
    (the oracle) or there is no status, on the truth's own grid."""
    volume, geometry = read_volume(Path(truth_dir) / f"{name}.nii.gz")
    motion = reference_motion(truth_dir, status_path=register_status) if register_status else None
    if onto is not None and tuple(onto_shape) == tuple(volume.shape) and onto.allclose(geometry):
        onto = None  # the same grid: the truth's geometry, exactly as before working grids existed
    return truth_in_reference_frame(volume, geometry, motion, onto, onto_shape), onto or geometry


def truth_maps(
    truth_dir: Path, patient_dir: Path, onto: Geometry | None = None, onto_shape: tuple[int, int, int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Geometry]:
    """True MBF, labels and AHA segments as the registered series shows them (on `onto`), and their geometry."""
    register_status = patient_dir / status_name("register")
    mbf, geometry = truth_map_in_reference_frame(truth_dir, "mbf", register_status, onto, onto_shape)
    labels, _ = truth_map_in_reference_frame(truth_dir, "labels", register_status, onto, onto_shape)
    aha17, _ = truth_map_in_reference_frame(truth_dir, "aha17", register_status, onto, onto_shape)
    return mbf, labels, aha17, geometry
