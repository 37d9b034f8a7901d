"""Oracle `landmarks`: the true apex, base and RV insertion (confidence 1) and the true AHA 17-segment map."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctp_steps.io import read_json, read_volume, write_json, write_volume
from ctp_steps.oracle import check_grid
from ctp_steps.stages import Context, PatientInputs, PatientOutputs

Config = None


@dataclass(frozen=True, kw_only=True)
class Inputs(PatientInputs):
    average: Path  # only its grid is used
    truth: Path  # the phantom's truth.json; its folder holds the truth maps


@dataclass(frozen=True, kw_only=True)
class Outputs(PatientOutputs):
    landmarks: Path
    aha: Path


def run(inputs: Inputs, outputs: Outputs, cfg: None, ctx: Context) -> dict:
    _, geometry = read_volume(inputs.average)
    aha_file = inputs.truth.parent / "aha17.nii.gz"
    aha, aha_geometry = read_volume(aha_file)
    check_grid(aha_file, aha_geometry, geometry)
    landmarks = read_json(inputs.truth)["landmarks"]
    write_json(
        outputs.landmarks,
        {name: {"world_mm": list(map(float, xyz)), "confidence": 1.0} for name, xyz in landmarks.items()},
    )
    write_volume(outputs.aha, aha.astype(np.uint8), geometry)
    return {"landmarks_source": "oracle"}
