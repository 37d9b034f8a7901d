"""Stage `convert`: DICOM folder → 4D NIfTI in HU + frames.json, or the patient's exclusion reason.

Contract (ctp_steps/stages.py): `Inputs`, `Outputs` (the keys of rules/convert.smk), `Config`, `run`.
The reading itself is `ctp_steps.convert`, imported on use: the config model stays light for planning.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ctp_steps.stages import Context, PatientInputs, PatientOutputs


class ConversionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_frames: int = Field(8, ge=2, description="Fewer frames than this excludes the patient.")
    working_spacing_mm: float | None = Field(
        1.0,
        gt=0,
        le=5,
        description="Every later stage works on this grid: native axes finer than this many mm are averaged in "
        "whole blocks of the voxel count whose span is closest to it (0.4 mm pixels -> 3x3 blocks of 1.2 mm, "
        "0.5 mm slices -> pairs of 1.0 mm; 0.7 mm stays), as a thicker reconstruction would. The nets work at "
        "2.5 mm and the myocardial wall is 8-12 mm thick, so sub-millimetre voxels only add noise, memory and "
        "time (a 512x512 frame is 9x the voxels of its 3x3 average). null keeps the native grid.",
    )


Config = ConversionConfig


@dataclass(frozen=True, kw_only=True)
class Inputs(PatientInputs):
    dicom: Path  # the patient's exam folder


@dataclass(frozen=True, kw_only=True)
class Outputs(PatientOutputs):
    series: Path
    frames: Path


def conversion_record(series) -> dict:
    """The conversion's columns in patients.parquet: shape, spacing, and which series and time tag were used."""
    from ctp_steps.convert import conversion_facts

    t, z, y, x = series.hu.shape
    sx, sy, sz = series.geometry.spacing
    return {
        "n_frames": t,
        "time_span_s": series.frame_times_s[-1] - series.frame_times_s[0],
        "shape_z": z,
        "shape_y": y,
        "shape_x": x,
        "spacing_x_mm": sx,
        "spacing_y_mm": sy,
        "spacing_z_mm": sz,
        "kvp": series.meta.get("kvp"),
        **conversion_facts(series),
    }


def run(inputs: Inputs, outputs: Outputs, cfg: ConversionConfig, ctx: Context) -> dict:
    from ctp_steps.convert import convert_dicom_series, write_converted

    series = convert_dicom_series(inputs.dicom, min_frames=cfg.min_frames, working_spacing_mm=cfg.working_spacing_mm)
    write_converted(series, outputs.series, outputs.frames)
    return conversion_record(series)
