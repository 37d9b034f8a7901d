"""The two per-patient segmentation stages: what `segment-frames` and `segment-myocardium` do.

segment_frames: VB-Net aorta (1) + LV blood pool (2) on every frame of the
unregistered series → frame_masks.nii.gz (4D uint8), and the AIF from the
eroded aorta → aif.parquet. segment_myocardium: VB-Net myocardium on the
registered average → myocardium.nii.gz. Both post-process (largest connected
component, holes filled) and exclude the patient, with the reason, when a mask
is empty or its volume lies outside the configured physiological bounds.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from ctp_steps.io import read_json, read_series, read_volume, write_parquet, write_series, write_volume
from ctp_steps.models import MANIFEST, read_manifest, verified_weights
from ctp_steps.segmentation.aif import aif_record, aorta_aif
from ctp_steps.segmentation.config import SegmentationConfig
from ctp_steps.segmentation.postprocess import check_volume, clean_labels, clean_series, myocardium_hole_voxels

log = logging.getLogger(__name__)

AORTA, LV_BLOOD = 1, 2  # frames model classes
MYO_CLASS = 1  # myocardium model class


def checked_weights(name: str, weights: Path, manifest: Path = MANIFEST) -> tuple[Path, str]:
    """The manifest's file for `name` after its checksum check; it must be the file the rule passed."""
    path = verified_weights(name, manifest)
    if path.resolve() != Path(weights).resolve():
        from ctp_steps.models import ModelError

        raise ModelError(f"model {name!r}: rule input {weights} is not the manifest's file {path}")
    return path, read_manifest(manifest)[name]["sha256"]


def _load(name: str, weights: Path, device: str, manifest: Path, threads: int):
    import torch

    from ctp_steps.devices import resolve_device
    from ctp_steps.segmentation.infer import load_model

    torch.set_num_threads(threads)
    path, sha = checked_weights(name, weights, manifest)
    return load_model(path, resolve_device(device)), sha


def _voxel_ml(geometry) -> float:
    return float(np.prod(geometry.spacing)) / 1000.0


def segment_frames(
    series_path: Path,
    frames_path: Path,
    weights: Path,
    model_name: str,
    cfg: SegmentationConfig,
    device: str,
    out_dir: Path,
    manifest: Path = MANIFEST,
) -> dict:
    from ctp_steps.segmentation.infer import predict

    series, geometry = read_series(series_path)
    times = read_json(frames_path)["frame_times_s"]
    model, sha = _load(model_name, weights, device, manifest, cfg.threads)
    t0 = time.perf_counter()
    labels = predict(model, series.astype(np.float32), tuple(geometry.spacing[::-1]), cfg.batch_size, cfg.amp)
    labels = clean_series(labels, (AORTA, LV_BLOOD))
    log.info("segmented %d frames on %s in %.1f s", len(series), model.device, time.perf_counter() - t0)
    voxel_ml = _voxel_ml(geometry)
    aorta_ml = (labels == AORTA).sum(axis=(1, 2, 3)) * voxel_ml
    lv_ml = (labels == LV_BLOOD).sum(axis=(1, 2, 3)) * voxel_ml
    check_volume("aorta", aorta_ml, cfg.aorta_ml, str(series_path))
    check_volume("LV blood pool", lv_ml, cfg.lv_ml, str(series_path))
    aif = aorta_aif(series, labels, times, cfg.aif_erosion_voxels, cfg.aif_baseline_frames, str(series_path))
    write_series(out_dir / "frame_masks.nii.gz", labels.astype(np.uint8), geometry)
    write_parquet(out_dir / "aif.parquet", aif)
    return {
        "segment_frames_source": "vbnet",
        "segment_frames_model_sha256": sha,
        "aorta_ml": float(np.median(aorta_ml)),
        "lv_ml": float(np.median(lv_ml)),
        **aif_record(aif),
    }


def segment_myocardium(
    average_path: Path,
    weights: Path,
    model_name: str,
    cfg: SegmentationConfig,
    device: str,
    out_dir: Path,
    manifest: Path = MANIFEST,
) -> dict:
    from ctp_steps.segmentation.infer import predict

    average, geometry = read_volume(average_path)
    model, sha = _load(model_name, weights, device, manifest, cfg.threads)
    labels = predict(model, average[None].astype(np.float32), tuple(geometry.spacing[::-1]), 1, cfg.amp)[0]
    holes = myocardium_hole_voxels(geometry.spacing)
    myocardium = clean_labels(labels, (MYO_CLASS,), holes) == MYO_CLASS
    volume_ml = float(myocardium.sum() * _voxel_ml(geometry))
    check_volume("myocardium", np.array([volume_ml]), cfg.myocardium_ml, str(average_path))
    write_volume(out_dir / "myocardium.nii.gz", myocardium.astype(np.uint8), geometry)
    return {
        "segment_myocardium_source": "vbnet",
        "segment_myocardium_model_sha256": sha,
        "myocardium_ml": volume_ml,
    }
