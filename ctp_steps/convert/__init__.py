"""DICOM folder of a dynamic CT perfusion scan → (t, z, y, x) HU array, frame geometry and frame times.

Steps, each in its own module:
- `headers`: read every file once (Part-10 or bare datasets, single-frame or
  Enhanced CT multi-frame), set aside what is not an original CT image, drop
  exact duplicate instances;
- `series`: pick the one dynamic perfusion series of an exam folder;
- here: split it into frames and check counts and geometry before any pixel is
  read, because a converter that silently interleaves or splits frames
  (dcm2niix #463, #721) corrupts every later stage;
- `timing`: time the frames from the most trusted consistent time tag;
- `pixels`: decode the kept slices through pydicom's pixel-data plugins;
- `ctp_steps.orientation`: put the voxels in the canonical order (index axes
  along +L, +P, +S) whatever the storage order (feet-first, flipped cosines):
  a lossless permutation with exact world geometry; the stored order is
  recorded (`stored_orientation`).

Scanners encode the frames of a dynamic series in different ways: one series
per frame (time in AcquisitionTime), one series with TemporalPositionIdentifier
(time in ContentTime, AcquisitionTime = scan start), one series where only
TriggerTime varies, Enhanced CT files with TemporalPositionIndex. Frames are
therefore found generically, never per vendor: the first tag that splits the
slices into stacks holding the same slice positions defines the frames.
Positions of one slice may differ between frames by up to POSITION_TOL_MM
(the largest difference is recorded).

Every known input problem raises PatientInputError with a one-line message
naming the file relative to the patient folder (`<dicom_dir>/...`) and the
problem, never an absolute path nor a header date or time; it becomes the
patient's exclusion reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctp_steps.convert.headers import GROUPING_TAGS, PLACEHOLDER, Image, image_where, one_line, scan_headers
from ctp_steps.convert.pixels import read_hu
from ctp_steps.convert.series import POSITION_TOL_MM, along_normal, position_labels, select_dynamic
from ctp_steps.convert.timing import TIME_TAGS, frame_times
from ctp_steps.io import write_json, write_series
from ctp_steps.orientation import stored_orientation, to_canonical
from ctp_steps.types import Geometry, PatientInputError, block_factors

_SERIES_TAG = "SeriesInstanceUID"
_TPI_TAGS = ("TemporalPositionIdentifier", "TemporalPositionIndex")
SPACING_REL_TOL = 0.01  # allowed deviation of a slice gap from the mean gap, relative ...
SPACING_ABS_TOL_MM = 0.02  # ... or absolute, whichever is larger
INPLANE_TOL_PX = 0.05  # allowed in-plane shift between slices, in pixels

__all__ = [
    "POSITION_TOL_MM", "TIME_TAGS", "GROUPING_TAGS", "ConvertedSeries", "convert_dicom_series",
    "conversion_facts", "write_converted",
]


@dataclass
class ConvertedSeries:
    """A converted dynamic series; `meta` holds no PHI (no names, IDs, dates, UIDs or absolute paths)."""

    hu: np.ndarray  # float32 (t, z, y, x), Hounsfield units
    geometry: Geometry  # of each 3D frame; z axis = slice normal, origin = first voxel
    frame_times_s: list[float]  # first frame at 0.0, strictly increasing
    meta: dict


def convert_dicom_series(
    dicom_dir: Path, min_frames: int = 8, working_spacing_mm: float | None = None
) -> ConvertedSeries:
    """Read one patient's dynamic CT folder into HU frames, checking everything that can go wrong.

    `working_spacing_mm`: axes whose native spacing is finer are averaged in whole blocks of voxels
    (`block_factors`); None keeps the native grid.
    """
    dicom_dir = Path(dicom_dir)
    try:
        return _convert(dicom_dir, min_frames, working_spacing_mm)
    except PatientInputError as exc:  # one line, whatever a decoder or a header put in it
        raise PatientInputError(one_line(exc, 1000)) from exc


def _convert(dicom_dir: Path, min_frames: int, working_spacing_mm: float | None = None) -> ConvertedSeries:
    if not dicom_dir.is_dir():
        raise PatientInputError(f"{PLACEHOLDER}: DICOM folder does not exist")
    scan = scan_headers(dicom_dir)
    selection = select_dynamic(scan, dicom_dir)
    slices = selection.images
    _check_same_geometry(slices, dicom_dir)

    o = slices[0].orientation
    row, col = np.asarray(o[:3]), np.asarray(o[3:])
    normal = np.cross(row, col)
    positions = np.asarray([s.position for s in slices])
    along = along_normal(slices)
    labels = position_labels(along)

    grouping, groups = _choose_grouping(slices, labels, dicom_dir)
    timing = frame_times(slices, groups, dicom_dir)
    order = np.argsort(timing.times, kind="stable")
    frames = [groups[i] for i in order]
    times_s = [float(timing.times[i] - timing.times[order[0]]) for i in order]

    _check_series_per_frame(slices, frames, dicom_dir)
    _check_complete(slices, labels, frames, times_s, dicom_dir)
    if len(frames) < min_frames:
        stack = f" (a single stack of {len(frames[0])} slice(s))" if grouping is None else ""
        raise PatientInputError(f"{PLACEHOLDER}: {len(frames)} frame(s){stack}, at least {min_frames} required")
    _check_temporal_order(slices, frames, times_s, timing.tag, dicom_dir)
    _check_inplane_alignment(slices, positions @ row, positions @ col, dicom_dir)

    frames = [sorted(f, key=lambda i: labels[i]) for f in frames]
    first = frames[0]
    if len(first) < 2:
        raise PatientInputError(f"{PLACEHOLDER}: frames hold a single slice, a 3D stack is required")
    slice_spacing = _uniform_spacing(slices, along, first, dicom_dir)
    position_diff = max(float(np.ptp(along[[f[z] for f in frames]])) for z in range(len(first)))

    s0 = slices[first[0]]
    geometry = Geometry(
        origin=tuple(float(v) for v in s0.position),
        spacing=(s0.pixel_spacing[1], s0.pixel_spacing[0], slice_spacing),
        direction=tuple(float(v) for v in np.column_stack([row, col, normal]).ravel()),
    )
    native_shape = (len(first), s0.rows, s0.cols)
    native_spacing = geometry.spacing[::-1]
    block = block_factors(native_spacing, working_spacing_mm)
    hu, syntaxes = read_hu(slices, frames, dicom_dir, block)
    geometry = geometry.blocks(block)
    stored = stored_orientation(geometry)
    hu, geometry, _ = to_canonical(hu, geometry)  # nets and geometric steps see one voxel order
    used = [slices[i] for f in frames for i in f]
    skipped = Counter(scan.skipped)
    if scan.duplicates:
        skipped["duplicate instance"] += scan.duplicates
    if selection.n_ignored_images:
        skipped["image of an ignored series"] += selection.n_ignored_images
    meta = {
        "n_files": scan.n_files,
        "n_slices": len(first),
        "n_frames": len(frames),
        "kvp": _optional_float(s0.dataset.get("KVP")),
        "manufacturer": str(s0.dataset.get("Manufacturer", "")) or None,
        "timing_tag": timing.tag,
        "timing_note": timing.notes,
        "grouping": grouping or "single stack",
        "time_spread_within_frame_s": timing.spread_s,
        "rescale": {
            "slopes": sorted({s.slope for s in used}),
            "intercepts": sorted({s.intercept for s in used}),
        },
        "skipped_files": sum(skipped.values()),
        "skipped": dict(skipped),
        "series_used": selection.used,
        "series_ignored": selection.ignored,
        "duplicates_dropped": scan.duplicates,
        "sop_uid_conflicts": scan.uid_conflicts,
        "files_without_part10": scan.forced,
        "position_max_diff_mm": position_diff,
        "position_tolerance_mm": POSITION_TOL_MM,
        "transfer_syntax": syntaxes,
        "sop_class": sorted(scan.sop_classes),
        "stored_orientation": stored,
        "native_grid": _grid_text(native_shape, native_spacing),
        "working_block": list(block),
    }
    return ConvertedSeries(hu=hu, geometry=geometry, frame_times_s=times_s, meta=meta)


def _grid_text(shape_zyx, spacing_zyx) -> str:
    return "x".join(str(int(n)) for n in shape_zyx) + " @ " + "x".join(f"{v:.3g}" for v in spacing_zyx) + " mm"


def conversion_facts(series: ConvertedSeries) -> dict:
    """Flat, PHI-free facts of the conversion for the cohort table (one value per column)."""
    m = series.meta
    return {
        "series_used": m["series_used"],
        "series_ignored": "; ".join(m["series_ignored"]) or None,
        "timing_tag": m["timing_tag"],
        "timing_note": "; ".join(m["timing_note"]) or None,
        "duplicates_dropped": int(m["duplicates_dropped"]),
        "position_max_diff_mm": float(m["position_max_diff_mm"]),
        "transfer_syntax": ", ".join(m["transfer_syntax"]),
        "files_without_part10": int(m["files_without_part10"]),
        "stored_orientation": m["stored_orientation"],
        "native_grid": m["native_grid"],
        "working_block": "x".join(str(b) for b in m["working_block"]),
    }


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
            "timing_note": m["timing_note"],
            "grouping": m["grouping"],
            "time_span_s": series.frame_times_s[-1] - series.frame_times_s[0],
            "n_files": m["n_files"],
            "skipped_files": m["skipped_files"],
            "skipped": m["skipped"],
            "rescale": m["rescale"],
            "series_used": m["series_used"],
            "series_ignored": m["series_ignored"],
            "duplicates_dropped": m["duplicates_dropped"],
            "sop_uid_conflicts": m["sop_uid_conflicts"],
            "files_without_part10": m["files_without_part10"],
            "position_max_diff_mm": m["position_max_diff_mm"],
            "position_tolerance_mm": m["position_tolerance_mm"],
            "transfer_syntax": m["transfer_syntax"],
            "sop_class": m["sop_class"],
            "native_grid": m["native_grid"],
            "working_block_zyx": m["working_block"],
        },
    )


def _optional_float(value: object) -> float | None:
    """A number that only informs (KVP) or cross-checks (TemporalPositionIdentifier); malformed = unknown."""
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


# --- structure: geometry, positions, frames --------------------------------------------------


def _signature(s: Image) -> dict[str, tuple]:
    """What must be equal for slices to share one voxel grid, named for the error message."""
    return {
        "image size": (s.rows, s.cols),
        "pixel spacing": tuple(round(v, 4) for v in s.pixel_spacing),
        "orientation": tuple(round(v, 4) for v in s.orientation),
    }


def _groups_by(slices: list[Image], tag: str) -> list[list[int]] | None:
    """Indices of slices sharing a value of `tag`, in first-seen order; None if any slice lacks it."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(slices):
        value = s.tags.get(tag)
        if value is None:
            return None
        groups.setdefault(value, []).append(i)
    return list(groups.values())


def _check_same_geometry(slices: list[Image], dicom_dir: Path) -> None:
    """All slices must share size, pixel spacing and orientation before positions are compared.

    When the differing slices line up with frames of some tag the frames are
    inconsistent; otherwise the series mixes stacks that cannot be told apart.
    """
    sigs = [tuple(_signature(s).values()) for s in slices]
    if len(set(sigs)) == 1:
        return
    a = 0
    b = next(i for i, sig in enumerate(sigs) if sig != sigs[a])
    sa, sb = _signature(slices[a]), _signature(slices[b])
    attr = next(k for k in sa if sa[k] != sb[k])
    names = f"{sa[attr]} in {image_where(slices[a], dicom_dir)}, {sb[attr]} in {image_where(slices[b], dicom_dir)}"
    for tag in GROUPING_TAGS:
        groups = _groups_by(slices, tag)
        if (
            groups is not None
            and len(groups) >= 2
            and len({len(g) for g in groups}) == 1
            and all(len({sigs[i] for i in g}) == 1 for g in groups)
        ):
            raise PatientInputError(f"{PLACEHOLDER}: inconsistent geometry between frames ({tag}): {attr} {names}")
    raise PatientInputError(
        f"{PLACEHOLDER}: mixed series that cannot be separated: stacks with different {attr} ({names})"
    )


def _choose_grouping(
    slices: list[Image], labels: np.ndarray, dicom_dir: Path
) -> tuple[str | None, list[list[int]]]:
    """The tag whose values split the slices into frames, and the frames (slice indices).

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
        f"{PLACEHOLDER}: mixed series that cannot be separated: {image_where(slices[a], dicom_dir)} and "
        f"{image_where(slices[b], dicom_dir)} share a slice position and no tag "
        f"({', '.join(GROUPING_TAGS)}) splits the files into stacks of distinct positions"
    )


# --- checks on the frames (time-ordered) -----------------------------------------------------


def _check_series_per_frame(slices: list[Image], frames: list[list[int]], dicom_dir: Path) -> None:
    """One series for all frames or one series per frame; anything else mixes acquisitions (rest + stress)."""
    series = [{slices[i].tags.get(_SERIES_TAG) for i in f} for f in frames]
    all_series = set().union(*series)
    if len(all_series) == 1 or (all(len(s) == 1 for s in series) and len(all_series) == len(frames)):
        return
    mixed = next((f for f, s in zip(frames, series) if len(s) > 1), None)
    if mixed is not None:
        a = slices[mixed[0]]
        b = next(slices[i] for i in mixed if slices[i].tags.get(_SERIES_TAG) != a.tags.get(_SERIES_TAG))
        detail = "one frame holds files of two series"
    else:
        uids = [slices[f[0]].tags.get(_SERIES_TAG) for f in frames]
        repeated = next(u for u, n in Counter(uids).items() if n > 1)
        ka, kb = [k for k, u in enumerate(uids) if u == repeated][:2]
        a, b = slices[frames[ka][0]], slices[frames[kb][0]]
        detail = "one series holds several frames besides other series"
    raise PatientInputError(
        f"{PLACEHOLDER}: mixed series that cannot be separated: {len(all_series)} series for "
        f"{len(frames)} frames; {detail} ({image_where(a, dicom_dir)}, {image_where(b, dicom_dir)})"
    )


def _check_complete(
    slices: list[Image], labels: np.ndarray, frames: list[list[int]], times_s: list[float], dicom_dir: Path
) -> None:
    """Every frame holds the same slice positions as the most common frame."""
    sets = [frozenset(labels[f].tolist()) for f in frames]
    reference = Counter(sets).most_common(1)[0][0]
    for k, (s, f) in enumerate(zip(sets, frames)):
        if s == reference:
            continue
        example = image_where(slices[f[0]], dicom_dir)
        where = f"frame {k + 1} of {len(frames)} (t = {times_s[k]:.2f} s, e.g. {example})"
        extra = len(s - reference)
        if extra == 0:
            raise PatientInputError(
                f"{PLACEHOLDER}: incomplete {where}: {len(s)} of {len(reference)} slice positions present"
            )
        raise PatientInputError(
            f"{PLACEHOLDER}: inconsistent slice positions between frames: {where} has {extra} "
            f"position(s) that the other frames lack ({len(s & reference)} of {len(reference)} shared; "
            f"tolerance {POSITION_TOL_MM} mm)"
        )


def _check_temporal_order(
    slices: list[Image], frames: list[list[int]], times_s: list[float], timing_tag: str | None, dicom_dir: Path
) -> None:
    """Where frames carry a temporal position (identifier or index), its order must agree with the time order."""
    for tag in _TPI_TAGS:
        per_frame = [{_optional_float(slices[i].tags.get(tag)) for i in f} for f in frames]
        if any(len(v) != 1 or None in v for v in per_frame):
            continue
        tpi = [int(next(iter(v))) for v in per_frame]
        for k in range(len(tpi) - 1):
            if tpi[k + 1] < tpi[k]:
                raise PatientInputError(
                    f"{PLACEHOLDER}: non-monotonic frame times: {tag} {tpi[k]} is at {times_s[k]:.2f} s, "
                    f"before {tag} {tpi[k + 1]} at {times_s[k + 1]:.2f} s by {timing_tag} "
                    f"(e.g. {image_where(slices[frames[k][0]], dicom_dir)})"
                )


def _check_inplane_alignment(
    slices: list[Image], along_row: np.ndarray, along_col: np.ndarray, dicom_dir: Path
) -> None:
    """Slices must stack straight along the normal (no gantry tilt, no shifted field of view)."""
    tol = INPLANE_TOL_PX * min(slices[0].pixel_spacing)
    for offsets in (along_row, along_col):
        if np.ptp(offsets) > tol:
            a, b = int(np.argmin(offsets)), int(np.argmax(offsets))
            raise PatientInputError(
                f"{PLACEHOLDER}: inconsistent geometry: slices are not stacked along the slice normal "
                f"(in-plane shift {np.ptp(offsets):.2f} mm between {image_where(slices[a], dicom_dir)} and "
                f"{image_where(slices[b], dicom_dir)}; gantry tilt or shifted field of view)"
            )


def _uniform_spacing(slices: list[Image], along: np.ndarray, frame: list[int], dicom_dir: Path) -> float:
    """Mean gap between the sorted slice positions of a frame, which must all be about equal."""
    p = along[frame]
    gaps = np.diff(p)
    mean = float((p[-1] - p[0]) / (len(p) - 1))
    k = int(np.argmax(np.abs(gaps - mean)))
    if abs(gaps[k] - mean) > max(SPACING_ABS_TOL_MM, SPACING_REL_TOL * mean):
        raise PatientInputError(
            f"{PLACEHOLDER}: non-uniform slice spacing: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm "
            f"({gaps[k]:.3f} mm between {image_where(slices[frame[k]], dicom_dir)} and "
            f"{image_where(slices[frame[k + 1]], dicom_dir)})"
        )
    return mean
