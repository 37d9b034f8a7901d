"""Oracle `segment_frames`: frame masks (1 aorta, 2 LV blood pool) and the AIF from the true moved labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctp_steps.io import read_json, read_series, write_parquet, write_series
from ctp_steps.oracle import AORTA, LV_BLOOD, aorta_aif, check_grid
from ctp_steps.stages import Context, PatientInputs, PatientOutputs

Config = None


@dataclass(frozen=True, kw_only=True)
class Inputs(PatientInputs):
    series: Path
    frames: Path
    truth: Path  # the phantom's truth.json; its folder holds the truth maps


@dataclass(frozen=True, kw_only=True)
class Outputs(PatientOutputs):
    frame_masks: Path
    aif: Path


def run(inputs: Inputs, outputs: Outputs, cfg: None, ctx: Context) -> dict:
    series, geometry = read_series(inputs.series)
    labels_file = inputs.truth.parent / "frame_labels.nii.gz"
    frame_labels, label_geometry = read_series(labels_file)
    check_grid(labels_file, label_geometry, geometry)
    masks = np.where(np.isin(frame_labels, (AORTA, LV_BLOOD)), frame_labels, 0).astype(np.uint8)
    write_series(outputs.frame_masks, masks, geometry)
    write_parquet(outputs.aif, aorta_aif(series, frame_labels, read_json(inputs.frames)["frame_times_s"]))
    return {"segment_frames_source": "oracle"}
