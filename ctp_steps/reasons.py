"""Reasons that may reach the cohort tables: one line, no absolute paths, no header dates.

A reason travels into patients.parquet, report.md, status records and logs that
users share. Real archives name folders after patients and accession numbers,
and DICOM dates date the exam, so both are scrubbed here, once, for every
stage's reason; the stage's own message should already avoid them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

MAX_REASON_CHARS = 500
# DICOM DA/DT values (YYYYMMDD[HHMMSS[.ffffff]]) and ISO dates: they date the exam.
_DATE_RE = re.compile(
    r"(?<!\d)(?:19|20)\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(?:\d{2,6}(?:\.\d+)?)?(?!\d)"
    r"|(?<!\d)(?:19|20)\d\d-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])(?:[T ][\d:.]+)?(?!\d)"
)
# An absolute POSIX path: a slash not preceded by a word character, then path characters.
_ABS_PATH_RE = re.compile(r"(?<![\w.<>])/(?:[^\s'\"/:,;()\[\]]+/)*[^\s'\"/:,;()\[\]]*")


def one_line(text: object, limit: int = MAX_REASON_CHARS) -> str:
    """Collapse newlines and runs of whitespace (a multi-line reason breaks tables and logs), bounded in length."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def scrub_paths(text: str, roots: Mapping[str | Path, str]) -> str:
    """Replace known roots by their label (e.g. the results folder by `<results>`), other absolute paths by their name.

    Longer roots first, so a patient's folder inside the results folder keeps its own label.
    """
    for root, label in sorted(((str(r).rstrip("/"), lbl) for r, lbl in roots.items()), key=lambda x: -len(x[0])):
        if root:
            text = text.replace(root, label)
    return _ABS_PATH_RE.sub(lambda m: f"<path>/{Path(m.group(0)).name}", text)


def scrub_dates(text: str) -> str:
    return _DATE_RE.sub("<date>", text)


def safe_reason(text: str, roots: Mapping[str | Path, str] | None = None) -> str:
    """The reason as it may be stored: paths and dates scrubbed, one line, bounded length."""
    return one_line(scrub_dates(scrub_paths(str(text), roots or {})))
