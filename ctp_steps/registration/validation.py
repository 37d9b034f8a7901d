"""Registration vs the phantom's true motion (validation only: reads the hidden truth).

Frames of reference. The phantom's frame k at world p shows the un-moved anatomy
at p + u_k(p); its truth masks and landmarks live in that un-moved anatomy. The
stage aligns every frame to a chosen reference frame r, itself moved by u_r. So:

* a point p of the registered frames is the anatomy point p + u_r(p);
* the exact field for frame k is T_k(p) = (id + u_k)⁻¹(p + u_r(p)) − p
  (the inverse by fixed-point iteration: u is smooth and small);
* a truth landmark L sits at (id + u_r)⁻¹(L) in the reference frame and at
  (id + u_k)⁻¹(L) in frame k; TRE = |p_r + û_k(p_r) − p_k|;
* LV Dice compares frame k's true labels, warped by û_k, with frame r's true labels.

Downstream stages (myocardium, landmarks, MBF) work in the reference frame's
space, so their truth must be taken there too: `truth_in_reference_frame`
resamples a truth map (labels, AHA segments, MBF) by u_r, exactly as the
phantom made frame r's labels. The stage records r as `reference_frame` in
registration_qc.json and `registration_reference_frame` in its status record.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ctp_steps.io import read_json, read_series, read_status
from ctp_steps.layout import file_name, status_name
from ctp_steps.registration.crop import box_region
from ctp_steps.registration.fields import read_fields
from ctp_steps.registration.qc import dice
from ctp_steps.registration.warp import crop_geometry, jacobian_determinant, sample_world, warp_labels, world_points
from ctp_steps.types import Geometry

STAGE = "registration"
LV_BLOOD, MYOCARDIUM, N_TRUTH_LABELS = 2, 3, 5
LANDMARKS = ("apex", "base", "rv_insertion")


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


def truth_in_reference_frame(volume: np.ndarray, geometry: Geometry, motion_reference: dict | None) -> np.ndarray:
    """A truth map of the un-moved anatomy (labels, AHA, MBF; (z, y, x)) as the reference frame shows it.

    Nearest neighbour for every map, so that a voxel's label, segment and MBF come from the same
    anatomy voxel (linear interpolation blended the myocardium's MBF with the zero outside it and
    made its rim falsely ischemic). `motion_reference` None (the oracle's un-moved reference)
    returns the volume unchanged.
    """
    if motion_reference is None:
        return volume
    points = world_points(geometry, volume.shape, torch.device("cpu"), torch.float64).numpy()
    anatomy = points + motion_at(motion_reference, points)
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


def truth_map_in_reference_frame(truth_dir: Path, name: str, register_status: Path | None) -> tuple[np.ndarray, Geometry]:
    """A truth volume of the phantom (`labels`, `aha17`, `mbf`, ...: `<name>.nii.gz` in `truth_dir`) where the
    registered series shows it: (map, geometry), by nearest neighbour (`truth_in_reference_frame`).
    Unchanged when the register stage aligned to the un-moved anatomy (the oracle) or there is no status."""
    from ctp_steps.io import read_volume

    volume, geometry = read_volume(Path(truth_dir) / f"{name}.nii.gz")
    motion = reference_motion(truth_dir, status_path=register_status) if register_status else None
    return truth_in_reference_frame(volume, geometry, motion), geometry


def sample_field(field: np.ndarray, geometry: Geometry, points: np.ndarray) -> np.ndarray:
    """Trilinear value of a world field (z, y, x, 3) at world points (n, 3)."""
    f = torch.as_tensor(field, dtype=torch.float64).permute(3, 0, 1, 2)[None]
    p = torch.as_tensor(points, dtype=torch.float64).reshape(1, -1, 1, 1, 3)
    return sample_world(f, geometry, p)[0, :, :, 0, 0].T.numpy()


def metrics_from_arrays(
    fields: np.ndarray,
    geometry: Geometry,
    reference: int,
    truth_frame_labels: np.ndarray,
    motion: list[dict],
    landmarks: dict,
    region: np.ndarray,
) -> list[tuple[str, str, float]]:
    """(metric, target, value) rows of one patient."""
    n = len(fields)
    moving = [k for k in range(n) if k != reference]
    ref_labels = truth_frame_labels[reference]
    lv_ref, myo_ref = ref_labels == LV_BLOOD, ref_labels == MYOCARDIUM
    L = np.array([landmarks[name] for name in LANDMARKS], dtype=float)
    p_ref = where_seen(motion[reference], L)
    myo_points = geometry.index_to_world(np.argwhere(myo_ref)[:, ::-1].astype(float))
    lv_points_grid = world_points(geometry, ref_labels.shape, torch.device("cpu"), torch.float64).numpy()

    acc: dict[tuple[str, str], list[float]] = {}

    def add(metric: str, target: str, value: float) -> None:
        acc.setdefault((metric, target), []).append(float(value))

    for k in moving:
        labels_k = torch.as_tensor(truth_frame_labels[k].astype(np.int64))[None]
        u = torch.as_tensor(fields[k], dtype=torch.float32)[None]
        warped = warp_labels(labels_k, u, geometry, N_TRUTH_LABELS)[0].numpy()
        add("lv_dice_before", "lv", dice(truth_frame_labels[k] == LV_BLOOD, lv_ref))
        add("lv_dice_after", "lv", dice(warped == LV_BLOOD, lv_ref))
        add("myocardium_dice_before", "myocardium", dice(truth_frame_labels[k] == MYOCARDIUM, myo_ref))
        add("myocardium_dice_after", "myocardium", dice(warped == MYOCARDIUM, myo_ref))
        # the ceiling: frame k's true labels moved by the exact field (what discretisation allows)
        exact = true_field(motion[reference], motion[k], lv_points_grid).astype(np.float32)
        ceiling = warp_labels(labels_k, torch.as_tensor(exact)[None], geometry, N_TRUTH_LABELS)[0].numpy()
        add("lv_dice_exact_field", "lv", dice(ceiling == LV_BLOOD, lv_ref))
        p_k = where_seen(motion[k], L)
        est = p_ref + sample_field(fields[k], geometry, p_ref)
        tre = np.linalg.norm(est - p_k, axis=1)
        before = np.linalg.norm(p_ref - p_k, axis=1)
        for name, e, b in zip(LANDMARKS, tre, before):
            add("tre_mm", name, e)
            add("tre_before_mm", name, b)
        add("tre_mm", "landmarks", tre.mean())
        add("tre_before_mm", "landmarks", before.mean())
        add("tre_max_mm", "landmarks", tre.max())
        err = sample_field(fields[k], geometry, myo_points) - true_field(motion[reference], motion[k], myo_points)
        add("field_error_mm", "myocardium", np.linalg.norm(err, axis=1).mean())
        det = jacobian_determinant(fields[k], geometry)[region]
        add("jacobian_nonpos_frac", "lv_box", float(np.mean(det <= 0)) if det.size else 0.0)
    # per patient: the mean over moving frames; tre_max_mm is the worst landmark of the worst frame
    return [
        (metric, target, float(np.max(v) if metric == "tre_max_mm" else np.mean(v)))
        for (metric, target), v in acc.items()
    ]


def registration_metrics(truth_dir: Path, patient_dir: Path, status_path: Path) -> pd.DataFrame:
    """Long metric rows of one patient (an excluded patient gets registration_ok = 0 only)."""
    from ctp_steps.validate import METRIC_COLUMNS

    patient_id, center = truth_dir.name, truth_dir.parent.name
    rows = [("registration_ok", "all", 0.0)]
    if read_status(status_path).status == "ok":
        truth = read_json(truth_dir / "truth.json")
        report = read_json(patient_dir / file_name("registration_qc"))
        fields, geometry = read_fields(patient_dir / file_name("displacement"))
        frame_labels, _ = read_series(truth_dir / "frame_labels.nii.gz")
        box = report["box"]
        box_geometry = crop_geometry(box["center_mm"], box["size"], box["spacing_mm"])
        region = box_region(geometry, fields.shape[1:4], box_geometry, box["size"])
        rows = [("registration_ok", "all", 1.0)] + metrics_from_arrays(
            fields, geometry, report["reference_frame"], frame_labels, truth["motion"]["frames"],
            truth["landmarks"], region,
        )
    return pd.DataFrame([(patient_id, center, STAGE, *r) for r in rows], columns=METRIC_COLUMNS)
