"""Which series of an exam folder is the dynamic perfusion, by what the headers say.

Exam folders hold more than the perfusion: localizers, a calcium-score scan,
a CTA, derived reconstructions (AVERAGE, MIP, MPR, thick slabs), dose reports.
The header pass already set aside non-CT SOP classes, files without pixels,
localizers and derived images (ImageType DERIVED/SECONDARY or a derived-pixel
value). The rule for the ORIGINAL CT series left:

- A series whose slices repeat the same positions is a dynamic candidate by
  itself (one series for all frames: TemporalPositionIdentifier, TriggerTime,
  multi-frame Enhanced CT ...).
- Series holding a single stack are static; static stacks of one study, one
  frame of reference and one acquisition protocol (SeriesDescription without
  digits, ProtocolName, ConvolutionKernel, SliceThickness, kVp) form a family,
  split where two consecutive stacks are more than SESSION_GAP_S apart (no
  perfusion has a minute between frames; a calcium-score scan or a second
  perfusion does). A cluster of two or more stacks spanning at least
  MIN_DYNAMIC_SPAN_S is a series-per-frame dynamic candidate (stacks closer in
  time are reconstructions of one acquisition, e.g. CTA cardiac phases); its geometry is checked later like any frames, so a frame
  with a wrong grid is reported, never dropped.
- A stack alone in its cluster is a static scan (calcium score, CTA): ignored,
  with how it differs from the dynamic series (protocol facts, time gap).
- Exactly one candidate is converted. Two or more are never mixed: the patient
  is excluded naming them by series number and description. With no
  candidate, a single static stack is converted (and then fails the frame
  count unless one frame is allowed); several are an exclusion.
Records name series by number and description only (no UIDs, dates, names).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np

from ctp_steps.convert.headers import PLACEHOLDER, HeaderScan, Image, SeriesInfo, image_where
from ctp_steps.convert.timing import parse_dt, parse_tm, unwrap_midnight
from ctp_steps.types import PatientInputError

SESSION_GAP_S = 60.0  # static stacks further apart than this are separate acquisitions
MIN_DYNAMIC_SPAN_S = 2.0  # stacks within this time are reconstructions of one acquisition (e.g. cardiac phases)
POSITION_TOL_MM = 0.1  # slices closer than this along the normal are the same position
_PROTOCOL_FIELDS = ("description", "protocol name", "kernel", "slice thickness", "kVp")
_CLOCK_TAGS = ("AcquisitionTime", "ContentTime", "SeriesTime", "AcquisitionDateTime", "FrameAcquisitionDateTime")


@dataclass
class Selection:
    """The images of the chosen series and what the record says about the choice."""

    images: list[Image]
    used: str
    ignored: list[str]
    n_ignored_images: int  # images of ignored series, localizers apart (counted as skipped files)


@dataclass
class _Candidate:
    series: list[SeriesInfo]
    images: list[Image]
    per_frame: bool  # one series per frame

    def label(self) -> str:
        if not self.per_frame:
            return f"{self.series[0].label()} ({len(self.images)} images)"
        numbers = [s.number for s in self.series if s.number is not None]
        first = self.series[0]
        span = f"{numbers[0]}-{numbers[-1]}" if len(numbers) == len(self.series) else "?"
        desc = f" '{first.description}'" if first.description else ""
        return f"series {span}{desc} (one series per frame, {len(self.series)} series, {len(self.images)} images)"


def along_normal(images: list[Image]) -> np.ndarray:
    """Each slice's position along the first slice's normal (mm)."""
    o = np.asarray(images[0].orientation)
    normal = np.cross(o[:3], o[3:])
    return np.asarray([s.position for s in images]) @ (normal / np.linalg.norm(normal))


def position_labels(along: np.ndarray) -> np.ndarray:
    """Slice-position index of each slice: positions within POSITION_TOL_MM of a neighbour are one."""
    order = np.argsort(along, kind="stable")
    new_position = np.diff(along[order]) > POSITION_TOL_MM
    labels = np.empty(len(along), dtype=int)
    labels[order] = np.concatenate([[0], np.cumsum(new_position)])
    return labels


def select_dynamic(scan: HeaderScan, dicom_dir: Path) -> Selection:
    """Pick the one dynamic series (see module docstring); exclude when none or several remain."""
    ignored = [f"{e.series.label()}: {e.reason} ({e.n_images} image(s))" for e in scan.ignored.values()]
    n_ignored = sum(e.n_images for e in scan.ignored.values() if e.reason != "localizer")  # localizers: skipped
    if not scan.images:
        _raise_nothing_left(scan, ignored)
    by_series: dict[str | None, list[Image]] = defaultdict(list)
    for image in scan.images:
        by_series[image.series.key].append(image)

    candidates: list[_Candidate] = []
    families: dict[tuple, list[list[Image]]] = defaultdict(list)
    for images in by_series.values():
        labels = position_labels(along_normal(images))
        if len(set(labels.tolist())) < len(images):
            candidates.append(_Candidate([images[0].series], images, per_frame=False))
        else:
            info = images[0].series
            families[(info.study, info.frame_of_reference, info.protocol)].append(images)
    lone: list[list[Image]] = []
    for stacks in families.values():
        for cluster in _clusters(stacks):
            if len(cluster) >= 2 and _spans_time(cluster):
                flat = [s for stack in cluster for s in stack]
                candidates.append(_Candidate([stack[0].series for stack in cluster], flat, per_frame=True))
            else:
                lone.extend(cluster)

    if len(candidates) > 1:
        names = " and ".join(f"{c.label()}, e.g. {image_where(c.images[0], dicom_dir)}" for c in candidates)
        raise PatientInputError(
            f"{PLACEHOLDER}: {len(candidates)} candidate dynamic series, not mixed: {names}"
        )
    if not candidates:
        if len(lone) > 1:
            names = ", ".join(stack[0].series.label() for stack in lone)
            raise PatientInputError(
                f"{PLACEHOLDER}: no dynamic series: {len(lone)} single static stacks, none repeated over time ({names})"
            )
        stack = lone[0]
        return Selection(stack, f"{stack[0].series.label()} (single stack)", ignored, n_ignored)
    chosen = candidates[0]
    for stack in lone:
        ignored.append(f"{stack[0].series.label()}: {_static_reason(stack, chosen)} ({len(stack)} image(s))")
        n_ignored += len(stack)
    return Selection(chosen.images, chosen.label(), ignored, n_ignored)


def _clusters(stacks: list[list[Image]]) -> list[list[list[Image]]]:
    """Static stacks of one family in time order, split at gaps over SESSION_GAP_S (unknown times: one cluster)."""
    clocks = _clocks(stacks)
    if clocks is None:
        return [stacks]
    order = np.argsort(clocks, kind="stable")
    clusters = [[stacks[order[0]]]]
    for a, b in zip(order[:-1], order[1:]):
        if clocks[b] - clocks[a] > SESSION_GAP_S:
            clusters.append([])
        clusters[-1].append(stacks[b])
    return clusters


def _spans_time(cluster: list[list[Image]]) -> bool:
    """Whether stacks were acquired over time (≥ MIN_DYNAMIC_SPAN_S), not reconstructed from one acquisition."""
    clocks = _clocks(cluster)
    return clocks is None or float(np.ptp(clocks)) >= MIN_DYNAMIC_SPAN_S


def _clocks(stacks: list[list[Image]]) -> np.ndarray | None:
    """The earliest time of day of each stack, from the first tag all stacks carry; None if none does."""
    for tag in _CLOCK_TAGS:
        values = []
        for stack in stacks:
            times = [_time_of_day(s.tags.get(tag), tag) for s in stack]
            known = [t for t in times if t is not None]
            values.append(min(known) if known else None)
        if all(v is not None for v in values):
            return unwrap_midnight(np.asarray(values, dtype=float))
    return None


def _time_of_day(text: str | None, tag: str) -> float | None:
    if text is None:
        return None
    if tag.endswith("DateTime"):
        parsed = parse_dt(text)
        return None if parsed is None else parsed[1]
    return parse_tm(text)


def _static_reason(stack: list[Image], chosen: _Candidate) -> str:
    """Why a lone stack is not part of the dynamic series: its protocol facts and its time gap."""
    mine, theirs = stack[0].series.protocol, chosen.series[0].protocol
    differs = [name for name, a, b in zip(_PROTOCOL_FIELDS, mine, theirs) if a != b]
    parts = ["single static stack, not repeated over time (calcium-score, CTA or other static scan)"]
    if differs:
        parts.append(f"differs from the dynamic series in {', '.join(differs)}")
    clocks = _clocks([stack, chosen.images])
    if clocks is not None:
        gap = float(clocks[0] - clocks[1])
        parts.append(f"acquired {abs(gap):.0f} s {'before' if gap < 0 else 'after'} its first frame")
    return "; ".join(parts)


def _raise_nothing_left(scan: HeaderScan, ignored: list[str]) -> NoReturn:
    """No CT image of any kept series: say what was found instead."""
    ct_set_aside = [e for e in scan.ignored.values() if not e.reason.startswith("not a CT image")]
    if scan.non_ct_example is not None and not ct_set_aside:
        raise PatientInputError(f"{scan.non_ct_example}: modality {scan.non_ct_modality}, expected CT")
    if ignored:
        raise PatientInputError(
            f"{PLACEHOLDER}: no original CT image series ({scan.n_files} files; ignored: {'; '.join(ignored)})"
        )
    described = ", ".join(f"{n} {reason}" for reason, n in sorted(scan.skipped.items())) or "none"
    raise PatientInputError(
        f"{PLACEHOLDER}: no readable DICOM image files ({scan.n_files} files skipped: {described})"
    )
