"""Subcommands of the validation-only oracle stand-ins (see ctp_steps/oracle.py).

Each writes the same files and status record as the real stage it replaces.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ctp_steps.cli import run_patient_stage

OUTPUTS = {
    "segment_frames": ("frame_masks.nii.gz", "aif.parquet"),
    "register": ("registered.nii.gz", "average.nii.gz"),
    "segment_myocardium": ("myocardium.nii.gz",),
    "landmarks": ("landmarks.json", "aha17.nii.gz"),
}


def _run(args: argparse.Namespace) -> None:
    from ctp_steps import oracle

    out, truth = Path(args.out_dir), Path(args.truth_dir)
    calls = {
        "segment_frames": lambda: oracle.oracle_segment_frames(Path(args.series), Path(args.frames), truth, out),
        "register": lambda: oracle.oracle_register(Path(args.series), truth, out),
        "segment_myocardium": lambda: oracle.oracle_segment_myocardium(out / "average.nii.gz", truth, out),
        "landmarks": lambda: oracle.oracle_landmarks(out / "average.nii.gz", truth, out),
    }

    def work() -> dict:
        return {**calls[args.stage](), f"{args.stage}_source": "oracle"}

    run_patient_stage(
        args.stage, out / f"{args.stage}.status.json", [out / o for o in OUTPUTS[args.stage]],
        [Path(args.upstream)], work,
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("oracle", help="validation-only stand-in of a stage, built from phantom truth")
    p.add_argument("stage", choices=sorted(OUTPUTS))
    p.add_argument("--series", required=True)
    p.add_argument("--frames", required=True)
    p.add_argument("--upstream", required=True, help="status file of the previous stage")
    p.add_argument("--truth-dir", required=True)
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=_run)
