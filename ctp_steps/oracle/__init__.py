"""Validation-only stand-in for segmentation, registration and landmarks, built from phantom truth.

Until the learned stages exist, the MBF and IMV stages still need registered
frames, a myocardium mask, an AHA map and an AIF. This stage derives them from
the phantom's hidden truth (true motion undone, true masks, true segments) so
downstream stages can be developed and validated in isolation. It reads the
truth folder, so it only runs on the synthetic cohort and every patient row it
feeds says `<stage>_source = "oracle"`; it is never a result on real data.

One module per stand-in (`segment_frames`, `register`, `segment_myocardium`,
`landmarks`), each keeping the stage contract (ctp_steps/stages.py) with the
same outputs as the real stage, or a subset; this package holds what they share.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from ctp_steps.types import Geometry

AORTA, LV_BLOOD, MYOCARDIUM = 1, 2, 3


def aorta_aif(series: np.ndarray, frame_labels: np.ndarray, times_s: list[float]) -> pd.DataFrame:
    """Mean HU per frame inside that frame's aorta, eroded by one voxel to avoid partial volume."""
    rows = []
    for k, (frame, labels) in enumerate(zip(series, frame_labels)):
        core = ndimage.binary_erosion(labels == AORTA)
        rows.append({"frame": k, "time_s": float(times_s[k]), "hu": float(frame[core].mean())})
    return pd.DataFrame(rows)


def check_grid(truth_file: Path, geometry: Geometry, reference: Geometry) -> None:
    if not geometry.allclose(reference):
        raise ValueError(f"{truth_file}: truth grid differs from the converted series")
