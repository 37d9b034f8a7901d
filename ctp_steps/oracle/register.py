"""Oracle `register`: every frame moved back by the inverse true motion, and their average."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctp_steps.io import read_json, read_series, write_series, write_volume
from ctp_steps.stages import Context, PatientInputs, PatientOutputs

Config = None


@dataclass(frozen=True, kw_only=True)
class Inputs(PatientInputs):
    series: Path
    truth: Path  # the phantom's truth.json (its motion)


@dataclass(frozen=True, kw_only=True)
class Outputs(PatientOutputs):
    registered: Path
    average: Path


def run(inputs: Inputs, outputs: Outputs, cfg: None, ctx: Context) -> dict:
    from ctp_steps.phantom import displacement_field_mm, undo_motion

    series, geometry = read_series(inputs.series)
    motion = read_json(inputs.truth)["motion"]["frames"]
    registered = np.stack(
        [
            undo_motion(frame, displacement_field_mm(m, geometry, frame.shape), geometry)
            for frame, m in zip(series, motion)
        ]
    )
    write_series(outputs.registered, registered, geometry)
    write_volume(outputs.average, registered.mean(axis=0), geometry)
    return {"register_source": "oracle"}
