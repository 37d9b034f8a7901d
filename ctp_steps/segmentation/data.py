"""Training data of the segmentation models: phantom patients made for training only.

One `.npz` per patient holds what both models learn from:
- `frames` (t, z, y, x) int16 HU and `frame_labels` (t, z, y, x) uint8 (1 aorta,
  2 LV blood pool where each frame shows them): the frames model;
- `aligned` (t, z, y, x) int16 HU: every frame moved back onto the reference
  anatomy with the phantom's TRUE motion (`ctp_steps.phantom.motion.undo_motion`,
  the same resampling the oracle registration does), and `myocardium` (z, y, x)
  uint8, the true myocardium at the reference anatomy: the myocardium model
  learns on averages of these. Using the true alignment is deliberate (the
  registration stage is trained separately); the model card says so.
Patients come from `make_specs(..., role="train" | "validation")`, whose seeds
are disjoint from the default cohort's (role "cohort").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctp_steps.types import Geometry

AORTA, LV_BLOOD, MYOCARDIUM = 1, 2, 3
TRAIN_CENTER = ("TRAIN", "series_per_frame")  # vendor style only matters for DICOM, which training never writes


def training_specs(n_train: int, n_validation: int, seed: int) -> dict[str, list]:
    from ctp_steps.phantom import make_specs

    return {
        "train": make_specs(n_train, [TRAIN_CENTER], seed, role="train"),
        "validation": make_specs(n_validation, [TRAIN_CENTER], seed, role="validation"),
    }


def _int16(hu: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(hu), -32768, 32767).astype(np.int16)


def make_case(spec, params) -> dict[str, np.ndarray]:
    """Arrays of one training patient (deterministic in spec and params)."""
    from ctp_steps.phantom import displacement_field_mm, generate_patient, undo_motion

    p = generate_patient(spec, params)
    g: Geometry = p.geometry
    motion = p.truth["motion"]["frames"]
    aligned = np.stack(
        [undo_motion(f, displacement_field_mm(m, g, f.shape), g) for f, m in zip(p.frames_hu, motion)]
    )
    frame_labels = np.where(np.isin(p.frame_labels, (AORTA, LV_BLOOD)), p.frame_labels, 0).astype(np.uint8)
    return {
        "frames": _int16(p.frames_hu),
        "frame_labels": frame_labels,
        "aligned": _int16(aligned),
        "myocardium": (p.labels == MYOCARDIUM).astype(np.uint8),
        "frame_times_s": np.asarray(p.frame_times_s, dtype=np.float64),
        "spacing_zyx_mm": np.asarray(g.spacing[::-1], dtype=np.float64),
        "aif_hu": np.asarray(p.truth["aif"], dtype=np.float64),
    }


def write_case(path: Path, case: dict[str, np.ndarray]) -> None:
    from ctp_steps.io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **case)


def read_case(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
