"""Subcommand of the conversion stage: DICOM folder → 4D NIfTI (HU) + frames.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from ctp_steps.cli import run_patient_stage


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


def _convert(args: argparse.Namespace) -> None:
    def work() -> dict:
        from ctp_steps.convert import convert_dicom_series, write_converted

        series = convert_dicom_series(Path(args.dicom_dir), min_frames=args.min_frames)
        write_converted(series, Path(args.series), Path(args.frames))
        return conversion_record(series)

    outputs = [Path(args.series), Path(args.frames)]
    run_patient_stage("convert", Path(args.status), outputs, [], work)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="DICOM folder → 4D NIfTI (HU) + frames.json")
    p.add_argument("--dicom-dir", required=True)
    p.add_argument("--series", required=True)
    p.add_argument("--frames", required=True)
    p.add_argument("--status", required=True)
    p.add_argument("--min-frames", type=int, default=8)
    p.set_defaults(func=_convert)
