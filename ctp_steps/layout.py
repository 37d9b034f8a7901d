"""Every per-patient file name, once: artifact → file name → the stage that writes it.

Rules, stages, validation, the oracle and the cohort gather ask this table for
names instead of spelling them, so a file is renamed here or nowhere. Paths:
`<results>/patients/<center>/<patient>/<file>`, status records
`<stage>.status.json` beside them, job logs `logs/<stage>/<center>/<patient>.log`.

Names kept for now although they mislead (renaming changes every output path):
`mbf.nii.gz` is the *regularised* MBF map and `mbf_raw.nii.gz` the voxel-wise
fit; `displacement_mm.nii.gz` holds the registration's fields; `aha17.nii.gz`
is the segment map of the patient's myocardium, not a template.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Artifact:
    file: str  # name inside the patient folder
    stage: str  # the per-patient stage that writes it


ARTIFACTS: dict[str, Artifact] = {
    "series": Artifact("series.nii.gz", "convert"),
    "frames": Artifact("frames.json", "convert"),
    "frame_masks": Artifact("frame_masks.nii.gz", "segment_frames"),
    "aif": Artifact("aif.parquet", "segment_frames"),
    "registered": Artifact("registered.nii.gz", "register"),
    "average": Artifact("average.nii.gz", "register"),
    "displacement": Artifact("displacement_mm.nii.gz", "register"),
    "registered_masks": Artifact("registered_masks.nii.gz", "register"),
    "registration_qc": Artifact("registration_qc.json", "register"),
    "registration_figure": Artifact("registration.png", "register"),
    "myocardium": Artifact("myocardium.nii.gz", "segment_myocardium"),
    "landmarks": Artifact("landmarks.json", "landmarks"),
    "aha17": Artifact("aha17.nii.gz", "landmarks"),
    "landmarks_qc": Artifact("landmarks.png", "landmarks"),
    "mbf": Artifact("mbf.nii.gz", "mbf"),  # the regularised map
    "mbf_raw": Artifact("mbf_raw.nii.gz", "mbf"),  # the voxel-wise fit
    "mbf_se": Artifact("mbf_se.nii.gz", "mbf"),  # standard error of the regularised map
    "blood_volume": Artifact("blood_volume.nii.gz", "mbf"),  # one_compartment only
    "tac": Artifact("tac.parquet", "mbf"),
    "segments_mbf": Artifact("segments_mbf.parquet", "mbf"),
    "mbf_qc": Artifact("mbf_qc.png", "mbf"),
    "ischemia": Artifact("ischemia.nii.gz", "imv"),
    "segments_imv": Artifact("segments_imv.parquet", "imv"),
    "imv_qc": Artifact("imv_qc.png", "imv"),
}

PATIENTS_DIR = "patients"  # <results>/patients/<center>/<patient>/
LOGS_DIR = "logs"
STATUS_SUFFIX = ".status.json"


def file_name(artifact: str) -> str:
    """The file name of an artifact (KeyError names a typo at once)."""
    return ARTIFACTS[artifact].file


def status_name(stage: str) -> str:
    """The status record every per-patient stage writes, whatever its outcome."""
    return f"{stage}{STATUS_SUFFIX}"


def stage_of_status(path: Path) -> str:
    return path.name.removesuffix(STATUS_SUFFIX)


def patient_log(stage: str, center: str, patient: str) -> str:
    """A per-patient job's log, relative to the results folder."""
    return f"{LOGS_DIR}/{stage}/{center}/{patient}.log"


def validation_file(stage: str) -> str:
    """Per-patient validation metrics: `<results>/validation/patients/<center>/<patient>/<stage>.parquet`."""
    return f"validation/patients/{{center}}/{{patient}}/{stage}.parquet"
