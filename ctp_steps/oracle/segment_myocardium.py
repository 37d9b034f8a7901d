"""Oracle `segment_myocardium`: the true myocardium in the reference anatomy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctp_steps.io import read_volume, write_volume
from ctp_steps.oracle import MYOCARDIUM, check_grid
from ctp_steps.stages import Context, PatientInputs, PatientOutputs

Config = None


@dataclass(frozen=True, kw_only=True)
class Inputs(PatientInputs):
    average: Path  # only its grid is used
    truth: Path  # the phantom's truth.json; its folder holds the truth maps


@dataclass(frozen=True, kw_only=True)
class Outputs(PatientOutputs):
    myocardium: Path


def run(inputs: Inputs, outputs: Outputs, cfg: None, ctx: Context) -> dict:
    _, geometry = read_volume(inputs.average)
    labels_file = inputs.truth.parent / "labels.nii.gz"
    labels, label_geometry = read_volume(labels_file)
    check_grid(labels_file, label_geometry, geometry)
    write_volume(outputs.myocardium, (labels == MYOCARDIUM).astype(np.uint8), geometry)
    return {"segment_myocardium_source": "oracle"}
