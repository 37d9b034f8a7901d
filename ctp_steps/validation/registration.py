"""Registration vs the phantom's true motion (validation only: reads the hidden truth).

Frames of reference as in ctp_steps.validation.truth: the exact field for frame k
is T_k(p) = (id + u_k)⁻¹(p + u_r(p)) − p; TRE = |p_r + û_k(p_r) − p_k| with the truth
landmark L at p_r = (id + u_r)⁻¹(L) in the reference frame and p_k = (id + u_k)⁻¹(L)
in frame k; LV Dice compares frame k's true labels, warped by û_k, with frame r's true labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ctp_steps.io import read_json, read_series, read_status
from ctp_steps.layout import file_name
from ctp_steps.registration.crop import box_region
from ctp_steps.registration.fields import read_fields
from ctp_steps.registration.qc import dice
from ctp_steps.registration.warp import crop_geometry, jacobian_determinant, sample_world, warp_labels, world_points
from ctp_steps.types import Geometry
from ctp_steps.validation.rows import patient_rows
from ctp_steps.validation.truth import LV_BLOOD, MYOCARDIUM, N_TRUTH_LABELS, true_field, where_seen

STAGE = "registration"
LANDMARKS = ("apex", "base", "rv_insertion")


def sample_field(field: np.ndarray, geometry: Geometry, points: np.ndarray) -> np.ndarray:
    """Trilinear value of a world field (z, y, x, 3) at world points (n, 3)."""
    f = torch.as_tensor(field, dtype=torch.float64).permute(3, 0, 1, 2)[None]
    p = torch.as_tensor(points, dtype=torch.float64).reshape(1, -1, 1, 1, 3)
    return sample_world(f, geometry, p)[0, :, :, 0, 0].T.numpy()


def displacement_bound_mm(motion: dict) -> float:
    """An upper bound of |u(p)| of the phantom's closed-form motion: |translation| + Σ |mode vector|."""
    return float(np.linalg.norm(motion["translation_mm"]) + sum(np.linalg.norm(m["vector_mm"]) for m in motion["modes"]))


def exact_field_near(
    mask: np.ndarray, motion_reference: dict, motion_frame: dict, points_grid: np.ndarray, spacing_zyx
) -> np.ndarray:
    """The exact field (z, y, x, 3) inside the box around `mask` grown by the largest displacement, zero outside.

    Only points within that reach of the frame's LV can be carried into it, so the LV of a warp by this field
    equals the LV of a warp by the whole-grid field, for a fraction of its cost on fine grids (the exact field
    is 30 fixed-point iterations per point)."""
    reach_mm = displacement_bound_mm(motion_reference) + displacement_bound_mm(motion_frame)
    out = np.zeros(points_grid.shape, dtype=np.float32)
    where = np.argwhere(mask)
    if where.size == 0:
        return out
    margin = np.ceil(reach_mm / np.asarray(spacing_zyx, dtype=float)).astype(int) + 2
    lo = np.maximum(where.min(axis=0) - margin, 0)
    hi = np.minimum(where.max(axis=0) + margin + 1, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    out[box] = true_field(motion_reference, motion_frame, points_grid[box])
    return out


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
    myo_points = geometry.zyx_to_world(np.argwhere(myo_ref))
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
        near_lv = (truth_frame_labels[k] == LV_BLOOD) | lv_ref
        exact = exact_field_near(near_lv, motion[reference], motion[k], lv_points_grid, geometry.spacing[::-1])
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


def fields_on_grid(fields: np.ndarray, geometry: Geometry, target: Geometry, shape_zyx) -> np.ndarray:
    """Fields (t, z, y, x, 3) written on their own grid (the working grid's ~2.5 mm block centres, see
    `registration.field_spacing_mm`) sampled trilinearly at the voxel centres of the truth's grid."""
    points = world_points(target, tuple(shape_zyx), torch.device("cpu"), torch.float32)[None]
    out = np.empty((len(fields), *shape_zyx, 3), dtype=np.float32)
    for k, field in enumerate(fields):
        f = torch.as_tensor(field, dtype=torch.float32).permute(3, 0, 1, 2)[None]
        out[k] = sample_world(f, geometry, points)[0].permute(1, 2, 3, 0).numpy()
    return out


def registration_metrics(truth_dir: Path, patient_dir: Path, status_path: Path) -> pd.DataFrame:
    """Long metric rows of one patient (an excluded patient gets registration_ok = 0 only)."""
    rows = [("registration_ok", "all", 0.0)]
    if read_status(status_path).status == "ok":
        truth = read_json(truth_dir / "truth.json")
        report = read_json(patient_dir / file_name("registration_qc"))
        fields, geometry = read_fields(patient_dir / file_name("displacement"))
        frame_labels, truth_geometry = read_series(truth_dir / "frame_labels.nii.gz")
        if fields.shape[1:4] != frame_labels.shape[1:] or not geometry.allclose(truth_geometry):
            fields, geometry = fields_on_grid(fields, geometry, truth_geometry, frame_labels.shape[1:]), truth_geometry
        box = report["box"]
        box_geometry = crop_geometry(box["center_mm"], box["size"], box["spacing_mm"])
        region = box_region(geometry, fields.shape[1:4], box_geometry, box["size"])
        rows = [("registration_ok", "all", 1.0)] + metrics_from_arrays(
            fields, geometry, report["reference_frame"], frame_labels, truth["motion"]["frames"],
            truth["landmarks"], region,
        )
    return patient_rows(truth_dir, STAGE, rows)
