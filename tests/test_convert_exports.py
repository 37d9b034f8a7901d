"""Real exam exports, built from the phantom's own DICOM writer: each converts like its unaltered twin or is excluded.

Every case writes one tiny phantom patient (10 frames of 6 × 32 × 32 voxels)
in a vendor style, then alters the export the way archives do (extra series,
Enhanced CT, no Part-10 header, duplicates, compression, shifted slices, odd
time tags). The outcome is asserted against the twin: the same voxels,
geometry and frame times, or an exclusion with a one-line, PHI-free reason.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (
    MPEG2MPML,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from ctp_steps.convert import POSITION_TOL_MM, ConvertedSeries, conversion_facts, convert_dicom_series, write_converted
from ctp_steps.phantom import PhantomParams, PhantomPatient, generate_patient, make_specs, write_dicom
from ctp_steps.types import PatientInputError

UID_KEYWORDS = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID")


@pytest.fixture(scope="module")
def patient() -> PhantomPatient:
    """One tiny phantom patient; 32 × 32 in-plane is the smallest JPEG 2000 encodes."""
    params = PhantomParams(shape_zyx=(6, 32, 32), spacing_zyx_mm=(5.0, 5.0, 5.0), supersample=1, n_frames=(10, 10))
    (spec,) = make_specs(1, [("c1", "series_per_frame")], seed=23, role="test")
    return generate_patient(spec, params)


@pytest.fixture(scope="module")
def twins(patient, tmp_path_factory) -> dict[str, ConvertedSeries]:
    """The unaltered export of each vendor style, converted: what every altered export must equal."""
    root = tmp_path_factory.mktemp("twins")
    return {style: convert_dicom_series(_write(patient, root / style, style)) for style in
            ("series_per_frame", "temporal_position", "trigger_time")}


def _write(patient: PhantomPatient, out: Path, style: str) -> Path:
    write_dicom(patient, out, style)
    return out


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _rewrite(paths: list[Path], edit: Callable[[Dataset], None]) -> None:
    for p in paths:
        ds = pydicom.dcmread(p)
        edit(ds)
        ds.save_as(p)


def _assert_same(out: ConvertedSeries, twin: ConvertedSeries) -> None:
    assert out.hu.shape == twin.hu.shape
    assert np.array_equal(out.hu, twin.hu)
    assert out.geometry.allclose(twin.geometry, atol=1e-6)
    assert np.allclose(out.frame_times_s, twin.frame_times_s, atol=1e-6)


def _error(folder: Path, **kwargs) -> str:
    with pytest.raises(PatientInputError) as info:
        convert_dicom_series(folder, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and str(folder) not in msg, msg
    return msg


def _clone_series(src: list[Path], dst: Path, edit: Callable[[Dataset], None]) -> list[Path]:
    """A new series made from the files of another (new UIDs), altered by `edit`."""
    series, out = generate_uid(), []
    for k, p in enumerate(src):
        ds = pydicom.dcmread(p)
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        edit(ds)
        target = dst / f"IM{k + 1:04d}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target)
        out.append(target)
    return out


def _shift_tm(text: str, seconds: float) -> str:
    t = datetime.strptime(text, "%H%M%S.%f") + timedelta(seconds=seconds)
    return t.strftime("%H%M%S.%f")


# --- phantom writer --------------------------------------------------------------------------


def test_phantom_writer_uids_are_unique(tmp_path, patient):
    """12 frames × 12 slices: frame 1 slice 11 and frame 11 slice 1 once shared a SOPInstanceUID."""
    params = PhantomParams(shape_zyx=(12, 16, 16), spacing_zyx_mm=(5.0, 5.0, 5.0), supersample=1, n_frames=(12, 12))
    (spec,) = make_specs(1, [("c1", "series_per_frame")], seed=11, role="test")
    wide = generate_patient(spec, params)
    for style in ("series_per_frame", "temporal_position", "trigger_time"):
        paths = write_dicom(wide, tmp_path / style, style)
        headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
        sops = [h.SOPInstanceUID for h in headers]
        assert len(set(sops)) == len(sops) == 144
        assert all(h.file_meta.MediaStorageSOPInstanceUID == h.SOPInstanceUID for h in headers)
        n_series = len({h.SeriesInstanceUID for h in headers})
        assert n_series == (12 if style == "series_per_frame" else 1)
        others = {h.StudyInstanceUID for h in headers} | {h.FrameOfReferenceUID for h in headers}
        assert len(others) == 2 and not others & set(sops)


# --- series selection in exam folders ----------------------------------------------------------


@pytest.mark.parametrize("same_protocol", [False, True], ids=["own-protocol", "same-protocol-time-gap"])
def test_calcium_score_on_the_same_grid_is_ignored(tmp_path, patient, twins, same_protocol):
    """A calcium-score stack 8 minutes before a series-per-frame perfusion, same grid: not a frame."""
    d = _write(patient, tmp_path / "exam", "series_per_frame")

    def calcium(ds):
        ds.SeriesNumber = 2
        ds.AcquisitionTime = ds.ContentTime = ds.SeriesTime = _shift_tm(ds.AcquisitionTime, -480)
        if not same_protocol:
            ds.SeriesDescription, ds.ConvolutionKernel, ds.KVP, ds.SliceThickness = "Calcium score", "Qr36", 120, 3.0

    _clone_series(_files(d / "SE001"), d / "CASC", calcium)
    out = convert_dicom_series(d)
    _assert_same(out, twins["series_per_frame"])
    facts = conversion_facts(out)
    assert facts["series_used"].startswith("series 101-110 'Dynamic perfusion' (one series per frame, 10 series")
    assert "series 2" in facts["series_ignored"] and "single static stack" in facts["series_ignored"]
    assert "acquired 480 s before its first frame" in facts["series_ignored"]
    if not same_protocol:
        assert "differs from the dynamic series in description, kernel, slice thickness, kVp" in facts["series_ignored"]


def test_derived_localizer_and_dose_series_are_ignored(tmp_path, patient, twins):
    """AVERAGE and MIP series, a localizer, a CTA stack, a dose screen and a dose SR beside a one-series perfusion."""
    d = _write(patient, tmp_path / "exam", "temporal_position")
    files = _files(d)
    first_frame = files[:6]

    def derived(number, description, image_type):
        def edit(ds):
            ds.SeriesNumber, ds.SeriesDescription, ds.ImageType = number, description, image_type
            del ds.TemporalPositionIdentifier
        return edit

    _clone_series(first_frame, d / "AVG", derived(10, "Average", ["DERIVED", "SECONDARY", "AVERAGE"]))
    _clone_series(first_frame, d / "MIP", derived(11, "MIP 10mm", ["ORIGINAL", "PRIMARY", "AXIAL", "MIP"]))
    _clone_series(first_frame[:1], d / "SCOUT", derived(1, "Topogram", ["ORIGINAL", "PRIMARY", "LOCALIZER"]))

    def cta(number, phase):
        def edit(ds):
            ds.SeriesNumber, ds.SeriesDescription = number, f"CTA {phase}%"
            ds.ConvolutionKernel, ds.SliceThickness = "Bv40", 0.6
            del ds.TemporalPositionIdentifier
        return edit
    _clone_series(first_frame, d / "CTA75", cta(4, 75))  # two cardiac phases of one acquisition
    _clone_series(first_frame, d / "CTA40", cta(5, 40))

    def dose_screen(ds):
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        ds.SeriesNumber, ds.SeriesDescription, ds.ImageType = 999, "Dose Report", ["DERIVED", "SECONDARY", "OTHER"]
    _clone_series(first_frame[:1], d / "DOSE", dose_screen)
    shutil.copy(Path(pydicom.data.get_testdata_file("test-SR.dcm")), d / "DOSE" / "SR")

    out = convert_dicom_series(d)
    _assert_same(out, twins["temporal_position"])
    ignored = conversion_facts(out)["series_ignored"]
    assert "series 10 'Average': derived image (ImageType DERIVED/SECONDARY/AVERAGE) (6 image(s))" in ignored
    assert "series 11 'MIP 10mm': derived image" in ignored
    assert "series 1 'Topogram': localizer (1 image(s))" in ignored
    assert "series 4 'CTA 75%': single static stack" in ignored and "kernel, slice thickness" in ignored
    assert "series 5 'CTA 40%': single static stack" in ignored
    assert "series 999 'Dose Report': not a CT image (Secondary Capture Image Storage)" in ignored
    assert out.meta["skipped"]["DICOM without pixel data"] == 1
    assert conversion_facts(out)["series_used"] == "series 3 'Dynamic perfusion' (60 images)"


def test_two_dynamic_series_are_never_mixed(tmp_path, patient):
    """Rest and stress perfusion in one exam folder: excluded, naming both by number and description."""
    d = tmp_path / "exam"
    _write(patient, d / "stress", "temporal_position")
    _write(patient, d / "rest", "temporal_position")
    rest_series = generate_uid()

    def rest(ds):
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = rest_series, 7, "Rest perfusion"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.ContentTime = _shift_tm(ds.ContentTime, 900)

    _rewrite(_files(d / "rest"), rest)
    msg = _error(d)
    assert msg.startswith("<dicom_dir>: 2 candidate dynamic series, not mixed:")
    assert "series 3 'Dynamic perfusion' (60 images)" in msg and "series 7 'Rest perfusion' (60 images)" in msg


# --- formats ---------------------------------------------------------------------------------


def _enhanced(datasets: list[Dataset], series_uid: str, temporal_index: list[int]) -> Dataset:
    """One Enhanced CT Image Storage dataset holding `datasets` (single-frame phantom slices) as frames."""
    first = datasets[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "StudyDate", "Modality",
               "Manufacturer", "FrameOfReferenceUID", "KVP", "Rows", "Columns", "SamplesPerPixel",
               "PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
        setattr(ds, kw, first.data_element(kw).value)
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, 5, "Enhanced perfusion"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.NumberOfFrames = len(datasets)
    measures, orientation, rescale = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = first.PixelSpacing, first.SliceThickness
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = first.RescaleSlope, first.RescaleIntercept, "HU"
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [orientation]
    shared.PixelValueTransformationSequence = [rescale]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for src, index in zip(datasets, temporal_index):
        position, content, groups = Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = src.ImagePositionPatient
        content.FrameAcquisitionDateTime = src.AcquisitionDate + src.AcquisitionTime
        content.TemporalPositionIndex = index
        groups.PlanePositionSequence = [position]
        groups.FrameContentSequence = [content]
        per_frame.append(groups)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = b"".join(src.PixelData for src in datasets)
    ds["PixelData"].VR = "OW"
    return ds


@pytest.mark.parametrize("layout", ["one-file", "file-per-time-point"])
def test_enhanced_ct_multiframe(tmp_path, patient, twins, layout):
    src = _write(patient, tmp_path / "src", "series_per_frame")
    frames = [[pydicom.dcmread(p) for p in _files(f)] for f in sorted(src.iterdir())]
    d, series = tmp_path / "exam", generate_uid()
    d.mkdir()
    if layout == "one-file":
        flat = [ds for frame in frames for ds in frame]
        index = [t + 1 for t, frame in enumerate(frames) for _ in frame]
        _enhanced(flat, series, index).save_as(d / "ENH0001.dcm", enforce_file_format=True)
    else:
        for t, frame in enumerate(frames):
            _enhanced(frame, series, [t + 1] * len(frame)).save_as(d / f"ENH{t + 1:04d}.dcm", enforce_file_format=True)
    out = convert_dicom_series(d)
    _assert_same(out, twins["series_per_frame"])
    assert out.meta["timing_tag"] == "FrameAcquisitionDateTime"
    assert out.meta["grouping"] == "TemporalPositionIndex"
    assert out.meta["sop_class"] == ["Enhanced CT Image Storage"]


def test_files_without_part10_header(tmp_path, patient, twins):
    """Bare datasets (no preamble, no file meta) are read with the forcing option."""
    d = _write(patient, tmp_path / "exam", "trigger_time")
    for p in _files(d):
        ds = pydicom.dcmread(p)
        ds.file_meta = FileMetaDataset()
        ds.preamble = None
        pydicom.dcmwrite(p, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert pydicom.misc.is_dicom(_files(d)[0]) is False
    (d / "notes.txt").write_text("exported by a workstation\n")
    out = convert_dicom_series(d)
    _assert_same(out, twins["trigger_time"])
    assert conversion_facts(out)["files_without_part10"] == 60
    assert out.meta["skipped"] == {"not DICOM": 1}


def test_exact_duplicate_instances_are_dropped(tmp_path, patient, twins):
    """An export holding frame 3 twice (a copied folder): the copy is dropped and counted."""
    d = _write(patient, tmp_path / "exam", "series_per_frame")
    shutil.copytree(d / "SE003", d / "copy" / "SE003")
    out = convert_dicom_series(d)
    _assert_same(out, twins["series_per_frame"])
    assert conversion_facts(out)["duplicates_dropped"] == 6
    assert out.meta["skipped"]["duplicate instance"] == 6


@pytest.mark.parametrize(
    "style, syntax",
    [("series_per_frame", JPEGLSLossless), ("series_per_frame", JPEG2000Lossless), ("trigger_time", RLELossless),
     ("temporal_position", JPEG2000Lossless)],
    ids=["jpeg-ls", "jpeg-2000", "rle", "jpeg-2000-signed"],
)
def test_compressed_transfer_syntaxes_decode_losslessly(tmp_path, patient, twins, style, syntax):
    d = _write(patient, tmp_path / "exam", style)
    _rewrite(_files(d), lambda ds: ds.compress(syntax))
    assert pydicom.dcmread(_files(d)[0]).file_meta.TransferSyntaxUID == syntax
    out = convert_dicom_series(d)
    _assert_same(out, twins[style])
    assert conversion_facts(out)["transfer_syntax"] == syntax.name


def test_declared_plugins_decode_jpeg_lossless():
    """JPEG lossless (process 14) cannot be encoded by pydicom; its declared decoder must be present."""
    for syntax in (JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless, RLELossless):
        assert get_decoder(syntax).is_available, syntax.name


def test_undecodable_transfer_syntax_is_one_line(tmp_path, patient):
    d = _write(patient, tmp_path / "exam", "temporal_position")
    target = _files(d)[7]
    def mpeg(ds):
        ds.file_meta.TransferSyntaxUID = MPEG2MPML
        ds.PixelData = encapsulate([ds.PixelData])

    _rewrite([target], mpeg)
    msg = _error(d)
    assert msg == (f"<dicom_dir>/{target.relative_to(d).as_posix()}: pixel data cannot be decoded: "
                   f"{MPEG2MPML.name}: no decoder available")


@pytest.mark.parametrize("shift_mm, ok", [(0.04, True), (0.3, False)])
def test_slice_position_tolerance(tmp_path, patient, twins, shift_mm, ok):
    """One frame shifted along z: within POSITION_TOL_MM it converts (and the shift is recorded), beyond it not."""
    d = _write(patient, tmp_path / "exam", "series_per_frame")

    def shift(ds):
        ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + shift_mm]

    _rewrite(_files(d / "SE004"), shift)
    if not ok:
        assert "inconsistent slice positions between frames" in _error(d)
        assert f"tolerance {POSITION_TOL_MM} mm" in _error(d)
        return
    out = convert_dicom_series(d)
    _assert_same(out, twins["series_per_frame"])
    assert conversion_facts(out)["position_max_diff_mm"] == pytest.approx(shift_mm, abs=1e-3)


# --- time sources ----------------------------------------------------------------------------


def test_datetime_not_rolled_over_at_midnight(tmp_path, patient, twins):
    """AcquisitionDateTime keeps the date while its time of day passes midnight: AcquisitionTime is trusted."""
    d = _write(patient, tmp_path / "exam", "series_per_frame")
    start = min(pydicom.dcmread(p).AcquisitionTime for p in _files(d))
    to_midnight = 86400 - 10 - (datetime.strptime(start, "%H%M%S.%f") - datetime(1900, 1, 1)).total_seconds()

    def near_midnight(ds):
        ds.AcquisitionTime = ds.ContentTime = ds.SeriesTime = _shift_tm(ds.AcquisitionTime, to_midnight)
        ds.AcquisitionDateTime = ds.AcquisitionDate + ds.AcquisitionTime  # date not rolled over

    _rewrite(_files(d), near_midnight)
    out = convert_dicom_series(d)
    _assert_same(out, twins["series_per_frame"])
    facts = conversion_facts(out)
    assert facts["timing_tag"] == "AcquisitionTime"
    assert "AcquisitionDateTime rejected: its date does not roll over at midnight" in facts["timing_note"]
    assert "ContentTime agrees" in facts["timing_note"]


def test_trigger_time_with_ecg_delay_is_not_the_frame_time(tmp_path, patient, twins):
    """TriggerTime holding the ECG delay (near-constant) beside a consistent ContentTime: ContentTime times the frames."""
    d = _write(patient, tmp_path / "exam", "temporal_position")
    delays = {t: 250 + 7.3 * ((t * 7) % 10) for t in range(1, 11)}  # 250-316 ms, distinct, not tracking time
    _rewrite(_files(d), lambda ds: setattr(ds, "TriggerTime", f"{delays[int(ds.TemporalPositionIdentifier)]:.1f}"))
    out = convert_dicom_series(d)
    _assert_same(out, twins["temporal_position"])
    facts = conversion_facts(out)
    assert facts["timing_tag"] == "ContentTime"
    assert "TriggerTime rejected" in facts["timing_note"] and "ECG trigger delay" in facts["timing_note"]
    assert "AcquisitionTime not used: equal for all frames" in facts["timing_note"]


def test_duplicate_time_reason_has_no_header_date(tmp_path, patient):
    d = _write(patient, tmp_path / "exam", "series_per_frame")
    frame2 = pydicom.dcmread(_files(d / "SE002")[0]).AcquisitionTime

    def datetime_only(ds):
        if ds.SeriesNumber == 103:
            ds.AcquisitionTime = frame2
        ds.AcquisitionDateTime = ds.AcquisitionDate + ds.AcquisitionTime
        del ds.ContentTime, ds.SeriesTime

    _rewrite(_files(d), datetime_only)
    msg = _error(d)
    date = pydicom.dcmread(_files(d)[0]).AcquisitionDate
    assert "duplicate frame times" in msg and "<dicom_dir>/SE002/" in msg and "<dicom_dir>/SE003/" in msg
    assert date not in msg and frame2[:6] not in msg


# --- no PHI in what conversion writes ------------------------------------------------------------


def test_outputs_hold_no_phi(tmp_path, patient):
    d = _write(patient, tmp_path / "exam", "series_per_frame")
    _clone_series(_files(d / "SE001"), d / "CASC", lambda ds: setattr(ds, "SeriesDescription", "Calcium score"))
    out = convert_dicom_series(d)
    write_converted(out, tmp_path / "out" / "series.nii.gz", tmp_path / "out" / "frames.json")
    text = (tmp_path / "out" / "frames.json").read_text() + json.dumps(conversion_facts(out))
    ds = pydicom.dcmread(_files(d)[0])
    secrets = [str(ds.PatientName), ds.PatientID, ds.PatientBirthDate, ds.AccessionNumber, ds.StudyDate,
               ds.AcquisitionTime[:6], str(tmp_path)] + [getattr(ds, kw) for kw in UID_KEYWORDS]
    for secret in secrets:
        assert secret and secret not in text, secret
    assert "series 101 'Calcium score'" in out.meta["series_ignored"][0]
