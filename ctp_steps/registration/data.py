"""Training data of the registration net: LV-box crops of phantom frames (training/validation roles only).

Each kept frame is cropped on the net's input grid centred on its own LV
centroid (from the frame's LV mask, as the stage does with the segmentation's
masks), so any two frames of a patient form a centroid-pre-aligned pair. The
phantom's true motion is not stored: training is unsupervised.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from ctp_steps.registration.config import RegistrationConfig
from ctp_steps.registration.crop import LV_BLOOD, crop_frames, lv_centroid
from ctp_steps.registration.warp import crop_geometry

log = logging.getLogger(__name__)

CENTERS = [("TRAIN", "series_per_frame")]


def patient_crops(frames_hu: np.ndarray, lv: np.ndarray, geometry, keep: np.ndarray, size: int, spacing: float):
    """(images HU float16, LV masks uint8 0-255) of shape (len(keep), size, size, size)."""
    images, masks = [], []
    for k in keep:
        c = lv_centroid(lv[k], geometry)
        box = crop_geometry(c, size, spacing)
        images.append(crop_frames(frames_hu[k : k + 1], geometry, box, size, np.zeros((1, 3)), torch.device("cpu"))[0, 0])
        masks.append(crop_frames(lv[k : k + 1].astype(np.float32), geometry, box, size, np.zeros((1, 3)), torch.device("cpu"))[0, 0])
    img = torch.stack(images).numpy().astype(np.float16)
    msk = np.round(torch.stack(masks).numpy() * 255).astype(np.uint8)
    return img, msk


def make_dataset(cfg: RegistrationConfig, phantom_json: str, role: str, n_patients: int, out: Path) -> dict:
    """Generate `n_patients` phantoms of `role` and save their LV-box crops as one .npz."""
    from ctp_steps.io import atomic_path
    from ctp_steps.phantom import PhantomParams, generate_patient, make_specs

    if role not in ("train", "validation"):
        raise ValueError(f"role {role!r}: registration training data uses the train or validation role only")
    params = PhantomParams.model_validate_json(phantom_json)
    net = cfg.network
    specs = make_specs(n_patients, CENTERS, cfg.training.seed, role=role)
    images, masks = [], []
    t0 = time.perf_counter()
    for spec in specs:
        patient = generate_patient(spec, params)
        n = len(patient.frame_times_s)
        keep = np.unique(np.round(np.linspace(0, n - 1, min(cfg.training.frames_per_patient, n))).astype(int))
        keep = keep[: cfg.training.frames_per_patient]
        img, msk = patient_crops(
            patient.frames_hu, patient.frame_labels == LV_BLOOD, patient.geometry, keep, net.input_size, net.spacing_mm
        )
        # equal frame counts per patient (pad by repeating; never happens with n_frames ≥ frames_per_patient)
        while len(img) < cfg.training.frames_per_patient:
            img, msk = np.concatenate([img, img[-1:]]), np.concatenate([msk, msk[-1:]])
        images.append(img)
        masks.append(msk)
        log.info("%s: %d frames cropped (%.0f s so far)", spec.patient_id, len(keep), time.perf_counter() - t0)
    spec = {
        "role": role,
        "n_patients": n_patients,
        "seed": cfg.training.seed,
        "frames_per_patient": cfg.training.frames_per_patient,
        "phantom": params.model_dump(mode="json"),
        "input_size": net.input_size,
        "spacing_mm": net.spacing_mm,
        "patient_ids": [s.patient_id for s in specs],
        "generation_seconds": time.perf_counter() - t0,
    }
    import json

    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, images=np.stack(images), masks=np.stack(masks), spec=np.array(json.dumps(spec)))
    return spec


def load_dataset(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    import json

    with np.load(path) as z:
        return z["images"], z["masks"], json.loads(str(z["spec"]))
