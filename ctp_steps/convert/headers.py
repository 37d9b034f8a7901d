"""Header pass: every file under a patient folder → 2D CT images with what conversion needs.

One `Image` is one slice: a single-frame CT Image Storage file, or one frame of
an Enhanced (multi-frame) CT file whose position, orientation, rescale and
times come from its functional groups. Files without the Part-10 preamble are
read with pydicom's forcing option and kept when the dataset is otherwise a
valid CT image. Files that are not images of the dynamic study (DICOMDIR, dose
reports without pixels, localizers, derived series, other SOP classes) are set
aside with a reason, and exact duplicate instances (same SOPInstanceUID, same
header facts and pixel bytes) are dropped and counted, never taken as a second
slice. Pixel data stays deferred: it is loaded only for the slices kept.

Reasons name files relative to the patient folder as `<dicom_dir>/...`, never
by absolute path (real archive paths often hold names or accession numbers).
"""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import (
    UID,
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    LegacyConvertedEnhancedCTImageStorage,
    MediaStorageDirectoryStorage,
)

from ctp_steps.reasons import one_line
from ctp_steps.types import PatientInputError

PLACEHOLDER = "<dicom_dir>"
CT_SOP_CLASSES = frozenset({CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage})
MULTI_FRAME_SOP_CLASSES = frozenset({EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage})
# ImageType values (any position) that mark an image made from other images, not acquired.
DERIVED_MARKERS = frozenset(
    {"DERIVED", "SECONDARY", "AVERAGE", "MIP", "MINIP", "MNIP", "MPR", "REFORMATTED", "CURVED",
     "PROJECTION IMAGE", "SUBTRACTION", "MAXIMUM", "MINIMUM", "SLAB", "THICK"}
)
# Tags that may separate the frames, tried in this order; the first complete split wins.
GROUPING_TAGS = (
    "TemporalPositionIdentifier",
    "TemporalPositionIndex",
    "SeriesInstanceUID",
    "AcquisitionNumber",
    "TriggerTime",
    "ContentTime",
    "AcquisitionTime",
    "AcquisitionDateTime",
    "FrameAcquisitionDateTime",
)
# Header values kept per slice: frame grouping and frame timing read them by keyword.
VALUE_TAGS = (*GROUPING_TAGS, "SeriesTime")
_DEFER_BYTES = 4096  # values larger than this (the pixel data) are read only on access
_MAX_TEXT = 64  # longest series description echoed in a record


@dataclass(frozen=True, eq=False)
class Image:
    """One 2D slice (a file, or one frame of a multi-frame file); pixel data stays deferred."""

    path: Path
    frame: int | None  # index in a multi-frame file, None for a single-frame file
    dataset: Dataset
    rows: int
    cols: int
    pixel_spacing: tuple[float, float]  # DICOM order: (row spacing = y, column spacing = x)
    orientation: tuple[float, ...]  # row cosine (3), column cosine (3)
    position: tuple[float, float, float]
    slope: float
    intercept: float
    tags: dict[str, str | None]  # raw values of VALUE_TAGS (per-frame values for multi-frame files)
    series: "SeriesInfo"


@dataclass(frozen=True)
class SeriesInfo:
    """What tells series apart in an exam folder; no UIDs leave this module except as keys."""

    key: str | None  # SeriesInstanceUID (None: missing)
    number: str | None
    description: str
    study: str | None
    frame_of_reference: str | None
    protocol: tuple  # acquisition protocol facts that a series-per-frame perfusion shares across frames

    def label(self) -> str:
        """`series 3 'Dynamic perfusion'`: how records and reasons name a series (no UIDs, no dates)."""
        number = self.number if self.number is not None else "?"
        return f"series {number} '{self.description}'" if self.description else f"series {number}"


@dataclass
class Ignored:
    """Images set aside from one series for one reason (named in the record, never used as frames)."""

    series: SeriesInfo
    reason: str
    example: str  # `<dicom_dir>/...` of one of its files
    n_images: int = 0


@dataclass
class HeaderScan:
    """Everything the header pass found under one patient folder."""

    images: list[Image]
    n_files: int
    skipped: Counter  # files that are not images of any series, by reason
    ignored: dict[tuple, Ignored] = field(default_factory=dict)  # (series key, reason) → images set aside
    duplicates: int = 0  # exact duplicate instances dropped
    uid_conflicts: int = 0  # different images sharing one SOPInstanceUID (both kept)
    forced: int = 0  # files read without the Part-10 preamble/meta
    non_ct_example: str | None = None  # first image file of another modality, for the reason if nothing else is left
    non_ct_modality: str | None = None
    sop_classes: Counter = field(default_factory=Counter)


def where(path: Path, dicom_dir: Path) -> str:
    """`<dicom_dir>/SE001/IM0001.dcm`: a file named without the absolute path (which can hold PHI)."""
    try:
        rel = Path(path).relative_to(dicom_dir)
    except ValueError:
        rel = Path(Path(path).name)
    text = rel.as_posix()
    return PLACEHOLDER if text in ("", ".") else f"{PLACEHOLDER}/{text}"


def image_where(image: Image, dicom_dir: Path) -> str:
    """A slice named by its file and, for multi-frame files, its frame number (1-based)."""
    name = where(image.path, dicom_dir)
    return name if image.frame is None else f"{name} frame {image.frame + 1}"


def scan_headers(dicom_dir: Path) -> HeaderScan:
    """Read every file's header once and sort it: kept slice, set-aside series image or skipped file."""
    files = _files_under(dicom_dir)
    scan = HeaderScan(images=[], n_files=len(files), skipped=Counter())
    for path in files:
        ds = _read_dataset(path, scan)
        if ds is not None:
            _sort_dataset(path, ds, dicom_dir, scan)
    scan.images = _drop_duplicates(scan, dicom_dir)
    return scan


def _files_under(root: Path) -> list[Path]:
    """Every file below root, through linked folders too (cohorts are often link farms), each folder once."""
    seen: set[str] = set()
    files = []
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders.clear()
            continue
        seen.add(real)
        files.extend(Path(folder) / name for name in names)
    return sorted(p for p in files if p.is_file())


def _read_dataset(path: Path, scan: HeaderScan) -> Dataset | None:
    """A Part-10 file, or a bare dataset that is otherwise a valid image (forced read); None = not DICOM."""
    try:
        return pydicom.dcmread(path, defer_size=_DEFER_BYTES, force=False)
    except InvalidDicomError:
        pass
    except (OSError, ValueError, TypeError, KeyError, EOFError, OverflowError, AttributeError):
        scan.skipped["not DICOM"] += 1
        return None
    try:
        with warnings.catch_warnings():  # a forced read of a text file warns about its guessed encoding
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, defer_size=_DEFER_BYTES, force=True)
        # A forced read of a non-DICOM file gives garbage tags; demand the elements of an image.
        valid = all(kw in ds for kw in ("SOPClassUID", "Rows", "Columns", "PixelData"))
    except Exception:  # any parse failure of a forced read means "not DICOM": counted, not hidden
        valid = False
    if not valid:
        scan.skipped["not DICOM"] += 1
        return None
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    scan.forced += 1
    return ds


def _sort_dataset(path: Path, ds: Dataset, dicom_dir: Path, scan: HeaderScan) -> None:
    """Keep a CT image's slices; set aside or count everything else, with the reason."""
    sop_class = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
    if ds.file_meta.get("MediaStorageSOPClassUID") == MediaStorageDirectoryStorage or "DirectoryRecordSequence" in ds:
        scan.skipped["DICOMDIR"] += 1
        return
    modality = str(ds.get("Modality", "")).strip() or "missing"
    if "PixelData" not in ds:
        if sop_class in CT_SOP_CLASSES:
            raise PatientInputError(
                f"{where(path, dicom_dir)}: CT image without pixel data (truncated or corrupt file)"
            )
        scan.skipped["DICOM without pixel data"] += 1
        return
    series = _series_info(ds)
    if sop_class is not None and sop_class not in CT_SOP_CLASSES:
        name = UID(str(sop_class)).name
        _set_aside(scan, series, f"not a CT image ({name})", where(path, dicom_dir), 1)
        if modality != "CT" and scan.non_ct_example is None:
            scan.non_ct_example, scan.non_ct_modality = where(path, dicom_dir), modality
        return
    if modality != "CT":
        raise PatientInputError(f"{where(path, dicom_dir)}: modality {modality}, expected CT")
    image_type = strings(ds.get("ImageType"))
    n_frames = int(_floats(ds, "NumberOfFrames", 1, path, dicom_dir, default=1.0)[0])
    if "LOCALIZER" in image_type:
        scan.skipped["localizer"] += 1
        _set_aside(scan, series, "localizer", where(path, dicom_dir), n_frames)
        return
    derived = derived_markers(image_type)
    if derived:
        reason = f"derived image (ImageType {'/'.join(image_type)})"
        _set_aside(scan, series, reason, where(path, dicom_dir), n_frames)
        return
    if sop_class in MULTI_FRAME_SOP_CLASSES or n_frames > 1 or "PerFrameFunctionalGroupsSequence" in ds:
        images = _frames_of(path, ds, n_frames, series, dicom_dir)
    elif "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
        scan.skipped["image without slice position"] += 1
        return
    else:
        images = [_single_frame(path, ds, series, dicom_dir)]
    scan.sop_classes[UID(str(sop_class or CTImageStorage)).name] += 1
    scan.images.extend(images)


def derived_markers(image_type: list[str]) -> list[str]:
    """The ImageType values saying an image was computed from others (AVERAGE, MIP, MPR, DERIVED, ...)."""
    return [v for v in image_type if v in DERIVED_MARKERS]


def _set_aside(scan: HeaderScan, series: SeriesInfo, reason: str, example: str, n: int) -> None:
    entry = scan.ignored.setdefault((series.key, series.number, reason), Ignored(series, reason, example))
    entry.n_images += n


def _series_info(ds: Dataset) -> SeriesInfo:
    """The facts that tell series apart; descriptions lose digits for the protocol (frame numbers vary)."""
    description = clean_text(ds.get("SeriesDescription"))
    number = _raw(ds.get("SeriesNumber"))
    thickness = _optional_float(ds.get("SliceThickness"))
    kvp = _optional_float(ds.get("KVP"))
    if thickness is None or kvp is None:  # enhanced CT keeps them in functional groups
        shared = _item(ds, "SharedFunctionalGroupsSequence")
        if shared is not None:
            measures = _item(shared, "PixelMeasuresSequence")
            xray = _item(shared, "CTXRayDetailsSequence")
            thickness = thickness if measures is None else _optional_float(measures.get("SliceThickness"))
            kvp = kvp if xray is None else _optional_float(xray.get("KVP"))
    protocol = (
        re.sub(r"[\d.,:;=+\-_/ ]+", " ", description).strip().upper(),
        clean_text(ds.get("ProtocolName")).upper(),
        "/".join(strings(ds.get("ConvolutionKernel"))),
        None if thickness is None else round(thickness, 2),
        None if kvp is None else round(kvp),
    )
    return SeriesInfo(
        key=_raw(ds.get("SeriesInstanceUID")),
        number=None if number is None else str(int(float(number))) if _is_number(number) else clean_text(number),
        description=description,
        study=_raw(ds.get("StudyInstanceUID")),
        frame_of_reference=_raw(ds.get("FrameOfReferenceUID")),
        protocol=protocol,
    )


def _single_frame(path: Path, ds: Dataset, series: SeriesInfo, dicom_dir: Path) -> Image:
    """A classic one-slice-per-file CT image."""
    tags = {kw: _raw(ds.get(kw)) for kw in VALUE_TAGS}
    return _image(
        path, None, ds, series, dicom_dir, tags,
        orientation=_floats(ds, "ImageOrientationPatient", 6, path, dicom_dir),
        position=_floats(ds, "ImagePositionPatient", 3, path, dicom_dir),
        pixel_spacing=_floats(ds, "PixelSpacing", 2, path, dicom_dir),
        slope=_floats(ds, "RescaleSlope", 1, path, dicom_dir, default=1.0)[0],
        intercept=_floats(ds, "RescaleIntercept", 1, path, dicom_dir, default=0.0)[0],
    )


def _frames_of(path: Path, ds: Dataset, n_frames: int, series: SeriesInfo, dicom_dir: Path) -> list[Image]:
    """The frames of an Enhanced CT file, each placed and timed by its functional groups.

    Per-frame groups override shared ones: PlanePositionSequence (position),
    PlaneOrientationSequence (orientation), PixelMeasuresSequence (spacing),
    PixelValueTransformationSequence (rescale), FrameContentSequence
    (FrameAcquisitionDateTime, TemporalPositionIndex).
    """
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    name = where(path, dicom_dir)
    if per_frame is None or len(per_frame) != n_frames:
        found = 0 if per_frame is None else len(per_frame)
        raise PatientInputError(
            f"{name}: multi-frame image with {n_frames} frames but {found} per-frame functional groups"
        )
    shared = _item(ds, "SharedFunctionalGroupsSequence") or Dataset()
    file_tags = {kw: _raw(ds.get(kw)) for kw in VALUE_TAGS}
    images = []
    for k, groups in enumerate(per_frame):
        def group(keyword: str) -> Dataset:
            item = _item(groups, keyword) or _item(shared, keyword)
            if item is None:
                raise PatientInputError(f"{name}: frame {k + 1} has no {keyword} (shared or per-frame)")
            return item

        content = _item(groups, "FrameContentSequence") or Dataset()
        tags = dict(file_tags)
        for kw in ("FrameAcquisitionDateTime", "TemporalPositionIndex"):
            tags[kw] = _raw(content.get(kw))
        transform = _item(groups, "PixelValueTransformationSequence") or _item(
            shared, "PixelValueTransformationSequence"
        ) or ds
        images.append(
            _image(
                path, k, ds, series, dicom_dir, tags,
                orientation=_floats(group("PlaneOrientationSequence"), "ImageOrientationPatient", 6, path, dicom_dir),
                position=_floats(group("PlanePositionSequence"), "ImagePositionPatient", 3, path, dicom_dir),
                pixel_spacing=_floats(group("PixelMeasuresSequence"), "PixelSpacing", 2, path, dicom_dir),
                slope=_floats(transform, "RescaleSlope", 1, path, dicom_dir, default=1.0)[0],
                intercept=_floats(transform, "RescaleIntercept", 1, path, dicom_dir, default=0.0)[0],
            )
        )
    return images


def _image(
    path: Path, frame: int | None, ds: Dataset, series: SeriesInfo, dicom_dir: Path, tags: dict,
    *, orientation: tuple, position: tuple, pixel_spacing: tuple, slope: float, intercept: float,
) -> Image:
    """Validate the geometry of one slice and keep it."""
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    if max(abs(row @ row - 1), abs(col @ col - 1), abs(row @ col)) > 1e-3:
        raise PatientInputError(
            f"{where(path, dicom_dir)}: malformed ImageOrientationPatient {orientation}: not two orthogonal unit vectors"
        )
    if min(pixel_spacing) <= 0:
        raise PatientInputError(f"{where(path, dicom_dir)}: malformed PixelSpacing {pixel_spacing}: not positive")
    return Image(
        path=path, frame=frame, dataset=ds,
        rows=int(_floats(ds, "Rows", 1, path, dicom_dir)[0]),
        cols=int(_floats(ds, "Columns", 1, path, dicom_dir)[0]),
        pixel_spacing=pixel_spacing, orientation=orientation, position=position,
        slope=slope, intercept=intercept, tags=tags, series=series,
    )


def _drop_duplicates(scan: HeaderScan, dicom_dir: Path) -> list[Image]:
    """Drop exact repeats of an instance (same SOPInstanceUID, same facts, same pixel bytes); count them.

    Exports sometimes hold an image twice (two copies of a folder, a file with
    and without Part-10 meta). Different images that share a UID (a broken
    writer) are both kept: their positions and times decide, as for any image.
    """
    seen: dict[tuple, Image] = {}
    kept = []
    for image in scan.images:
        uid = _raw(image.dataset.get("SOPInstanceUID"))
        if uid is None:
            kept.append(image)
            continue
        key = (uid, image.frame)
        first = seen.get(key)
        if first is None:
            seen[key] = image
            kept.append(image)
        elif _same_content(first, image):
            scan.duplicates += 1
        else:
            scan.uid_conflicts += 1
            kept.append(image)
    return kept


def _same_content(a: Image, b: Image) -> bool:
    facts = ("rows", "cols", "pixel_spacing", "orientation", "position", "slope", "intercept", "tags")
    if any(getattr(a, f) != getattr(b, f) for f in facts):
        return False
    return bytes(a.dataset.PixelData) == bytes(b.dataset.PixelData)


# --- small readers -------------------------------------------------------------------------


def _item(ds: Dataset, keyword: str) -> Dataset | None:
    """The first item of a sequence element, or None."""
    seq = ds.get(keyword)
    return seq[0] if seq else None


def _floats(
    ds: Dataset, keyword: str, n: int, path: Path, dicom_dir: Path, default: float | None = None
) -> tuple[float, ...]:
    """n numbers from a header element; a missing or malformed required element names the file."""
    value = ds.get(keyword)
    if value is None or value == "":
        if default is not None:
            return (default,)
        raise PatientInputError(f"{where(path, dicom_dir)}: missing {keyword}")
    items = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    try:
        numbers = tuple(float(v) for v in items)
    except (TypeError, ValueError) as exc:
        raise PatientInputError(f"{where(path, dicom_dir)}: malformed {keyword} {one_line(repr(value), 80)}") from exc
    if len(numbers) != n or not all(np.isfinite(numbers)):
        raise PatientInputError(
            f"{where(path, dicom_dir)}: malformed {keyword} {one_line(repr(value), 80)}, expected {n} numbers"
        )
    return numbers


def _raw(value: object) -> str | None:
    text = "" if value is None else str(value).strip()
    return text or None


def _is_number(text: str) -> bool:
    try:
        return float(text).is_integer()
    except ValueError:
        return False


def clean_text(value: object) -> str:
    """A header text made safe for one line of a record: printable, collapsed, at most _MAX_TEXT characters."""
    text = "" if value is None else "".join(ch if ch.isprintable() else " " for ch in str(value))
    return one_line(text.replace("'", "’"), _MAX_TEXT)


def strings(value: object) -> list[str]:
    """A CS element's values, upper case, whether pydicom gives one string or a MultiValue."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple, MultiValue)) else [value]
    return [str(v).strip().upper() for v in items]


def _optional_float(value: object) -> float | None:
    """A number that only informs (KVP, SliceThickness); malformed = unknown."""
    try:
        number = float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return number if number is not None and np.isfinite(number) else None
