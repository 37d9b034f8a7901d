"""Frame times from the time tags, in a documented order of trust, cross-checked against each other.

Order of trust (TIME_TAGS), most physical first:
1. FrameAcquisitionDateTime (Enhanced CT, per frame) and 2. AcquisitionDateTime:
   acquisition instants with their date, so they survive midnight, unless the
   date fails to roll over while the time of day does (a known export bug):
   such a tag is rejected, because it would reorder the frames.
3. AcquisitionTime: the acquisition's time of day, unwrapped across midnight.
4. ContentTime: when the image content was made; for dynamic CT it follows the
   acquisition, but it can be a reconstruction time, so it ranks after.
5. TriggerTime: ms after a trigger. Some scanners count from the first frame
   (then it times the frames), others store the ECG trigger delay, near-constant
   within a cardiac cycle; that does not track the acquisition and is rejected
   (span under ECG_DELAY_MAX_S, or under a tenth of a trusted tag's span).
A tag is usable when it is present on every slice, constant within frames
(spread small against the gaps between frames) and distinct between frames; a
tag equal for all frames (the scan start) is passed over. The first usable tag
gives the times; every other usable tag is compared with it, and every choice
and rejection is written as a note (tag names and relative seconds only, never
a header date or time).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import NoReturn

import numpy as np

from ctp_steps.convert.headers import PLACEHOLDER, Image, image_where
from ctp_steps.types import PatientInputError

TIME_TAGS = ("FrameAcquisitionDateTime", "AcquisitionDateTime", "AcquisitionTime", "ContentTime", "TriggerTime")
_DT_TAGS = {"FrameAcquisitionDateTime", "AcquisitionDateTime"}
_TM_TAGS = {"AcquisitionTime", "ContentTime", "SeriesTime"}
TIME_TOL_S = 1e-3  # frame times closer than this are duplicates
AGREE_TOL_S = 0.5  # two tags agree when their relative frame times differ by less than this
ECG_DELAY_MAX_S = 2.0  # a TriggerTime spanning less than this over all frames is an ECG delay (one cardiac cycle)
ECG_DELAY_FRACTION = 0.1  # ... or spanning less than this fraction of a trusted tag's span
_DAY_S = 86400.0


@dataclass
class Timing:
    """Which tag timed the frames, the frame times (s, absolute on that tag's clock) and why."""

    tag: str | None
    times: np.ndarray
    spread_s: float
    notes: list[str] = field(default_factory=list)


def frame_times(images: list[Image], groups: list[list[int]], dicom_dir: Path) -> Timing:
    """Time each group of slices (a frame) by the most trusted usable tag; record every decision."""
    if len(groups) == 1:
        return Timing(None, np.zeros(1), 0.0, [])
    notes: list[str] = []
    usable: list[tuple[str, np.ndarray, float]] = []
    duplicate = None
    for tag in TIME_TAGS:
        seconds, problem = tag_seconds(images, tag)
        if seconds is None:
            if problem:
                notes.append(f"{tag} rejected: {problem}")
            continue
        lo = np.asarray([seconds[g].min() for g in groups])
        hi = np.asarray([seconds[g].max() for g in groups])
        mid, spread = (lo + hi) / 2, float((hi - lo).max())
        if np.ptp(mid) == 0:
            notes.append(f"{tag} not used: equal for all frames")
            continue
        min_gap = float(np.diff(np.sort(mid)).min())
        if min_gap <= max(2 * spread, TIME_TOL_S):
            if duplicate is None and spread <= TIME_TOL_S and min_gap <= TIME_TOL_S:
                duplicate = (tag, mid)
            notes.append(f"{tag} not used: not constant within frames and distinct between them")
            continue
        if tag == "TriggerTime":
            ecg = _ecg_delay(mid, usable)
            if ecg:
                notes.append(f"TriggerTime rejected: {ecg}")
                continue
        usable.append((tag, mid, spread))
    if not usable:
        if duplicate is not None:
            _raise_duplicate(images, groups, *duplicate, dicom_dir)
        tried = "; ".join(notes) or "none present"
        raise PatientInputError(
            f"{PLACEHOLDER}: cannot time the {len(groups)} frames: none of {', '.join(TIME_TAGS)} is "
            f"constant within frames and distinct between frames ({tried})"
        )
    tag, mid, spread = usable[0]
    notes.insert(0, f"{tag} used (first usable in the order of trust)")
    for other, other_mid, _ in usable[1:]:
        diff = float(np.abs((other_mid - other_mid.min()) - (mid - mid.min())).max())
        verdict = "agrees" if diff < AGREE_TOL_S else "disagrees"
        notes.append(f"{other} {verdict} (largest difference {diff:.3f} s)")
    return Timing(tag, mid, spread, notes)


def _ecg_delay(mid: np.ndarray, trusted: list[tuple[str, np.ndarray, float]]) -> str | None:
    """Why a TriggerTime is an ECG trigger delay rather than a frame time, or None."""
    span = float(np.ptp(mid))
    if span < ECG_DELAY_MAX_S:
        return f"spans only {span:.3f} s over {len(mid)} frames: an ECG trigger delay, not the acquisition time"
    if trusted:
        tag, other, _ = trusted[0]
        if span < ECG_DELAY_FRACTION * float(np.ptp(other)):
            return f"spans {span:.3f} s while {tag} spans {float(np.ptp(other)):.3f} s: an ECG trigger delay"
    return None


def _raise_duplicate(
    images: list[Image], groups: list[list[int]], tag: str, mid: np.ndarray, dicom_dir: Path
) -> NoReturn:
    """Two frames at one time: name both by file and relative time, never by the header's time."""
    order = np.argsort(mid, kind="stable")
    k = int(np.argmin(np.diff(mid[order])))
    ga, gb = groups[order[k]], groups[order[k + 1]]
    t = float(mid[order[k]] - mid.min())
    raise PatientInputError(
        f"{PLACEHOLDER}: duplicate frame times: the frames of {image_where(images[ga[0]], dicom_dir)} and "
        f"{image_where(images[gb[0]], dicom_dir)} are both at t = {t:.3f} s by {tag}"
    )


def tag_seconds(images: list[Image], tag: str) -> tuple[np.ndarray | None, str | None]:
    """Seconds of `tag` for every slice, or (None, why not); None without a reason when absent."""
    raw = [s.tags.get(tag) for s in images]
    if any(v is None for v in raw):
        return None, None
    if tag in _DT_TAGS:
        parsed = [parse_dt(v) for v in raw]
        if any(p is None for p in parsed):
            return None, "malformed values"
        epoch = np.asarray([p[0] for p in parsed])
        tod = unwrap_midnight(np.asarray([p[1] for p in parsed]))
        offset = epoch - tod
        if np.ptp(offset) > 1.0:
            if np.all(np.abs(np.round((offset - offset[0]) / _DAY_S) * _DAY_S - (offset - offset[0])) < 1.0):
                return None, "its date does not roll over at midnight while its time of day does"
            return None, "its date and time of day disagree between slices"
        return epoch, None
    parse = parse_ms if tag == "TriggerTime" else parse_tm
    values = [parse(v) for v in raw]
    if any(v is None for v in values):
        return None, "malformed values"
    seconds = np.asarray(values, dtype=float)
    return (unwrap_midnight(seconds) if tag in _TM_TAGS else seconds), None


def parse_tm(text: str) -> float | None:
    """DICOM TM (HHMMSS.FFFFFF, also HHMM, HH and the old HH:MM:SS) → seconds after midnight."""
    m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d+)?", text.replace(":", ""))
    if m is None:
        return None
    hh, mm, ss = int(m[1]), int(m[2] or 0), int(m[3] or 0)
    if hh > 23 or mm > 59 or ss > 60:
        return None
    return hh * 3600 + mm * 60 + ss + float(m[4] or 0)


def parse_dt(text: str) -> tuple[float, float] | None:
    """DICOM DT (YYYYMMDDHHMMSS.FFFFFF&ZZXX, trailing parts optional) → (seconds since the epoch, time of day)."""
    m = re.fullmatch(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d+)?([+-]\d{4})?", text)
    if m is None:
        return None
    offset = 0 if m[8] is None else int(m[8][0] + "1") * (int(m[8][1:3]) * 60 + int(m[8][3:5]))
    hh, mm, ss, frac = int(m[4] or 0), int(m[5] or 0), int(m[6] or 0), float(m[7] or 0)
    try:
        when = datetime(
            int(m[1]), int(m[2] or 1), int(m[3] or 1), hh, mm, ss, tzinfo=timezone(timedelta(minutes=offset))
        )
    except ValueError:
        return None
    return when.timestamp() + frac, hh * 3600 + mm * 60 + ss + frac


def parse_ms(text: str) -> float | None:
    """TriggerTime (DS, milliseconds) → seconds."""
    try:
        ms = float(text)
    except ValueError:
        return None
    return ms / 1000 if np.isfinite(ms) else None


def unwrap_midnight(seconds: np.ndarray) -> np.ndarray:
    """Times of day → one increasing clock: the largest gap on the 24 h circle is when nothing was scanned."""
    u = np.unique(seconds)
    gaps = np.diff(np.append(u, u[0] + _DAY_S))
    k = int(np.argmax(gaps))
    if k == len(u) - 1:
        return seconds
    return np.where(seconds <= u[k], seconds + _DAY_S, seconds)
