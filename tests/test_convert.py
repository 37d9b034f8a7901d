"""DICOM conversion: synthetic dynamic series in three vendor conventions, every bad input, real files.

The synthetic writer places slice k of frame t at origin + k·dz·normal with known
HU and times, so the expected array, geometry and times are known exactly.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ctp_steps.convert import convert_dicom_series, write_converted
from ctp_steps.io import geometry_of, read_series
from ctp_steps.orientation import to_canonical
from ctp_steps.phantom import (
    VENDOR_STYLES,
    PhantomParams,
    PhantomPatient,
    generate_patient,
    make_specs,
    write_dicom,
)
from ctp_steps.types import Geometry, PatientInputError

SAMPLES = Path(os.path.dirname(pydicom.data.__file__)) / "test_files"
AXIAL_HFS = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
AXIAL_FFS = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
STYLES = ("series_per_frame", "temporal_position", "trigger_time")
SHAPE = (10, 6, 8, 7)  # t, z, y, x; y != x catches a transposition
SPACING_ZYX = (2.5, 0.7, 0.6)
ORIGIN = (-10.0, -20.0, 30.0)
START_S = 12 * 3600 + 34 * 60 + 5.25  # 12:34:05.25
PATIENT_NAME, PATIENT_ID, BIRTH_DATE = "Doe^Jane", "PID-8812345", "19510203"


def _oblique_iop() -> tuple[float, ...]:
    a, b = np.deg2rad(20.0), np.deg2rad(-35.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    m = rz @ rx
    return tuple(float(f"{v:.6f}") for v in (*m[:, 0], *m[:, 1]))


def _tm(seconds: float) -> str:
    seconds %= 86400
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{int(h):02d}{int(m):02d}{s:09.6f}"


def truth(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Known HU (t, z, y, x) and irregular frame times (s, first at 0)."""
    rng = np.random.default_rng(seed)
    hu = rng.uniform(-1000, 1500, shape).astype(np.float32)
    times = np.concatenate([[0.0], np.cumsum(rng.uniform(1.2, 3.7, shape[0] - 1))])
    return hu, np.round(times, 4)


def expected_geometry(iop=AXIAL_HFS, spacing_zyx=SPACING_ZYX, origin=ORIGIN) -> Geometry:
    r, c = np.asarray(iop[:3]), np.asarray(iop[3:])
    n = np.cross(r, c)
    return Geometry(origin, (spacing_zyx[2], spacing_zyx[1], spacing_zyx[0]), tuple(np.column_stack([r, c, n]).ravel()))


def write_dynamic(
    out: Path,
    hu: np.ndarray,
    times_s: np.ndarray,
    style: str,
    *,
    iop: tuple[float, ...] = AXIAL_HFS,
    spacing_zyx: tuple[float, float, float] = SPACING_ZYX,
    origin: tuple[float, float, float] = ORIGIN,
    encoding: str = "uint16",
    reverse_slices: bool = False,
    start_s: float = START_S,
    edit: Callable[[Dataset, int, int], None] | None = None,
    seed: int = 0,
) -> list[list[Path]]:
    """Write hu (t, z, y, x) as one file per slice the way scanners do; returns files[t][z].

    Slice z lies at origin + z·dz·(row × col). Files get random names without
    extension in nested folders, instance numbers run against the normal when
    reverse_slices (feet-first acquisition order). `edit(ds, t, z)` corrupts on purpose.
    """
    rng = np.random.default_rng(seed + 1)
    n_t, n_z, n_y, n_x = hu.shape
    r, c = np.asarray(iop[:3]), np.asarray(iop[3:])
    normal = np.cross(r, c)
    study, series = generate_uid(), generate_uid()
    frame_series = [generate_uid() for _ in range(n_t)]
    files: list[list[Path]] = [[None] * n_z for _ in range(n_t)]
    names = rng.permutation(n_t * n_z)
    for t in range(n_t):
        for z in range(n_z):
            k = t * n_z + z
            if encoding == "uint16":
                slope, intercept, pixel_rep = 1.0, -1024.0, 0
            elif encoding == "int16_half":
                slope, intercept, pixel_rep = 0.5, 0.0, 1
            elif encoding == "uint16_per_file":
                slope, intercept, pixel_rep = 1.0, (-1024.0 if k % 2 else -1000.0), 0
            else:
                raise ValueError(encoding)
            stored = np.round((hu[t, z] - intercept) / slope)
            dtype = np.uint16 if pixel_rep == 0 else np.int16
            info = np.iinfo(dtype)
            assert stored.min() >= info.min and stored.max() <= info.max

            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID = CTImageStorage
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            ds.Modality = "CT"
            ds.Manufacturer = "SyntheticCT"
            ds.KVP = "100"
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT_NAME, PATIENT_ID, BIRTH_DATE
            ds.StudyInstanceUID = study
            ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240102"
            ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
            pos = np.asarray(origin) + z * spacing_zyx[0] * normal
            ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
            ds.PixelSpacing = [f"{spacing_zyx[1]:g}", f"{spacing_zyx[2]:g}"]
            ds.SliceThickness = f"{spacing_zyx[0]:g}"
            ds.InstanceNumber = (n_z - z if reverse_slices else z + 1) + t * n_z
            ds.Rows, ds.Columns = n_y, n_x
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
            ds.PixelRepresentation = pixel_rep
            ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
            ds.AcquisitionNumber = 1
            frame_clock = _tm(start_s + times_s[t])
            if style == "series_per_frame":
                ds.SeriesInstanceUID = frame_series[t]
                ds.AcquisitionTime = ds.ContentTime = frame_clock
            elif style == "temporal_position":
                ds.SeriesInstanceUID = series
                ds.TemporalPositionIdentifier = t + 1
                ds.NumberOfTemporalPositions = n_t
                ds.AcquisitionTime = _tm(start_s)
                ds.ContentTime = frame_clock
            elif style == "trigger_time":
                ds.SeriesInstanceUID = series
                ds.TriggerTime = f"{times_s[t] * 1000:.3f}"
                ds.AcquisitionTime = ds.ContentTime = _tm(start_s)
            else:
                raise ValueError(style)
            ds.PixelData = stored.astype(dtype).tobytes()
            if edit is not None:
                edit(ds, t, z)
            name = f"{names[k]:08x}"
            path = out / name[-2:] / name if style == "trigger_time" else out / f"S{t:03d}" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            files[t][z] = path
    return files


def tolerance(encoding: str) -> float:
    """Largest HU error from rounding to the stored integer."""
    return (0.5 if encoding == "int16_half" else 1.0) / 2 + 1e-3


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize(
    "iop, reverse_slices, encoding",
    [
        (AXIAL_HFS, False, "uint16"),
        (AXIAL_FFS, True, "int16_half"),
        (_oblique_iop(), True, "uint16_per_file"),
    ],
    ids=["hfs-uint16", "ffs-int16-slope0.5", "oblique-per-file-rescale"],
)
def test_converts_each_convention(tmp_path, style, iop, reverse_slices, encoding):
    hu, times = truth()
    write_dynamic(tmp_path, hu, times, style, iop=iop, reverse_slices=reverse_slices, encoding=encoding)
    (tmp_path / "S000").mkdir(exist_ok=True)
    (tmp_path / "S000" / "notes.txt").write_text("not DICOM")

    out = convert_dicom_series(tmp_path)

    # the stored voxel order, put in the canonical one (index axes along +L, +P, +S)
    hu, geometry, _ = to_canonical(hu, expected_geometry(iop))
    assert out.hu.dtype == np.float32 and out.hu.shape == hu.shape and sorted(hu.shape) == sorted(SHAPE)
    assert np.abs(out.hu - hu).max() <= tolerance(encoding)
    assert out.geometry.allclose(geometry, atol=1e-4)
    assert out.frame_times_s[0] == 0.0
    assert np.abs(np.asarray(out.frame_times_s) - times).max() < 1e-3
    expected_grouping = {
        "series_per_frame": "SeriesInstanceUID",
        "temporal_position": "TemporalPositionIdentifier",
        "trigger_time": "TriggerTime",
    }[style]
    expected_timing = {
        "series_per_frame": "AcquisitionTime",
        "temporal_position": "ContentTime",
        "trigger_time": "TriggerTime",
    }[style]
    assert out.meta["grouping"] == expected_grouping
    assert out.meta["timing_tag"] == expected_timing
    assert out.meta["n_frames"] == 10 and out.meta["n_slices"] == 6
    assert out.meta["n_files"] == 61 and out.meta["skipped_files"] == 1
    assert out.meta["kvp"] == 100.0 and out.meta["manufacturer"] == "SyntheticCT"


@pytest.mark.parametrize("style", STYLES)
def test_frame_matches_simpleitk_series_reader(tmp_path, style):
    """One frame read by ITK's DICOM series reader gives the same geometry and voxels."""
    hu, times = truth(seed=3)
    files = write_dynamic(tmp_path, hu, times, style, iop=_oblique_iop(), reverse_slices=True)
    out = convert_dicom_series(tmp_path)

    t = 4
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in files[t]])
    image = reader.Execute()
    itk_frame, itk_geometry, _ = to_canonical(sitk.GetArrayFromImage(image).astype(np.float32), geometry_of(image))
    assert np.allclose(itk_geometry.origin, out.geometry.origin, atol=1e-4)
    assert np.allclose(itk_geometry.spacing, out.geometry.spacing, atol=1e-4)
    assert np.allclose(itk_geometry.direction, out.geometry.direction, atol=1e-4)
    assert np.array_equal(itk_frame, out.hu[t])


def test_midnight_and_shuffled_order(tmp_path):
    """Times that cross midnight stay increasing; frame files written in any order."""
    hu, times = truth(seed=5)
    write_dynamic(tmp_path, hu, times, "series_per_frame", start_s=86400 - 7.5)
    out = convert_dicom_series(tmp_path)
    assert np.abs(np.asarray(out.frame_times_s) - times).max() < 1e-3
    assert np.abs(out.hu - hu).max() <= tolerance("uint16")


def test_slice_times_within_frames(tmp_path):
    """Slices of a frame acquired over 0.25 s (e.g. shuttle mode): the frame time is the middle of that range."""
    hu, times = truth(seed=4)

    def per_slice(ds, t, z):
        ds.AcquisitionTime = _tm(START_S + times[t] + 0.05 * z)
        del ds.ContentTime

    write_dynamic(tmp_path, hu, times, "series_per_frame", edit=per_slice)
    out = convert_dicom_series(tmp_path)
    assert out.meta["timing_tag"] == "AcquisitionTime"
    assert out.meta["time_spread_within_frame_s"] == pytest.approx(0.25, abs=1e-3)
    assert np.abs(np.asarray(out.frame_times_s) - times).max() < 1e-3


def test_acquisition_datetime_with_timezone(tmp_path):
    hu, times = truth(seed=6)

    def datetime_only(ds, t, z):
        ds.AcquisitionDateTime = "20240102" + _tm(START_S + times[t]) + "+0100"
        del ds.AcquisitionTime, ds.ContentTime

    write_dynamic(tmp_path, hu, times, "series_per_frame", edit=datetime_only)
    out = convert_dicom_series(tmp_path)
    assert out.meta["timing_tag"] == "AcquisitionDateTime"
    assert np.abs(np.asarray(out.frame_times_s) - times).max() < 1e-3


def test_localizer_dicomdir_and_report_are_skipped(tmp_path):
    hu, times = truth(seed=7)
    files = write_dynamic(tmp_path, hu, times, "temporal_position")
    scout = pydicom.dcmread(files[0][0])
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    scout.SOPInstanceUID = scout.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    scout.save_as(tmp_path / "scout")
    shutil.copy(SAMPLES / "dicomdirtests" / "DICOMDIR", tmp_path / "DICOMDIR")
    shutil.copy(SAMPLES / "test-SR.dcm", tmp_path / "dose_report")

    out = convert_dicom_series(tmp_path)
    assert out.hu.shape == SHAPE
    assert out.meta["skipped"] == {"localizer": 1, "DICOMDIR": 1, "DICOM without pixel data": 1}


def test_write_converted_round_trip_without_phi(tmp_path):
    hu, times = truth(seed=8)
    files = write_dynamic(tmp_path / "dicom", hu, times, "temporal_position")
    out = convert_dicom_series(tmp_path / "dicom")
    write_converted(out, tmp_path / "out" / "series.nii.gz", tmp_path / "out" / "frames.json")

    array, geometry = read_series(tmp_path / "out" / "series.nii.gz")
    assert np.array_equal(array, out.hu)
    assert geometry.allclose(out.geometry, atol=1e-5)
    text = (tmp_path / "out" / "frames.json").read_text()
    frames = json.loads(text)
    assert frames["n_frames"] == 10 and frames["shape_tzyx"] == list(SHAPE)
    assert frames["spacing_xyz_mm"] == pytest.approx([0.6, 0.7, 2.5])
    assert frames["time_span_s"] == pytest.approx(times[-1], abs=1e-3)
    assert frames["grouping"] == "TemporalPositionIdentifier" and frames["timing_tag"] == "ContentTime"
    ds = pydicom.dcmread(files[0][0])
    for secret in (PATIENT_NAME, "Doe", "Jane", PATIENT_ID, BIRTH_DATE, "20240102",
                   ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
        assert secret not in text


# --- bad inputs: each gives its own reason, naming the folder or file ----------------------


def rel(path: Path, dicom_dir: Path) -> str:
    """How reasons name a file: relative to the patient folder, never by absolute path."""
    return f"<dicom_dir>/{path.relative_to(dicom_dir).as_posix()}"


def _convert_error(path: Path, **kwargs) -> str:
    with pytest.raises(PatientInputError) as info:
        convert_dicom_series(path, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and str(path) not in msg, msg  # one line, no absolute path
    return msg


def test_no_readable_dicom(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "IM0001").write_bytes(b"\x00" * 300)
    msg = _convert_error(tmp_path)
    assert msg == "<dicom_dir>: no readable DICOM image files (2 files skipped: 2 not DICOM)"


def test_missing_folder(tmp_path):
    assert "does not exist" in _convert_error(tmp_path / "nope")


def test_non_ct_modality(tmp_path):
    hu, times = truth()
    files = write_dynamic(tmp_path, hu, times, "trigger_time",
                          edit=lambda ds, t, z: setattr(ds, "Modality", "MR" if (t, z) == (2, 3) else "CT"))
    msg = _convert_error(tmp_path)
    assert msg == f"{rel(files[2][3], tmp_path)}: modality MR, expected CT"


def test_mixed_series_without_separating_tag(tmp_path):
    hu, times = truth()
    write_dynamic(tmp_path, hu, times, "trigger_time", edit=lambda ds, t, z: setattr(ds, "TriggerTime", "0"))
    msg = _convert_error(tmp_path)
    assert msg.startswith("<dicom_dir>: mixed series that cannot be separated")
    assert "share a slice position" in msg


def _named(number: int, description: str) -> Callable[[Dataset, int, int], None]:
    def edit(ds, t, z):
        ds.SeriesNumber, ds.SeriesDescription = number, description

    return edit


def test_two_dynamic_series_with_different_orientation_are_not_mixed(tmp_path):
    hu, times = truth()
    write_dynamic(tmp_path / "a", hu, times, "temporal_position", edit=_named(3, "Perfusion"))
    write_dynamic(tmp_path / "b", hu, times, "temporal_position", iop=AXIAL_FFS, seed=1, edit=_named(4, "Perfusion"))
    shutil.rmtree(tmp_path / "b" / "S001")  # b's frames are not like a's: not one dynamic series
    msg = _convert_error(tmp_path)
    assert msg.startswith("<dicom_dir>: 2 candidate dynamic series, not mixed: series 3 'Perfusion' (60 images")
    assert "series 4 'Perfusion' (54 images), e.g. <dicom_dir>/b/" in msg


def test_rest_and_stress_series_in_one_folder(tmp_path):
    hu, times = truth()
    write_dynamic(tmp_path / "rest", hu, times, "temporal_position", edit=_named(3, "Rest perfusion"))
    write_dynamic(tmp_path / "stress", hu, times, "temporal_position", start_s=START_S + 600, seed=2,
                  edit=_named(5, "Stress perfusion"))
    msg = _convert_error(tmp_path)
    assert "2 candidate dynamic series, not mixed: series 3 'Rest perfusion' (60 images" in msg
    assert "and series 5 'Stress perfusion' (60 images" in msg


def test_incomplete_frame(tmp_path):
    hu, times = truth()
    files = write_dynamic(tmp_path, hu, times, "series_per_frame")
    files[3][1].unlink()
    files[3][4].unlink()
    msg = _convert_error(tmp_path)
    assert "incomplete frame 4 of 10" in msg and "4 of 6 slice positions present" in msg
    assert "S003/" in msg


def test_shifted_slice_positions_in_one_frame(tmp_path):
    hu, times = truth()

    def shift(ds, t, z):
        if t == 6:
            ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 1.0

    write_dynamic(tmp_path, hu, times, "temporal_position", edit=shift)
    msg = _convert_error(tmp_path)
    assert "inconsistent slice positions between frames: frame 7 of 10" in msg


def test_too_few_frames(tmp_path):
    hu, times = truth(shape=(5, 6, 8, 7))
    write_dynamic(tmp_path, hu, times, "trigger_time")
    assert _convert_error(tmp_path) == "<dicom_dir>: 5 frame(s), at least 8 required"
    assert convert_dicom_series(tmp_path, min_frames=5).hu.shape == (5, 6, 8, 7)


def test_duplicate_frame_times(tmp_path):
    hu, times = truth()
    times[5] = times[4]
    write_dynamic(tmp_path, hu, times, "series_per_frame")
    msg = _convert_error(tmp_path)
    assert "duplicate frame times" in msg and "S004/" in msg and "S005/" in msg


def test_no_time_tag(tmp_path):
    hu, times = truth()

    def untimed(ds, t, z):
        del ds.AcquisitionTime, ds.ContentTime

    write_dynamic(tmp_path, hu, times, "series_per_frame", edit=untimed)
    assert "cannot time the 10 frames" in _convert_error(tmp_path)


def test_temporal_position_disagrees_with_time(tmp_path):
    hu, times = truth()

    def swap(ds, t, z):
        ds.TemporalPositionIdentifier = {3: 4, 4: 3}.get(t, t) + 1

    write_dynamic(tmp_path, hu, times, "temporal_position", edit=swap)
    msg = _convert_error(tmp_path)
    assert "non-monotonic frame times: TemporalPositionIdentifier 5 is at 6.50 s, before TemporalPositionIdentifier 4" in msg


@pytest.mark.parametrize(
    "attr, edit",
    [
        ("pixel spacing", lambda ds: setattr(ds, "PixelSpacing", [0.8, 0.6])),
        ("orientation", lambda ds: setattr(ds, "ImageOrientationPatient", [0, 1, 0, 1, 0, 0])),
    ],
)
def test_inconsistent_geometry_between_frames(tmp_path, attr, edit):
    hu, times = truth()
    write_dynamic(tmp_path, hu, times, "series_per_frame", edit=lambda ds, t, z: edit(ds) if t == 2 else None)
    msg = _convert_error(tmp_path)
    assert f"inconsistent geometry between frames (SeriesInstanceUID): {attr}" in msg and "S002/" in msg


def test_inconsistent_image_size_between_frames(tmp_path):
    hu, times = truth()
    files = write_dynamic(tmp_path, hu, times, "temporal_position")
    small, _ = truth(shape=(1, 6, 4, 7))
    write_dynamic(tmp_path / "S002", small, times[2:3], "temporal_position")
    for p in files[2]:
        p.unlink()
    for p in (tmp_path / "S002").rglob("*"):
        if p.is_file():
            ds = pydicom.dcmread(p)
            ds.TemporalPositionIdentifier = 3
            ds.SeriesInstanceUID = pydicom.dcmread(files[0][0]).SeriesInstanceUID
            ds.save_as(p)
    msg = _convert_error(tmp_path)
    assert "inconsistent geometry between frames (TemporalPositionIdentifier): image size" in msg


def test_shifted_field_of_view(tmp_path):
    hu, times = truth()

    def shift(ds, t, z):
        if t == 8:
            ds.ImagePositionPatient[0] = float(ds.ImagePositionPatient[0]) + 3.0

    write_dynamic(tmp_path, hu, times, "trigger_time", edit=shift)
    assert "slices are not stacked along the slice normal (in-plane shift 3.00 mm" in _convert_error(tmp_path)


def test_non_uniform_slice_spacing(tmp_path):
    hu, times = truth()

    def gap(ds, t, z):
        if z == 5:
            ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 1.5

    write_dynamic(tmp_path, hu, times, "series_per_frame", edit=gap)
    msg = _convert_error(tmp_path)
    assert "non-uniform slice spacing: gaps from 2.500 to 4.000 mm" in msg


def test_undecodable_pixel_data(tmp_path):
    hu, times = truth()

    def truncate(ds, t, z):
        if (t, z) == (7, 2):
            ds.PixelData = ds.PixelData[:50]

    files = write_dynamic(tmp_path, hu, times, "temporal_position", edit=truncate)
    msg = _convert_error(tmp_path)
    assert msg.startswith(f"{rel(files[7][2], tmp_path)}: pixel data cannot be decoded")


def test_ct_image_without_pixel_data(tmp_path):
    hu, times = truth()
    files = write_dynamic(tmp_path, hu, times, "temporal_position")
    raw = files[1][1].read_bytes()
    files[1][1].write_bytes(raw[: len(raw) - len(hu[0, 0].tobytes()) - 12])
    assert _convert_error(tmp_path).startswith(f"{rel(files[1][1], tmp_path)}: CT image without pixel data")


# --- real DICOM from other writers (pydicom's bundled samples) ------------------------------


def _copy_samples(dst: Path, *relative: str) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for rel in relative:
        src = SAMPLES / rel
        for f in sorted(src.iterdir()) if src.is_dir() else [src]:
            shutil.copy(f, dst / f.name)
    return dst


def test_sample_single_ct_slice_is_one_frame(tmp_path):
    d = _copy_samples(tmp_path / "p", "CT_small.dcm")
    assert _convert_error(d) == "<dicom_dir>: 1 frame(s) (a single stack of 1 slice(s)), at least 8 required"


def test_sample_mr_is_rejected(tmp_path):
    d = _copy_samples(tmp_path / "p", "MR_small.dcm")
    assert _convert_error(d) == "<dicom_dir>/MR_small.dcm: modality MR, expected CT"


def test_sample_ct2_is_one_stack_with_gaps(tmp_path):
    """77654033/CT2: four slices at z = -99.5, 103.0, 104.3, 105.5 mm, one series, no time split."""
    d = _copy_samples(tmp_path / "p", "dicomdirtests/77654033/CT2")
    assert _convert_error(d) == "<dicom_dir>: 1 frame(s) (a single stack of 4 slice(s)), at least 8 required"
    assert "non-uniform slice spacing: gaps from 1.250 to 202.500 mm" in _convert_error(d, min_frames=1)


def test_sample_ct5n_matches_simpleitk(tmp_path):
    """98892001/CT5N: five real 2.5 mm slices written head to feet; as one frame they match ITK."""
    d = _copy_samples(tmp_path / "p", "dicomdirtests/98892001/CT5N")
    assert "1 frame(s) (a single stack of 5 slice(s))" in _convert_error(d)
    out = convert_dicom_series(d, min_frames=1)
    assert out.hu.shape == (1, 5, 16, 16) and out.frame_times_s == [0.0]

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(d)))
    image = reader.Execute()
    assert np.allclose(image.GetOrigin(), out.geometry.origin, atol=1e-4)
    assert np.allclose(image.GetSpacing(), out.geometry.spacing, atol=1e-4)
    assert np.allclose(image.GetDirection(), out.geometry.direction, atol=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(image).astype(np.float32), out.hu[0])


def test_sample_text_only_folder(tmp_path):
    d = _copy_samples(tmp_path / "p", "README.txt")
    assert _convert_error(d) == "<dicom_dir>: no readable DICOM image files (1 files skipped: 1 not DICOM)"


def test_follows_linked_folders_once(tmp_path):
    hu, times = truth(seed=9)
    write_dynamic(tmp_path / "store", hu, times, "series_per_frame")
    (tmp_path / "patient").mkdir()
    (tmp_path / "patient" / "series").symlink_to(tmp_path / "store", target_is_directory=True)
    (tmp_path / "store" / "loop").symlink_to(tmp_path / "store", target_is_directory=True)
    out = convert_dicom_series(tmp_path / "patient")
    assert out.meta["n_files"] == 60 and np.abs(out.hu - hu).max() <= tolerance("uint16")


def test_malformed_orientation(tmp_path):
    hu, times = truth()
    files = write_dynamic(tmp_path, hu, times, "temporal_position",
                          edit=lambda ds, t, z: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 1, 0, 0]) if t == z == 0 else None)
    assert _convert_error(tmp_path).startswith(f"{rel(files[0][0], tmp_path)}: malformed ImageOrientationPatient")


# --- round trip through the project's phantom -------------------------------------------------


@pytest.fixture(scope="module")
def phantom_patient() -> PhantomPatient:
    """One tiny phantom patient; its DICOM is written once per vendor style."""
    params = PhantomParams(shape_zyx=(12, 32, 32), spacing_zyx_mm=(5.0, 5.0, 5.0), supersample=1, n_frames=(10, 10))
    (spec,) = make_specs(1, [("c1", VENDOR_STYLES[0])], seed=11, role="test")
    return generate_patient(spec, params)


@pytest.mark.parametrize("style", VENDOR_STYLES)
def test_phantom_round_trip(tmp_path, phantom_patient, style):
    """Every vendor convention the phantom writes converts back to its frames, geometry and times."""
    write_dicom(phantom_patient, tmp_path, style)
    out = convert_dicom_series(tmp_path)
    assert out.hu.shape == phantom_patient.frames_hu.shape
    rounding = max(out.meta["rescale"]["slopes"]) / 2 + 1e-3
    assert np.abs(out.hu - phantom_patient.frames_hu).max() <= rounding
    assert out.geometry.allclose(phantom_patient.geometry, atol=1e-4)
    assert np.abs(np.subtract(out.frame_times_s, phantom_patient.frame_times_s)).max() < 1e-3

    write_converted(out, tmp_path / "out" / "series.nii.gz", tmp_path / "out" / "frames.json")
    text = (tmp_path / "out" / "frames.json").read_text()
    ds = pydicom.dcmread(next(p for p in tmp_path.rglob("*") if p.is_file() and "out" not in p.parts))
    for secret in (str(ds.PatientName), ds.PatientID, ds.PatientBirthDate, ds.StudyInstanceUID):
        assert secret and secret not in text


@pytest.mark.parametrize(("iop", "shape"), [(AXIAL_HFS, (10, 6, 8, 7)), (AXIAL_FFS, (10, 6, 8, 8))], ids=["hfs", "ffs"])
def test_working_grid_averages_whole_blocks(tmp_path, iop, shape):
    """Sub-millimetre pixels become whole-block means at the working spacing, placed at the block centres;
    the stored order does not change the answer (blocks are formed before the canonical reorder, so the
    feet-first case uses sizes the blocks divide)."""
    from ctp_steps.convert.pixels import block_mean

    hu, times = truth(shape=shape)
    write_dynamic(tmp_path, hu, times, "temporal_position", iop=iop)
    native = convert_dicom_series(tmp_path)
    working = convert_dicom_series(tmp_path, working_spacing_mm=1.3)  # 0.7 and 0.6 mm pixels: 2 x 2 blocks

    assert working.meta["working_block"] == [1, 2, 2] and native.meta["working_block"] == [1, 1, 1]
    assert working.meta["native_grid"] == f"{shape[1]}x{shape[2]}x{shape[3]} @ 2.5x0.7x0.6 mm"
    assert working.hu.shape == (shape[0], shape[1], shape[2] // 2, shape[3] // 2)
    expected = np.stack([block_mean(frame, (1, 2, 2)) for frame in native.hu[:, :, :, : 2 * (shape[3] // 2)]])
    np.testing.assert_allclose(working.hu, expected, atol=1e-3)
    assert working.geometry.spacing == pytest.approx((1.2, 1.4, 2.5))
    # the first working voxel sits at the mean world position of the native voxels it averages
    corners = [native.geometry.index_to_world(np.array([i, j, 0.0])) for i in (0, 1) for j in (0, 1)]
    np.testing.assert_allclose(working.geometry.index_to_world(np.zeros(3)), np.mean(corners, axis=0), atol=1e-6)
    assert convert_dicom_series(tmp_path, working_spacing_mm=0.8).hu.shape == native.hu.shape  # closest: 1 voxel


@pytest.mark.parametrize("style", ["series_per_frame", "temporal_position"])  # head-first, feet-first
def test_validation_rerenders_a_native_grid_patient_on_the_working_grid(tmp_path, style):
    """Conversion validation re-renders the patient as synthesize did (native grid here) and compares the
    working grid's block means exactly, whichever end of each axis conversion's whole blocks dropped."""
    from ctp_steps.conversion import Inputs, Outputs, run
    from ctp_steps.io import write_status
    from ctp_steps.phantom import PhantomParams, make_specs, write_dicom, write_truth
    from ctp_steps.phantom.families import render_patient
    from ctp_steps.phantom.params import NativeGrid
    from ctp_steps.types import StageStatus
    from ctp_steps.validation.conversion import conversion_metrics

    (spec,) = make_specs(1, [("CTR-N", style)], seed=3, role="test")
    params = PhantomParams(n_frames=(8, 8))
    native = NativeGrid(shape_zyx=(9, 401, 401), spacing_zyx_mm=(7.0, 0.5, 0.5))  # odd sizes, 2x2 blocks
    patient = render_patient(spec, params, "default", native)
    dicom, truth_dir = tmp_path / "dicom", tmp_path / "truth" / "CTR-N" / spec.patient_id
    write_dicom(patient, dicom, style)
    write_truth(patient, truth_dir)
    series, frames, status = tmp_path / "series.nii.gz", tmp_path / "frames.json", tmp_path / "convert.status.json"
    from ctp_steps.conversion import ConversionConfig
    from ctp_steps.stages import Context

    record = run(Inputs(dicom=dicom), Outputs(series=series, frames=frames, status=status), ConversionConfig(),
                 Context(implementation="dicom"))
    write_status(status, StageStatus(stage="convert", status="ok", record=record))
    assert record["working_block"] == "1x2x2" and record["shape_y"] == 200
    rows = conversion_metrics(truth_dir, series, frames, status, params.model_dump_json()).set_index("metric")
    assert rows.loc["conversion_ok", "value"] == 1.0
    assert rows.loc["conversion_max_abs_error_hu", "value"] <= 0.5 + 1e-4
    assert rows.loc["origin_error_mm", "value"] < 1e-3


def test_truth_maps_come_onto_the_working_grid():
    """Validation takes a truth map onto the grid the outputs are on (nearest neighbour at the block centres);
    on the truth's own grid (within DICOM's 1e-4 mm rounding) it is returned as it is."""
    from ctp_steps.validation.truth import truth_in_reference_frame

    g = Geometry((0.0, 0.0, 0.0), (0.5, 0.5, 2.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    labels = np.zeros((4, 8, 8), dtype=np.uint8)
    labels[:, 2:6, 4:8] = 3
    working = g.blocks((1, 2, 2))
    onto = truth_in_reference_frame(labels, g, None, working, (4, 4, 4))
    expected = np.zeros((4, 4, 4), dtype=np.uint8)
    expected[:, 1:3, 2:4] = 3  # rows 2-5 and columns 4-7 hold the blocks 1-2 and 2-3
    np.testing.assert_array_equal(onto, expected)
    nudged = Geometry((5e-5, 0.0, 0.0), g.spacing, g.direction)
    assert truth_in_reference_frame(labels, g, None, nudged, labels.shape) is labels
