"""The `register` stage for one patient: reference frame, LV box, method, fields pasted back, warps, QC, files.

Contract (ctp_steps/stages.py): `Inputs`, `Outputs` (the keys of rules/register.smk), `Config`, `run`. Outputs:
  registered  4D float32 HU, every frame resampled onto the reference frame's anatomy
  average     mean of the registered frames
  fields      4D vector field per frame (world mm; reference point p ↦ p + u(p) in that frame)
  masks       4D uint8 frame masks (1 aorta, 2 LV blood pool) warped the same way
  qc          reference choice, LV box, per-frame QC, summary, timing (JSON)
  png         the moving frames' LV before/after with their Dice (registration/figure.py), also when excluded
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ctp_steps.io import read_series, write_json, write_series, write_volume
from ctp_steps.registration import qc
from ctp_steps.registration.config import RegistrationConfig
from ctp_steps.registration.crop import LV_BLOOD, BoxField, box_region, lv_centroid, paste_field
from ctp_steps.registration.fields import write_fields
from ctp_steps.registration.reference import choose_reference
from ctp_steps.registration.warp import crop_geometry, sample_world, world_points
from ctp_steps.stages import Context, PatientInputs, PatientOutputs
from ctp_steps.tensors import channel_argmax
from ctp_steps.types import Geometry, PatientInputError, block_factors

log = logging.getLogger(__name__)

N_MASK_LABELS = 3  # 0 background, 1 aorta, 2 LV blood pool
METHODS = ("learned", "simpleitk", "none")


def read_inputs(series_path: Path, masks_path: Path) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """(frames float32 HU, frame masks uint8, geometry), with the per-patient checks of a usable input."""
    frames, geometry = read_series(series_path)
    masks, mask_geometry = read_series(masks_path)
    if masks.shape != frames.shape or not mask_geometry.allclose(geometry):
        raise PatientInputError(
            f"{masks_path.name}: grid {masks.shape} does not match {series_path.name} {frames.shape}"
        )
    if not np.isfinite(frames).all():
        bad = sorted({int(k) for k in np.argwhere(~np.isfinite(frames))[:, 0]})
        raise PatientInputError(f"{series_path.name}: non-finite values in frame(s) {bad}: cannot be registered")
    return frames.astype(np.float32, copy=False), masks, geometry


def lv_centroids(lv: np.ndarray, geometry: Geometry, masks_name: str) -> np.ndarray:
    empty = [k for k in range(len(lv)) if not lv[k].any()]
    if empty:
        raise PatientInputError(f"{masks_name}: no LV blood pool in frame(s) {empty}: they cannot be registered")
    return np.stack([lv_centroid(m, geometry) for m in lv])


def run_method(
    method: str,
    frames: np.ndarray,
    lv: np.ndarray,
    geometry: Geometry,
    reference: int,
    centroids: np.ndarray,
    cfg: RegistrationConfig,
    device: torch.device,
    weights: Path | None,
    threads: int,
    registrar=None,
) -> tuple[list[BoxField | None], Geometry, int]:
    """Each method's box fields, and the LV box (output grid, edge) it worked in."""
    if method == "learned":
        from ctp_steps.registration.learned import LearnedRegistrar

        registrar = registrar or LearnedRegistrar.from_checkpoint(weights, device, cfg.inference_batch)
        g = registrar.grid
        box = crop_geometry(centroids[reference], g["output_size"], g["spacing_mm"])
        return registrar.register(frames, lv, geometry, reference, centroids), box, g["output_size"]
    size, spacing = cfg.network.output_size, cfg.network.spacing_mm
    box = crop_geometry(centroids[reference], size, spacing)
    if method == "simpleitk":
        from ctp_steps.registration.baseline import register_simpleitk

        return register_simpleitk(frames, lv, geometry, reference, centroids, box, size, cfg.simpleitk, threads), box, size
    if method == "none":
        return [None] * len(frames), box, size
    if method == "translation":  # ablation: the LV-centroid initialisation alone (benchmarks)
        shifts = centroids - centroids[reference]
        return [
            None if k == reference else BoxField(shifts[k], np.broadcast_to(shifts[k].astype(np.float32), (size, size, size, 3)), box)
            for k in range(len(frames))
        ], box, size
    raise ValueError(f"unknown registration method {method!r}; expected one of {METHODS}")


def register_arrays(
    frames: np.ndarray,
    masks: np.ndarray,
    geometry: Geometry,
    method: str,
    cfg: RegistrationConfig,
    device: torch.device,
    weights: Path | None = None,
    threads: int = 1,
    registrar=None,
    masks_name: str = "frame_masks.nii.gz",
) -> dict:
    """Register in memory; returns the arrays to write and the QC record (no file is touched)."""
    lv = masks == LV_BLOOD
    centroids = lv_centroids(lv, geometry, masks_name)
    reference, curves = choose_reference(frames, lv, geometry, cfg.reference_frame)
    shift = np.linalg.norm(centroids - centroids[reference], axis=1)
    far = np.flatnonzero(shift > cfg.max_lv_shift_mm)
    if far.size:
        raise PatientInputError(
            f"{masks_name}: the LV of frame(s) {far.tolist()} lies up to {shift.max():.0f} mm from the reference "
            f"frame {reference}'s (limit {cfg.max_lv_shift_mm:g} mm): they cannot be registered"
        )
    t0 = time.perf_counter()
    box_fields, box, size = run_method(
        method, frames, lv, geometry, reference, centroids, cfg, device, weights, threads, registrar
    )
    method_seconds = time.perf_counter() - t0

    shape = frames.shape[1:]
    block = block_factors(geometry.spacing[::-1], cfg.field_spacing_mm)
    field_geometry, field_shape = field_grid(geometry, shape, cfg.field_spacing_mm)
    # The fields are pasted, written and checked (Jacobian, displacement) on the fields grid: the image grid
    # unless its voxels are finer than field_spacing_mm; there the frames are warped with the field
    # interpolated from the block centres (a field varies over centimetres, not voxels)
    region = box_region(field_geometry, field_shape, box, size)
    points = world_points(geometry, shape, device)
    field_points = points if field_shape == shape else world_points(field_geometry, field_shape, device)
    registered, warped_masks = frames.copy(), masks.copy()
    fields = np.zeros((len(frames), *field_shape, 3), dtype=np.float32)
    lv_ref = lv[reference]
    per_frame, qc_seconds = [], 0.0
    for k, bf in enumerate(box_fields):  # one frame at a time: a full-grid field exists for one frame only
        field = np.zeros((*shape, 3), dtype=np.float32)
        if bf is not None:
            fields[k] = paste_field(bf, field_geometry, field_shape, cfg.taper_mm, device, field_points)
            field = fields[k] if field_shape == shape else block_centres_to_grid(fields[k], block, shape, device)
        if np.any(field):
            registered[k], warped_masks[k] = warp_frame(frames[k], masks[k], field, geometry, device, points)
        t1 = time.perf_counter()
        per_frame.append({"frame": k, "lv_shift_mm": float(shift[k]), "lv_contrast_sd": curves["lv_contrast_sd"][k],
                          **qc.frame_qc(fields[k], field_geometry, region, lv_ref, lv[k], warped_masks[k] == LV_BLOOD)})
        qc_seconds += time.perf_counter() - t1
    warp_seconds = time.perf_counter() - t0 - method_seconds - qc_seconds

    summary = qc.summarise(per_frame, reference)
    report = {
        "method": method,
        "reference_frame": reference,
        "reference_choice": cfg.reference_frame,
        "enhancement_curves": curves,
        "lv_centroids_mm": centroids.tolist(),
        "box": {"center_mm": centroids[reference].tolist(), "origin_mm": list(box.origin), "size": size,
                "spacing_mm": box.spacing[0], "taper_mm": cfg.taper_mm},
        "frames": per_frame,
        "summary": summary,
        "seconds": {"method": method_seconds, "paste_and_warp": warp_seconds, "qc": qc_seconds},
        "device": str(device),
        "weights_sha256": _sha(weights) if method == "learned" and weights else None,
    }
    return {"registered": registered, "masks": warped_masks, "fields": fields, "field_geometry": field_geometry,
            "report": report}


def field_grid(geometry: Geometry, shape_zyx, field_spacing_mm: float) -> tuple[Geometry, tuple[int, int, int]]:
    """The grid the fields file is written on: the image grid, or its block centres where voxels are finer
    than `field_spacing_mm` (a displacement field varies over centimetres, not voxels)."""
    block = block_factors(geometry.spacing[::-1], field_spacing_mm)
    return geometry.blocks(block), tuple(n // b for n, b in zip(shape_zyx, block))


def block_centres_to_grid(field: np.ndarray, block: tuple[int, int, int], shape_zyx, device: torch.device) -> np.ndarray:
    """A (z, y, x, 3) field given at block centres, trilinear onto every voxel of the image grid.

    With align_corners=False, interpolating by exactly the block factor puts output voxel o at input
    coordinate (o - (b - 1) / 2) / b, i.e. at the block-centre geometry of `Geometry.blocks`; voxels past
    the last whole block take the edge value.
    """
    coarse = torch.as_tensor(field, device=device).permute(3, 0, 1, 2)[None]
    size = tuple(n * b for n, b in zip(field.shape[:3], block))
    fine = F.interpolate(coarse, size=size, mode="trilinear", align_corners=False)
    pad = [amount for n, m in zip(reversed(shape_zyx), reversed(size)) for amount in (0, n - m)]
    fine = F.pad(fine, pad, mode="replicate") if any(pad) else fine
    return fine[0].permute(1, 2, 3, 0).contiguous().cpu().numpy()


def warp_frame(
    frame: np.ndarray, mask: np.ndarray, field: np.ndarray, geometry: Geometry, device: torch.device,
    points: torch.Tensor,
) -> tuple[np.ndarray, np.ndarray]:
    """One frame (linear) and its label mask (linear per label, arg-max) pulled back through its field:
    image and one-hot labels are sampled together, as channels of one volume."""
    at = points[None] + torch.as_tensor(field, device=device)[None]
    img = torch.as_tensor(frame, device=device)[None, None]
    onehot = F.one_hot(torch.as_tensor(mask, device=device).long(), N_MASK_LABELS).permute(3, 0, 1, 2)[None].float()
    sampled = sample_world(torch.cat([img.to(onehot.dtype), onehot], dim=1), geometry, at)
    registered = sampled[0, 0].cpu().numpy().astype(frame.dtype, copy=False)
    warped = channel_argmax(sampled[:, 1:])[0].cpu().numpy().astype(mask.dtype)
    return registered, warped


def _sha(path: Path) -> str:
    from ctp_steps.models import sha256_of

    return sha256_of(Path(path))


def qc_failure(report: dict, method: str, cfg: RegistrationConfig) -> str | None:
    """Why the registration failed its QC (a frame's LV stays misaligned), or None when it passed."""
    if method == "none":
        return None
    checked = qc.lv_dice_checked(report, cfg.min_lv_contrast_sd)
    bad = [f for f in report["frames"] if checked[f["frame"]] and f["lv_dice_after"] < cfg.min_lv_dice_after]
    if not bad:
        return None
    worst = min(bad, key=lambda f: f["lv_dice_after"])
    return (
        f"frame(s) {[f['frame'] for f in bad]} could not be registered: LV Dice to reference frame "
        f"{report['reference_frame']} after {method} registration is as low as {worst['lv_dice_after']:.2f} "
        f"(frame {worst['frame']}; minimum {cfg.min_lv_dice_after:g})"
    )


def register_with_fallback(
    frames: np.ndarray,
    masks: np.ndarray,
    geometry: Geometry,
    method: str,
    cfg: RegistrationConfig,
    device: torch.device,
    weights: Path | None = None,
    threads: int = 1,
    registrar=None,
    masks_name: str = "frame_masks.nii.gz",
) -> tuple[dict, list[str]]:
    """Register with `method`; if the learned net fails its QC, try cfg.fallback before giving up.

    A net meets studies unlike its training data; the classical path is slower but makes no such
    assumption. Returns the kept result and the failed attempts; raises PatientInputError listing every
    attempt when none passes.
    """
    tried = [method] + ([cfg.fallback] if method == "learned" and cfg.fallback != "none" else [])
    attempts: list[str] = []
    for m in tried:
        result = register_arrays(
            frames, masks, geometry, m, cfg, device, weights, threads, registrar if m == method else None, masks_name
        )
        failure = qc_failure(result["report"], m, cfg)
        if failure is None:
            return result, attempts
        log.warning("%s registration failed its QC: %s", m, failure)
        attempts.append(f"{m}: {failure}")
    from functools import partial

    from ctp_steps.registration.figure import plot_registration

    # the last attempt's frames before/after with their LV Dice: the QC figure of the exclusion
    diagnostic = partial(plot_registration, frames=frames, masks=masks, geometry=geometry, report=result["report"],
                         registered=result["registered"], registered_masks=result["masks"],
                         min_lv_dice_after=cfg.min_lv_dice_after, min_lv_contrast_sd=cfg.min_lv_contrast_sd)
    raise PatientInputError("; ".join(attempts) if len(attempts) > 1 else failure, diagnostic=diagnostic)


def stage_record(report: dict) -> dict:
    """The stage's columns in patients.parquet (QC figures over the moving frames; the full report is in
    registration_qc.json). `registration_reference_frame` is what validation reads to take the truth there."""
    s = report["summary"]
    return {
        "register_source": report["method"],
        "register_model_sha256": report["weights_sha256"],
        "registration_reference_frame": int(report["reference_frame"]),
        "registration_lv_dice_before": float(s["lv_dice_before"]),
        "registration_lv_dice_after": float(s["lv_dice_after"]),
        "registration_lv_dice_after_min": float(s["lv_dice_after_min"]),
        "registration_jacobian_nonpos_frac": float(s["jacobian_nonpos_frac"]),
        "registration_max_displacement_mm": float(s["max_displacement_mm"]),
        "register_attempts": "; ".join(report.get("failed_attempts", [])) or None,
    }


Config = RegistrationConfig


@dataclass(frozen=True, kw_only=True)
class Inputs(PatientInputs):
    series: Path
    frame_masks: Path  # 4D uint8: 1 aorta, 2 LV blood pool per frame
    weights: Path | None = None  # the learned method's net (checked against the models manifest)


@dataclass(frozen=True, kw_only=True)
class Outputs(PatientOutputs):
    registered: Path
    average: Path
    fields: Path
    masks: Path
    qc: Path
    png: Path | None = None  # QC figure (registration/figure.py), also of an excluded patient


def run(inputs: Inputs, outputs: Outputs, cfg: RegistrationConfig, ctx: Context) -> dict:
    """Read, register with the configured method (ctx.implementation), check, write; returns the record."""
    method = ctx.implementation
    weights = None
    if method == "learned":
        from ctp_steps.models import MANIFEST, verified_weights

        weights = verified_weights(cfg.model, ctx.models_manifest or MANIFEST)
    from functools import partial

    from ctp_steps.registration.figure import plot_registration

    device = ctx.device
    frames, masks, geometry = read_inputs(inputs.series, inputs.frame_masks)
    try:
        result, failed_attempts = register_with_fallback(
            frames, masks, geometry, method, cfg, device, weights, ctx.threads, masks_name=inputs.frame_masks.name
        )
    except PatientInputError as exc:  # excluded before or after registering: the figure shows the frames it saw
        seen = exc.diagnostic or partial(plot_registration, frames=frames, masks=masks, geometry=geometry)
        exc.diagnostic = partial(seen, title=ctx.title)
        raise
    report = {**result["report"], "failed_attempts": failed_attempts}
    log.info("reference frame %d, summary %s, %.1f s", report["reference_frame"], report["summary"], report["seconds"]["method"])
    write_series(outputs.registered, result["registered"].astype(np.float32), geometry)
    write_volume(outputs.average, result["registered"].mean(axis=0, dtype=np.float32), geometry)
    write_fields(outputs.fields, result["fields"], result["field_geometry"])
    write_series(outputs.masks, result["masks"].astype(np.uint8), geometry)
    write_json(outputs.qc, report)
    if outputs.png is not None:
        plot_registration(outputs.png, None, frames=frames, masks=masks, geometry=geometry, report=report,
                          registered=result["registered"], registered_masks=result["masks"],
                          min_lv_dice_after=cfg.min_lv_dice_after, min_lv_contrast_sd=cfg.min_lv_contrast_sd,
                          title=ctx.title)
    return stage_record(report)
