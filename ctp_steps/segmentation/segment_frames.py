"""Stage `segment_frames`: VB-Net aorta (1) + LV blood pool (2) on every frame of the unregistered series,
and the arterial input function (mean HU in the eroded aorta per frame).

Contract (ctp_steps/stages.py): `Inputs`, `Outputs` (the keys of rules/segment_frames.smk), `Config`, `run`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from ctp_steps.io import read_json, read_series, write_parquet, write_series
from ctp_steps.segmentation.aif import aif_record, aorta_aif
from ctp_steps.segmentation.config import SegmentationConfig
from ctp_steps.segmentation.postprocess import check_volume, clean_series
from ctp_steps.segmentation.stage import AORTA, LV_BLOOD, load_checked, outside, plot_mask_overlays
from ctp_steps.stages import Context, PatientInputs, PatientOutputs
from ctp_steps.types import PatientInputError

log = logging.getLogger(__name__)

Config = SegmentationConfig


@dataclass(frozen=True, kw_only=True)
class Inputs(PatientInputs):
    series: Path
    frames: Path
    weights: Path  # must be the manifest's file of `cfg.frames_model`


@dataclass(frozen=True, kw_only=True)
class Outputs(PatientOutputs):
    frame_masks: Path  # 4D uint8
    aif: Path  # frame, time_s, hu, enhancement_hu
    png: Path | None = None  # QC figure: the masks on a few frames (also of an excluded patient)


def run(inputs: Inputs, outputs: Outputs, cfg: SegmentationConfig, ctx: Context) -> dict:
    from ctp_steps.segmentation.infer import predict

    series, geometry = read_series(inputs.series)
    times = read_json(inputs.frames)["frame_times_s"]
    model, sha = load_checked(cfg.frames_model, inputs.weights, ctx.device, ctx.models_manifest)
    t0 = time.perf_counter()
    labels = predict(model, series.astype(np.float32), tuple(geometry.spacing[::-1]), cfg.batch_size, cfg.amp)
    labels = clean_series(labels, (AORTA, LV_BLOOD))
    log.info("segmented %d frames on %s in %.1f s", len(series), model.device, time.perf_counter() - t0)
    ml = geometry.voxel_ml
    aorta_ml = (labels == AORTA).sum(axis=(1, 2, 3)) * ml
    lv_ml = (labels == LV_BLOOD).sum(axis=(1, 2, 3)) * ml
    overlays = partial(plot_mask_overlays, images=series, labels=labels, geometry=geometry,
                       classes={AORTA: "aorta", LV_BLOOD: "LV blood pool"},
                       frames=outside(aorta_ml, cfg.aorta_ml) + outside(lv_ml, cfg.lv_ml), title=ctx.title)
    try:
        check_volume("aorta", aorta_ml, cfg.aorta_ml, inputs.series.name)
        check_volume("LV blood pool", lv_ml, cfg.lv_ml, inputs.series.name)
        aif = aorta_aif(series, labels, times, cfg.aif_erosion_voxels, cfg.aif_baseline_frames, str(inputs.series))
    except PatientInputError as exc:  # the excluded patient's figure shows the masks that failed
        exc.diagnostic = exc.diagnostic or overlays
        raise
    write_series(outputs.frame_masks, labels.astype(np.uint8), geometry)
    write_parquet(outputs.aif, aif)
    if outputs.png is not None:
        overlays(outputs.png, None)
    return {
        "segment_frames_source": "vbnet",
        "segment_frames_model_sha256": sha,
        "aorta_ml": float(np.median(aorta_ml)),
        "lv_ml": float(np.median(lv_ml)),
        **aif_record(aif),
    }
