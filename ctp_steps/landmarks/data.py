"""Training and validation cases of the landmark net, made by the phantom (never from the cohort).

A case is what the stage sees at inference time (the registered average image
and the myocardium mask) plus the true landmarks. Training phantoms are
rendered without motion, so the plain frame average is the registered average
(what the oracle registration gives, without its interpolation blur; training
adds random blur instead). Each case is cached in its own .npz (one Snakemake job each).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctp_steps.types import Geometry

LANDMARKS = ("apex", "base", "rv_insertion")
MYOCARDIUM_LABEL = 3


@dataclass
class Case:
    patient_id: str
    image: np.ndarray  # (z, y, x) float32 HU, average of the frames
    mask: np.ndarray  # (z, y, x) uint8 myocardium
    geometry: Geometry
    landmarks: np.ndarray  # (3, 3) world mm, rows in LANDMARKS order
    aha17: np.ndarray  # (z, y, x) uint8 true segments


def phantom_case(spec, params) -> Case:
    """One motion-free phantom patient as a landmark case."""
    from ctp_steps.phantom import generate_patient

    still = params.model_copy(update={"rigid_shift_max_mm": 0.0, "deformation_max_mm": 0.0})
    patient = generate_patient(spec, still)
    lm = patient.truth["landmarks"]
    return Case(
        patient_id=spec.patient_id,
        image=patient.frames_hu.mean(axis=0).astype(np.float32),
        mask=(patient.labels == MYOCARDIUM_LABEL).astype(np.uint8),
        geometry=patient.geometry,
        landmarks=np.array([lm[name] for name in LANDMARKS], dtype=float),
        aha17=patient.aha17.astype(np.uint8),
    )


def training_plan(cfg) -> dict[str, tuple]:
    """Case id → (PatientSpec, LandmarkGridConfig) of every training and validation case.

    Training cases are spread over `cfg.grids` by weight (deterministically by
    index); validation cases use the first grid (the pipeline's default).
    """
    from ctp_steps.phantom import make_specs

    plan: dict[str, tuple] = {}
    weights = np.array([g.weight for g in cfg.grids], dtype=float)
    counts = np.floor(weights / weights.sum() * cfg.train_patients).astype(int)
    counts[0] += cfg.train_patients - counts.sum()
    which = np.repeat(np.arange(len(cfg.grids)), counts)
    for spec, g in zip(make_specs(cfg.train_patients, [("LMK", "series_per_frame")], cfg.seed, role="train"), which):
        plan[spec.patient_id] = (spec, cfg.grids[g])
    for spec in make_specs(cfg.val_patients, [("LMK", "series_per_frame")], cfg.seed, role="validation"):
        plan[spec.patient_id] = (spec, cfg.grids[0])
    return plan


def make_case(spec, grid, apex_cap_fraction: float | None = None, anatomy: str = "default") -> Case:
    """A case on `grid`; `anatomy` "randomised" draws from the wider training phantom (phantom/params.py)."""
    from ctp_steps.phantom import PhantomParams
    from ctp_steps.phantom.params import randomised_training_phantom

    update = {"shape_zyx": tuple(grid.shape_zyx), "spacing_zyx_mm": tuple(grid.spacing_zyx_mm)}
    if apex_cap_fraction is not None:
        update["apex_cap_fraction"] = apex_cap_fraction
    base = randomised_training_phantom() if anatomy == "randomised" else PhantomParams()
    return phantom_case(spec, base.model_copy(update=update))


def make_cases(n: int, role: str, seed: int, grids: list, apex_cap_fraction: float | None = None,
               anatomy: str = "default") -> list[Case]:
    """n phantom cases of `role` on grids[i % len(grids)] (small sets for tests and experiments)."""
    from ctp_steps.phantom import make_specs

    specs = make_specs(n, [("LMK", "series_per_frame")], seed, role=role)
    return [make_case(s, grids[i % len(grids)], apex_cap_fraction, anatomy) for i, s in enumerate(specs)]


def save_case(path: str | Path, case: Case) -> None:
    from ctp_steps.io import atomic_path

    g = case.geometry
    arrays = {
        "id": np.array(case.patient_id),
        "image": case.image.astype(np.float16),
        "mask": case.mask,
        "aha": case.aha17,
        "geometry": np.array([*g.origin, *g.spacing, *g.direction], dtype=float),
        "landmarks": case.landmarks,
    }
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def load_case(path: str | Path) -> Case:
    with np.load(path) as z:
        g = z["geometry"]
        return Case(
            patient_id=str(z["id"]),
            image=z["image"].astype(np.float32),
            mask=z["mask"],
            geometry=Geometry(tuple(g[:3]), tuple(g[3:6]), tuple(g[6:15])),
            landmarks=z["landmarks"],
            aha17=z["aha"],
        )
