"""Stage `segment_myocardium`: VB-Net myocardium on the registered average (whatever made it).

Contract (ctp_steps/stages.py): `Inputs`, `Outputs` (the keys of rules/segment_myocardium.smk), `Config`, `run`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from ctp_steps.io import read_volume, write_volume
from ctp_steps.segmentation.config import SegmentationConfig
from ctp_steps.segmentation.postprocess import check_volume, clean_labels, myocardium_hole_voxels
from ctp_steps.segmentation.stage import MYO_CLASS, load_checked, plot_mask_overlays
from ctp_steps.stages import Context, PatientInputs, PatientOutputs
from ctp_steps.types import PatientInputError

Config = SegmentationConfig


@dataclass(frozen=True, kw_only=True)
class Inputs(PatientInputs):
    average: Path
    weights: Path  # must be the manifest's file of `cfg.myocardium_model`


@dataclass(frozen=True, kw_only=True)
class Outputs(PatientOutputs):
    myocardium: Path
    png: Path | None = None  # QC figure: the mask on a few slices (also of an excluded patient)


def run(inputs: Inputs, outputs: Outputs, cfg: SegmentationConfig, ctx: Context) -> dict:
    from ctp_steps.segmentation.infer import predict

    average, geometry = read_volume(inputs.average)
    model, sha = load_checked(cfg.myocardium_model, inputs.weights, ctx.device, ctx.models_manifest)
    labels = predict(model, average[None].astype(np.float32), tuple(geometry.spacing[::-1]), 1, cfg.amp)[0]
    holes = myocardium_hole_voxels(geometry.spacing)
    myocardium = clean_labels(labels, (MYO_CLASS,), holes) == MYO_CLASS
    volume_ml = float(myocardium.sum() * geometry.voxel_ml)
    overlays = partial(plot_mask_overlays, images=average[None], labels=myocardium[None].astype(np.uint8),
                       geometry=geometry, classes={MYO_CLASS: "myocardium"}, title=ctx.title)
    try:
        check_volume("myocardium", np.array([volume_ml]), cfg.myocardium_ml, inputs.average.name)
    except PatientInputError as exc:  # the excluded patient's figure shows the mask that failed
        exc.diagnostic = exc.diagnostic or overlays
        raise
    write_volume(outputs.myocardium, myocardium.astype(np.uint8), geometry)
    if outputs.png is not None:
        overlays(outputs.png, None)
    return {
        "segment_myocardium_source": "vbnet",
        "segment_myocardium_model_sha256": sha,
        "myocardium_ml": volume_ml,
    }
