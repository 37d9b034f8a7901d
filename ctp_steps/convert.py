"""DICOM folder of a dynamic CT perfusion scan → (t, z, y, x) HU array, frame geometry and frame times.

Scanners encode the frames of a dynamic series in different ways: one series
per frame (time in AcquisitionTime), one series with TemporalPositionIdentifier
(time in ContentTime, AcquisitionTime = scan start), one series where only
TriggerTime varies. Frames are therefore found generically, never per vendor:
the first tag that splits the slices into stacks holding the same slice
positions defines the frames, and the frame times come from the first time tag
that is constant within frames and distinct between them. Counts and geometry
are checked before any pixel is read, because a converter that silently
interleaves or splits frames (dcm2niix #463, #721) corrupts every later stage.

Every known input problem raises PatientInputError with a message that names
the folder or the file and the problem; it becomes the patient's exclusion
reason. Headers and pixels are each read once: the header pass defers the pixel
element, which is loaded from its file offset only for the slices kept.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import CTImageStorage, MediaStorageDirectoryStorage

from ctp_steps.io import write_json, write_series
from ctp_steps.types import Geometry, PatientInputError

# Tags that may separate the frames, tried in this order; the first complete split wins.
GROUPING_TAGS = (
    "TemporalPositionIdentifier",
    "SeriesInstanceUID",
    "AcquisitionNumber",
    "TriggerTime",
    "ContentTime",
    "AcquisitionTime",
    "AcquisitionDateTime",
)
# Tags that may carry the frame time, most physical first: acquisition before
# reconstruction (ContentTime can be the time an image was reconstructed).
TIME_TAGS = ("AcquisitionDateTime", "AcquisitionTime", "TriggerTime", "ContentTime")
_TM_TAGS = {"AcquisitionTime", "ContentTime"}
_SERIES_TAG = "SeriesInstanceUID"
_TPI_TAG = "TemporalPositionIdentifier"

POSITION_TOL_MM = 0.02  # slices closer than this along the normal are the same position
TIME_TOL_S = 1e-3  # frame times closer than this are duplicates
SPACING_REL_TOL = 0.01  # allowed deviation of a slice gap from the mean gap
INPLANE_TOL_PX = 0.05  # allowed in-plane shift between slices, in pixels
_DEFER_BYTES = 4096  # values larger than this (the pixel data) are read only on access
_DAY_S = 86400.0


@dataclass
class ConvertedSeries:
    """A converted dynamic series; `meta` holds no PHI (no names, IDs, dates or UIDs)."""

    hu: np.ndarray  # float32 (t, z, y, x), Hounsfield units
    geometry: Geometry  # of each 3D frame; z axis = slice normal, origin = first voxel
    frame_times_s: list[float]  # first frame at 0.0, strictly increasing
    meta: dict


@dataclass(frozen=True, eq=False)
class _Slice:
    """What the conversion needs from one slice file; pixel data stays deferred in `dataset`."""

    path: Path
    dataset: pydicom.Dataset
    rows: int
    cols: int
    pixel_spacing: tuple[float, float]  # DICOM order: (row spacing = y, column spacing = x)
    orientation: tuple[float, ...]  # row cosine (3), column cosine (3)
    position: tuple[float, float, float]
    slope: float
    intercept: float
    tags: dict[str, str | None]  # raw values of GROUPING_TAGS and TIME_TAGS


def convert_dicom_series(dicom_dir: Path, min_frames: int = 8) -> ConvertedSeries:
    """Read one patient's dynamic CT folder into HU frames, checking everything that can go wrong."""
    dicom_dir = Path(dicom_dir)
    if not dicom_dir.is_dir():
        raise PatientInputError(f"{dicom_dir}: DICOM folder does not exist")
    slices, skipped, n_files = _read_headers(dicom_dir)
    if not slices:
        raise PatientInputError(
            f"{dicom_dir}: no readable DICOM image files ({n_files} files skipped: {_describe(skipped)})"
        )
    _check_same_geometry(slices, dicom_dir)

    row, col = np.asarray(slices[0].orientation[:3]), np.asarray(slices[0].orientation[3:])
    normal = np.cross(row, col)
    positions = np.asarray([s.position for s in slices])
    along = positions @ (normal / np.linalg.norm(normal))
    labels = _position_labels(along)

    grouping, groups = _choose_grouping(slices, labels, dicom_dir)
    timing_tag, times, spread = _frame_times(slices, groups, dicom_dir)
    order = np.argsort(times, kind="stable")
    frames = [groups[i] for i in order]
    times_s = [float(times[i] - times[order[0]]) for i in order]

    _check_series_per_frame(slices, frames, dicom_dir)
    _check_complete(slices, labels, frames, times_s, dicom_dir)
    if len(frames) < min_frames:
        stack = f" (a single stack of {len(frames[0])} slice(s))" if grouping is None else ""
        raise PatientInputError(
            f"{dicom_dir}: {len(frames)} frame(s){stack}, at least {min_frames} required"
        )
    _check_temporal_order(slices, frames, times_s, timing_tag, dicom_dir)
    _check_inplane_alignment(slices, positions @ row, positions @ col, dicom_dir)

    frames = [sorted(f, key=lambda i: labels[i]) for f in frames]
    first = frames[0]
    if len(first) < 2:
        raise PatientInputError(f"{dicom_dir}: frames hold a single slice, a 3D stack is required")
    slice_spacing = _uniform_spacing(slices, along, first, dicom_dir)

    s0 = slices[first[0]]
    geometry = Geometry(
        origin=tuple(float(v) for v in s0.position),
        spacing=(s0.pixel_spacing[1], s0.pixel_spacing[0], slice_spacing),
        direction=tuple(float(v) for v in np.column_stack([row, col, normal]).ravel()),
    )
    hu = _read_hu(slices, frames)
    used = [slices[i] for f in frames for i in f]
    meta = {
        "n_files": n_files,
        "n_slices": len(first),
        "n_frames": len(frames),
        "kvp": _optional_float(s0.dataset.get("KVP")),
        "manufacturer": str(s0.dataset.get("Manufacturer", "")) or None,
        "timing_tag": timing_tag,
        "grouping": grouping or "single stack",
        "time_spread_within_frame_s": spread,
        "rescale": {
            "slopes": sorted({s.slope for s in used}),
            "intercepts": sorted({s.intercept for s in used}),
        },
        "skipped_files": sum(skipped.values()),
        "skipped": dict(skipped),
    }
    return ConvertedSeries(hu=hu, geometry=geometry, frame_times_s=times_s, meta=meta)


def write_converted(series: ConvertedSeries, series_path: Path, frames_json_path: Path) -> None:
    """Write the 4D NIfTI and frames.json; only geometry, timing and scanner facts, no PHI."""
    write_series(series_path, series.hu, series.geometry)
    m = series.meta
    write_json(
        frames_json_path,
        {
            "frame_times_s": series.frame_times_s,
            "n_frames": len(series.frame_times_s),
            "shape_tzyx": list(series.hu.shape),
            "spacing_xyz_mm": list(series.geometry.spacing),
            "origin": list(series.geometry.origin),
            "direction": list(series.geometry.direction),
            "kvp": m["kvp"],
            "manufacturer": m["manufacturer"],
            "timing_tag": m["timing_tag"],
            "grouping": m["grouping"],
            "time_span_s": series.frame_times_s[-1] - series.frame_times_s[0],
            "n_files": m["n_files"],
            "skipped_files": m["skipped_files"],
            "rescale": m["rescale"],
        },
    )


# --- header pass ---------------------------------------------------------------------------


def _read_headers(dicom_dir: Path) -> tuple[list[_Slice], Counter, int]:
    """All slice files under dicom_dir (any name, any depth); other files are counted by reason."""
    files = _files_under(dicom_dir)
    skipped: Counter = Counter()
    slices = []
    for path in files:
        try:
            ds = pydicom.dcmread(path, defer_size=_DEFER_BYTES, force=False)
        except InvalidDicomError:
            skipped["not DICOM"] += 1
            continue
        sop_class = ds.file_meta.get("MediaStorageSOPClassUID")
        if sop_class == MediaStorageDirectoryStorage:
            skipped["DICOMDIR"] += 1
            continue
        if "PixelData" not in ds:
            if sop_class == CTImageStorage:
                raise PatientInputError(f"{path}: CT image without pixel data (truncated or corrupt file)")
            skipped["DICOM without pixel data"] += 1
            continue
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            skipped["image without slice position"] += 1
            continue
        modality = str(ds.get("Modality", "")).strip() or "missing"
        if modality != "CT":
            raise PatientInputError(f"{path}: modality {modality}, expected CT")
        if "LOCALIZER" in _strings(ds.get("ImageType")):
            skipped["localizer"] += 1
            continue
        n_frames = int(_floats(ds, "NumberOfFrames", 1, path, default=1.0)[0])
        if n_frames > 1:
            raise PatientInputError(
                f"{path}: multi-frame image with {n_frames} frames; one slice per file is expected"
            )
        slices.append(_slice_of(path, ds))
    return slices, skipped, len(files)


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


def _slice_of(path: Path, ds: pydicom.Dataset) -> _Slice:
    tags = {kw: _raw(ds.get(kw)) for kw in dict.fromkeys(GROUPING_TAGS + TIME_TAGS)}
    orientation = _floats(ds, "ImageOrientationPatient", 6, path)
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    if max(abs(row @ row - 1), abs(col @ col - 1), abs(row @ col)) > 1e-3:
        raise PatientInputError(
            f"{path}: malformed ImageOrientationPatient {orientation}: not two orthogonal unit vectors"
        )
    pixel_spacing = _floats(ds, "PixelSpacing", 2, path)
    if min(pixel_spacing) <= 0:
        raise PatientInputError(f"{path}: malformed PixelSpacing {pixel_spacing}: not positive")
    return _Slice(
        path=path,
        dataset=ds,
        rows=int(_floats(ds, "Rows", 1, path)[0]),
        cols=int(_floats(ds, "Columns", 1, path)[0]),
        pixel_spacing=pixel_spacing,
        orientation=orientation,
        position=_floats(ds, "ImagePositionPatient", 3, path),
        slope=_floats(ds, "RescaleSlope", 1, path, default=1.0)[0],
        intercept=_floats(ds, "RescaleIntercept", 1, path, default=0.0)[0],
        tags=tags,
    )


def _floats(
    ds: pydicom.Dataset, keyword: str, n: int, path: Path, default: float | None = None
) -> tuple[float, ...]:
    """n numbers from a header element; a missing or malformed required element names the file."""
    value = ds.get(keyword)
    if value is None or value == "":
        if default is not None:
            return (default,)
        raise PatientInputError(f"{path}: missing {keyword}")
    items = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    try:
        numbers = tuple(float(v) for v in items)
    except (TypeError, ValueError) as exc:
        raise PatientInputError(f"{path}: malformed {keyword} {value!r}") from exc
    if len(numbers) != n or not all(np.isfinite(numbers)):
        raise PatientInputError(f"{path}: malformed {keyword} {value!r}, expected {n} numbers")
    return numbers


def _raw(value: object) -> str | None:
    text = "" if value is None else str(value).strip()
    return text or None


def _strings(value: object) -> list[str]:
    """A CS element's values, upper case, whether pydicom gives one string or a MultiValue."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple, MultiValue)) else [value]
    return [str(v).strip().upper() for v in items]


def _optional_float(value: object) -> float | None:
    """A number that only informs (KVP) or cross-checks (TemporalPositionIdentifier); malformed = unknown."""
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _describe(skipped: Counter) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())) or "none"


# --- structure: geometry, positions, frames --------------------------------------------------


def _signature(s: _Slice) -> dict[str, tuple]:
    """What must be equal for slices to share one voxel grid, named for the error message."""
    return {
        "image size": (s.rows, s.cols),
        "pixel spacing": tuple(round(v, 4) for v in s.pixel_spacing),
        "orientation": tuple(round(v, 4) for v in s.orientation),
    }


def _check_same_geometry(slices: list[_Slice], dicom_dir: Path) -> None:
    """All slices must share size, pixel spacing and orientation before positions are compared.

    When the differing slices line up with frames of some tag the frames are
    inconsistent; otherwise the folder mixes stacks that cannot be told apart.
    """
    sigs = [tuple(_signature(s).values()) for s in slices]
    if len(set(sigs)) == 1:
        return
    a = 0
    b = next(i for i, sig in enumerate(sigs) if sig != sigs[a])
    sa, sb = _signature(slices[a]), _signature(slices[b])
    attr = next(k for k in sa if sa[k] != sb[k])
    names = f"{sa[attr]} in {_rel(slices[a], dicom_dir)}, {sb[attr]} in {_rel(slices[b], dicom_dir)}"
    for tag in GROUPING_TAGS:
        groups = _groups_by(slices, tag)
        if (
            groups is not None
            and len(groups) >= 2
            and len({len(g) for g in groups}) == 1
            and all(len({sigs[i] for i in g}) == 1 for g in groups)
        ):
            raise PatientInputError(
                f"{dicom_dir}: inconsistent geometry between frames ({tag}): {attr} {names}"
            )
    raise PatientInputError(
        f"{dicom_dir}: mixed series that cannot be separated: stacks with different {attr} ({names})"
    )


def _position_labels(along: np.ndarray) -> np.ndarray:
    """Slice-position index of each file: positions within POSITION_TOL_MM of a neighbour are one."""
    order = np.argsort(along, kind="stable")
    new_position = np.diff(along[order]) > POSITION_TOL_MM
    labels = np.empty(len(along), dtype=int)
    labels[order] = np.concatenate([[0], np.cumsum(new_position)])
    return labels


def _groups_by(slices: list[_Slice], tag: str) -> list[list[int]] | None:
    """Indices of slices sharing a value of `tag`, in first-seen order; None if any slice lacks it."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(slices):
        value = s.tags[tag]
        if value is None:
            return None
        groups.setdefault(value, []).append(i)
    return list(groups.values())


def _choose_grouping(
    slices: list[_Slice], labels: np.ndarray, dicom_dir: Path
) -> tuple[str | None, list[list[int]]]:
    """The tag whose values split the files into frames, and the frames (slice indices).

    No repeated slice position → one stack, one frame. Otherwise the first tag
    giving ≥ 2 groups without repeated positions and with equal position sets.
    Failing that, the coarsest split without repeats is kept if most of its
    groups agree on one position set, so the odd frames can be named later.
    """
    if len(set(labels.tolist())) == len(labels):
        return None, [list(range(len(slices)))]
    partial = []
    for rank, tag in enumerate(GROUPING_TAGS):
        groups = _groups_by(slices, tag)
        if groups is None or len(groups) < 2:
            continue
        sets = [frozenset(labels[g].tolist()) for g in groups]
        if any(len(s) != len(g) for s, g in zip(sets, groups)):
            continue
        if len(set(sets)) == 1:
            return tag, groups
        partial.append((len(groups), rank, tag, groups, sets))
    if partial:
        _, _, tag, groups, sets = min(partial, key=lambda p: p[:2])
        if Counter(sets).most_common(1)[0][1] * 2 > len(groups):
            return tag, groups
    counts = Counter(labels.tolist())
    dup = next(lab for lab, n in counts.items() if n > 1)
    a, b = [i for i in range(len(slices)) if labels[i] == dup][:2]
    raise PatientInputError(
        f"{dicom_dir}: mixed series that cannot be separated: {_rel(slices[a], dicom_dir)} and "
        f"{_rel(slices[b], dicom_dir)} share a slice position and no tag "
        f"({', '.join(GROUPING_TAGS)}) splits the files into stacks of distinct positions"
    )


# --- frame times -------------------------------------------------------------------------------


def _frame_times(
    slices: list[_Slice], groups: list[list[int]], dicom_dir: Path
) -> tuple[str | None, np.ndarray, float]:
    """(tag, time of each group in s, largest spread within a group) from the first usable tag.

    A tag is usable when its spread within frames is small against the gaps
    between frames; the frame time is the middle of its range within the frame.
    A tag equal for all frames (e.g. AcquisitionTime = scan start) is passed over.
    """
    if len(groups) == 1:
        return None, np.zeros(1), 0.0
    duplicate = None
    for tag in TIME_TAGS:
        seconds = _tag_seconds(slices, tag)
        if seconds is None:
            continue
        lo = np.asarray([seconds[g].min() for g in groups])
        hi = np.asarray([seconds[g].max() for g in groups])
        mid, spread = (lo + hi) / 2, float((hi - lo).max())
        if np.ptp(mid) == 0:
            continue
        min_gap = float(np.diff(np.sort(mid)).min())
        if min_gap > max(2 * spread, TIME_TOL_S):
            return tag, mid, spread
        if duplicate is None and spread <= TIME_TOL_S and min_gap <= TIME_TOL_S:
            duplicate = (tag, mid)
    if duplicate is not None:
        tag, mid = duplicate
        order = np.argsort(mid, kind="stable")
        k = int(np.argmin(np.diff(mid[order])))
        ga, gb = groups[order[k]], groups[order[k + 1]]
        raise PatientInputError(
            f"{dicom_dir}: duplicate frame times: the frames of {_rel(slices[ga[0]], dicom_dir)} and "
            f"{_rel(slices[gb[0]], dicom_dir)} both have {tag} {slices[ga[0]].tags[tag]}"
        )
    raise PatientInputError(
        f"{dicom_dir}: cannot time the {len(groups)} frames: none of {', '.join(TIME_TAGS)} is "
        "constant within frames and distinct between frames"
    )


def _tag_seconds(slices: list[_Slice], tag: str) -> np.ndarray | None:
    """Seconds of `tag` for every slice (TM unwrapped across midnight); None if any is missing or malformed."""
    parse = {"AcquisitionDateTime": _parse_dt, "TriggerTime": _parse_ms}.get(tag, _parse_tm)
    values = [parse(s.tags[tag]) if s.tags[tag] is not None else None for s in slices]
    if any(v is None for v in values):
        return None
    seconds = np.asarray(values, dtype=float)
    return _unwrap_midnight(seconds) if tag in _TM_TAGS else seconds


def _parse_tm(text: str) -> float | None:
    """DICOM TM (HHMMSS.FFFFFF, also HHMM, HH and the old HH:MM:SS) → seconds after midnight."""
    m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d+)?", text.replace(":", ""))
    if m is None:
        return None
    hh, mm, ss = int(m[1]), int(m[2] or 0), int(m[3] or 0)
    if hh > 23 or mm > 59 or ss > 60:
        return None
    return hh * 3600 + mm * 60 + ss + float(m[4] or 0)


def _parse_dt(text: str) -> float | None:
    """DICOM DT (YYYYMMDDHHMMSS.FFFFFF&ZZXX, trailing parts optional) → seconds since the epoch."""
    m = re.fullmatch(
        r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d+)?([+-]\d{4})?", text
    )
    if m is None:
        return None
    offset = 0 if m[8] is None else int(m[8][0] + "1") * (int(m[8][1:3]) * 60 + int(m[8][3:5]))
    try:
        when = datetime(
            int(m[1]), int(m[2] or 1), int(m[3] or 1), int(m[4] or 0), int(m[5] or 0),
            int(m[6] or 0), tzinfo=timezone(timedelta(minutes=offset)),
        )
    except ValueError:
        return None
    return when.timestamp() + float(m[7] or 0)


def _parse_ms(text: str) -> float | None:
    """TriggerTime (DS, milliseconds) → seconds."""
    try:
        ms = float(text)
    except ValueError:
        return None
    return ms / 1000 if np.isfinite(ms) else None


def _unwrap_midnight(seconds: np.ndarray) -> np.ndarray:
    """Times of day → one increasing clock: the largest gap on the 24 h circle is when nothing was scanned."""
    u = np.unique(seconds)
    gaps = np.diff(np.append(u, u[0] + _DAY_S))
    k = int(np.argmax(gaps))
    if k == len(u) - 1:
        return seconds
    return np.where(seconds <= u[k], seconds + _DAY_S, seconds)


# --- checks on the frames (time-ordered) -----------------------------------------------------


def _check_series_per_frame(slices: list[_Slice], frames: list[list[int]], dicom_dir: Path) -> None:
    """One series for all frames or one series per frame; anything else mixes acquisitions (rest + stress)."""
    series = [{slices[i].tags[_SERIES_TAG] for i in f} for f in frames]
    all_series = set().union(*series)
    if len(all_series) == 1 or (all(len(s) == 1 for s in series) and len(all_series) == len(frames)):
        return
    mixed = next((f for f, s in zip(frames, series) if len(s) > 1), None)
    if mixed is not None:
        a = slices[mixed[0]]
        b = next(slices[i] for i in mixed if slices[i].tags[_SERIES_TAG] != a.tags[_SERIES_TAG])
        detail = "one frame holds files of two series"
    else:
        uids = [slices[f[0]].tags[_SERIES_TAG] for f in frames]
        repeated = next(u for u, n in Counter(uids).items() if n > 1)
        ka, kb = [k for k, u in enumerate(uids) if u == repeated][:2]
        a, b = slices[frames[ka][0]], slices[frames[kb][0]]
        detail = "one series holds several frames besides other series"
    raise PatientInputError(
        f"{dicom_dir}: mixed series that cannot be separated: {len(all_series)} series for "
        f"{len(frames)} frames; {detail} ({_rel(a, dicom_dir)}, {_rel(b, dicom_dir)})"
    )


def _check_complete(
    slices: list[_Slice],
    labels: np.ndarray,
    frames: list[list[int]],
    times_s: list[float],
    dicom_dir: Path,
) -> None:
    """Every frame holds the same slice positions as the most common frame."""
    sets = [frozenset(labels[f].tolist()) for f in frames]
    reference = Counter(sets).most_common(1)[0][0]
    for k, (s, f) in enumerate(zip(sets, frames)):
        if s == reference:
            continue
        example = _rel(slices[f[0]], dicom_dir)
        where = f"frame {k + 1} of {len(frames)} (t = {times_s[k]:.2f} s, e.g. {example})"
        extra = len(s - reference)
        if extra == 0:
            raise PatientInputError(
                f"{dicom_dir}: incomplete {where}: {len(s)} of {len(reference)} slice positions present"
            )
        raise PatientInputError(
            f"{dicom_dir}: inconsistent slice positions between frames: {where} has {extra} "
            f"position(s) that the other frames lack ({len(s & reference)} of {len(reference)} shared)"
        )


def _check_temporal_order(
    slices: list[_Slice], frames: list[list[int]], times_s: list[float], timing_tag: str | None,
    dicom_dir: Path,
) -> None:
    """Where frames carry TemporalPositionIdentifier, its order must agree with the time order."""
    per_frame = [{_optional_float(slices[i].tags[_TPI_TAG]) for i in f} for f in frames]
    if any(len(v) != 1 or None in v for v in per_frame):
        return
    tpi = [int(next(iter(v))) for v in per_frame]
    for k in range(len(tpi) - 1):
        if tpi[k + 1] < tpi[k]:
            raise PatientInputError(
                f"{dicom_dir}: non-monotonic frame times: {_TPI_TAG} {tpi[k]} is at {times_s[k]:.2f} s, "
                f"before {_TPI_TAG} {tpi[k + 1]} at {times_s[k + 1]:.2f} s by {timing_tag} "
                f"(e.g. {_rel(slices[frames[k][0]], dicom_dir)})"
            )


def _check_inplane_alignment(
    slices: list[_Slice], along_row: np.ndarray, along_col: np.ndarray, dicom_dir: Path
) -> None:
    """Slices must stack straight along the normal (no gantry tilt, no shifted field of view)."""
    tol = INPLANE_TOL_PX * min(slices[0].pixel_spacing)
    for offsets in (along_row, along_col):
        if np.ptp(offsets) > tol:
            a, b = int(np.argmin(offsets)), int(np.argmax(offsets))
            raise PatientInputError(
                f"{dicom_dir}: inconsistent geometry: slices are not stacked along the slice normal "
                f"(in-plane shift {np.ptp(offsets):.2f} mm between {_rel(slices[a], dicom_dir)} and "
                f"{_rel(slices[b], dicom_dir)}; gantry tilt or shifted field of view)"
            )


def _uniform_spacing(slices: list[_Slice], along: np.ndarray, frame: list[int], dicom_dir: Path) -> float:
    """Mean gap between the sorted slice positions of a frame, which must all be about equal."""
    p = along[frame]
    gaps = np.diff(p)
    mean = float((p[-1] - p[0]) / (len(p) - 1))
    k = int(np.argmax(np.abs(gaps - mean)))
    if abs(gaps[k] - mean) > max(POSITION_TOL_MM, SPACING_REL_TOL * mean):
        raise PatientInputError(
            f"{dicom_dir}: non-uniform slice spacing: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm "
            f"({gaps[k]:.3f} mm between {_rel(slices[frame[k]], dicom_dir)} and "
            f"{_rel(slices[frame[k + 1]], dicom_dir)})"
        )
    return mean


# --- pixels --------------------------------------------------------------------------------


def _read_hu(slices: list[_Slice], frames: list[list[int]]) -> np.ndarray:
    """Decode each kept slice once and rescale it with its own slope and intercept."""
    s0 = slices[frames[0][0]]
    hu = np.empty((len(frames), len(frames[0]), s0.rows, s0.cols), dtype=np.float32)
    for t, frame in enumerate(frames):
        for z, i in enumerate(frame):
            s = slices[i]
            hu[t, z] = _decode(s) * s.slope + s.intercept
    return hu


def _decode(s: _Slice) -> np.ndarray:
    """Stored values of one slice; pydicom handles every transfer syntax and bit layout it has a decoder for."""
    try:
        pixels = s.dataset.pixel_array
    except (ValueError, RuntimeError, NotImplementedError) as exc:
        raise PatientInputError(f"{s.path}: pixel data cannot be decoded: {exc}") from exc
    if pixels.shape != (s.rows, s.cols):
        raise PatientInputError(
            f"{s.path}: pixel data cannot be decoded: shape {pixels.shape}, expected ({s.rows}, {s.cols})"
        )
    return pixels.astype(np.float64)


def _rel(s: _Slice, dicom_dir: Path) -> str:
    """File name relative to the patient folder, enough to find it, short enough for a reason column."""
    return str(s.path.relative_to(dicom_dir))
