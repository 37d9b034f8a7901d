"""Write a phantom patient as scanners do: one CT slice per file, HU rescale, vendor timing conventions.

Styles (VENDOR_STYLES):
- series_per_frame: one series per frame (own SeriesInstanceUID/SeriesNumber);
  frame time in AcquisitionTime (TM, microseconds); uint16 with intercept −1024;
  slices written head-first (InstanceNumber 1 = most superior); SE###/IM####.dcm.
- temporal_position: one series; TemporalPositionIdentifier and
  NumberOfTemporalPositions; frame time in ContentTime while AcquisitionTime
  stays at the scan start; int16 with intercept 0; feet-first; flat IMG#####.dcm.
- trigger_time: one series, no temporal-position tags; frame time in
  TriggerTime (ms after the first frame); AcquisitionTime and ContentTime stay
  at the scan start; int16 with slope 0.5 and intercept −8192; head-first;
  random hex file names without extension in nested folders, written shuffled.
Headers carry fake PHI (PatientName SYNTHETIC^<id>, birth date, ...) so the
converter can prove it never copies them. UIDs and names derive from the seed:
the same patient always gives the same files, and every UID of a patient is unique.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ctp_steps.phantom.params import VENDOR_STYLES, patient_rng


@dataclass(frozen=True)
class Storage:
    unsigned: bool
    bits_stored: int
    intercept: float
    slope: float
    head_first: bool
    model: str


STORAGE = {
    "series_per_frame": Storage(True, 12, -1024.0, 1.0, True, "Phantom A"),
    "temporal_position": Storage(False, 16, 0.0, 1.0, False, "Phantom B"),
    "trigger_time": Storage(False, 16, -8192.0, 0.5, True, "Phantom C"),
}


def _tm(t: datetime) -> str:
    return t.strftime("%H%M%S.%f")


def _uid(patient, style: str, *parts: str) -> str:
    """A UID derived from the patient and style: rewriting a patient gives the same UIDs.

    The parts are joined with a separator before hashing: pydicom concatenates
    entropy sources as they are, so frame 1 slice 11 and frame 11 slice 1 (or
    patient P1 seed 12 and patient P11 seed 2) would otherwise share a UID.
    """
    parts = (patient.spec.patient_id, str(patient.spec.seed), style, *parts)
    return generate_uid(entropy_srcs=["\x1f".join(parts)])


def _stored(frames_hu: np.ndarray, st: Storage) -> np.ndarray:
    dtype = np.uint16 if st.unsigned else np.int16
    info = np.iinfo(dtype)
    hi = min(info.max, 2**st.bits_stored - 1) if st.unsigned else info.max
    stored = np.empty(frames_hu.shape, dtype=dtype)
    for f, frame in enumerate(frames_hu):  # frame by frame: a 512² x 320-slice study as float64 is 13 GB
        values = np.round((frame.astype(np.float64) - st.intercept) / st.slope)
        stored[f] = np.clip(values, info.min, hi).astype(dtype)
    return stored


def _template(patient, style: str, st: Storage, start: datetime, rng: np.random.Generator) -> Dataset:
    spec = patient.spec
    g = patient.geometry
    nz, ny, nx = patient.frames_hu.shape[1:]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    date = start.strftime("%Y%m%d")
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = _tm(start)
    ds.AccessionNumber = f"ACC{rng.integers(10**7, 10**8)}"
    ds.Modality = "CT"
    ds.Manufacturer = "CTP-Cohort Synthetic"
    ds.ManufacturerModelName = st.model
    ds.InstitutionName = f"Synthetic Hospital {spec.center}"
    ds.ReferringPhysicianName = "SYNTHETIC^REFERRER"
    ds.StudyDescription = "Stress dynamic CT myocardial perfusion"
    ds.SeriesDescription = "Dynamic perfusion"
    ds.PatientName = f"SYNTHETIC^{spec.patient_id}"
    ds.PatientID = f"PID{rng.integers(10**8, 10**9)}"
    ds.PatientBirthDate = f"{rng.integers(1940, 1990)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
    ds.PatientSex = str(rng.choice(["F", "M"]))
    ds.BodyPartExamined = "HEART"
    ds.SliceThickness = g.spacing[2]
    ds.KVP = patient.kvp
    ds.ReconstructionDiameter = round(max(nx * g.spacing[0], ny * g.spacing[1]), 3)
    ds.ConvolutionKernel = "B30f"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = _uid(patient, style, "study")
    ds.SeriesInstanceUID = _uid(patient, style, "series")
    ds.StudyID = "1"
    ds.SeriesNumber = 3
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = _uid(patient, style, "frame-of-reference")
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = ny, nx
    ds.PixelSpacing = [g.spacing[1], g.spacing[0]]  # row spacing (y), column spacing (x)
    ds.BitsAllocated = 16
    ds.BitsStored = st.bits_stored
    ds.HighBit = st.bits_stored - 1
    ds.PixelRepresentation = 0 if st.unsigned else 1
    ds.WindowCenter, ds.WindowWidth = 150, 600
    ds.RescaleIntercept = st.intercept
    ds.RescaleSlope = st.slope
    ds.RescaleType = "HU"
    if style == "temporal_position":
        ds.NumberOfTemporalPositions = patient.frames_hu.shape[0]
    return ds


def write_dicom(patient, out_dir: Path, style: str) -> list[Path]:
    """Write every slice of every frame as one CT Image Storage file; returns the paths in writing order."""
    if style not in VENDOR_STYLES:
        raise ValueError(f"style {style!r} not in {VENDOR_STYLES}")
    st = STORAGE[style]
    out_dir = Path(out_dir)
    rng = patient_rng(patient.spec.seed, "dicom")
    start = datetime(
        int(rng.integers(2019, 2025)),
        int(rng.integers(1, 13)),
        int(rng.integers(1, 29)),
        int(rng.integers(8, 17)),
        int(rng.integers(0, 60)),
        int(rng.integers(0, 60)),
        int(rng.integers(0, 10**6)),
    )
    ds = _template(patient, style, st, start, rng)
    stored = _stored(patient.frames_hu, st)
    n_frames, nz = stored.shape[:2]
    g = patient.geometry
    slice_order = range(nz - 1, -1, -1) if st.head_first else range(nz)
    jobs = [(f, rank, k) for f in range(n_frames) for rank, k in enumerate(slice_order)]
    if style == "trigger_time":
        jobs = [jobs[i] for i in rng.permutation(len(jobs))]
    frame_series = [_uid(patient, style, "series", str(f)) for f in range(n_frames)]

    paths = []
    for f, rank, k in jobs:
        t = start + timedelta(milliseconds=int(round(patient.frame_times_s[f] * 1000)))
        number = rank + 1 if style == "series_per_frame" else f * nz + rank + 1
        sop = _uid(patient, style, "sop", str(f), str(k))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.InstanceNumber = number
        z = g.origin[2] + k * g.spacing[2]
        ds.ImagePositionPatient = [round(g.origin[0], 4), round(g.origin[1], 4), round(z, 4)]
        ds.SliceLocation = round(z, 4)
        if style == "series_per_frame":
            ds.SeriesInstanceUID = frame_series[f]
            ds.SeriesNumber = 100 + f + 1
            ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = _tm(t)
            ds.AcquisitionNumber = f + 1
            path = out_dir / f"SE{f + 1:03d}" / f"IM{number:04d}.dcm"
        elif style == "temporal_position":
            ds.TemporalPositionIdentifier = f + 1
            ds.ContentTime = _tm(t)
            path = out_dir / f"IMG{number:05d}.dcm"
        else:
            ds.TriggerTime = f"{patient.frame_times_s[f] * 1000.0:.3f}"
            name = rng.bytes(16).hex()
            path = out_dir / name[:2] / name[2:4] / name
        ds.PixelData = stored[f, k].tobytes()
        ds["PixelData"].VR = "OW"
        path.parent.mkdir(parents=True, exist_ok=True)
        dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths
