"""Stage `segment_myocardium`: VB-Net myocardium on the registered average (whatever made it).

Contract (ctp_steps/stages.py): `Inputs`, `Outputs` (the keys of rules/segment_myocardium.smk), `Config`, `run`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctp_steps.io import read_volume, write_volume
from ctp_steps.segmentation.config import SegmentationConfig
from ctp_steps.segmentation.postprocess import check_volume, clean_labels, myocardium_hole_voxels
from ctp_steps.segmentation.stage import MYO_CLASS, load_checked
from ctp_steps.stages import Context, PatientInputs, PatientOutputs

Config = SegmentationConfig


@dataclass(frozen=True, kw_only=True)
class Inputs(PatientInputs):
    average: Path
    weights: Path  # must be the manifest's file of `cfg.myocardium_model`


@dataclass(frozen=True, kw_only=True)
class Outputs(PatientOutputs):
    myocardium: Path


def run(inputs: Inputs, outputs: Outputs, cfg: SegmentationConfig, ctx: Context) -> dict:
    from ctp_steps.segmentation.infer import predict

    average, geometry = read_volume(inputs.average)
    model, sha = load_checked(cfg.myocardium_model, inputs.weights, ctx.device, ctx.models_manifest)
    labels = predict(model, average[None].astype(np.float32), tuple(geometry.spacing[::-1]), 1, cfg.amp)[0]
    holes = myocardium_hole_voxels(geometry.spacing)
    myocardium = clean_labels(labels, (MYO_CLASS,), holes) == MYO_CLASS
    volume_ml = float(myocardium.sum() * geometry.voxel_ml)
    check_volume("myocardium", np.array([volume_ml]), cfg.myocardium_ml, str(inputs.average))
    write_volume(outputs.myocardium, myocardium.astype(np.uint8), geometry)
    return {
        "segment_myocardium_source": "vbnet",
        "segment_myocardium_model_sha256": sha,
        "myocardium_ml": volume_ml,
    }
