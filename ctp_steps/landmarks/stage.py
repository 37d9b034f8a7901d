"""The per-patient landmark stage: landmarks, the AHA 17-segment map and a QC PNG from the average and the myocardium.

Contract (ctp_steps/stages.py): `Inputs`, `Outputs` (the keys of rules/landmarks.smk), `Config`, `run`.

Known per-patient problems raise PatientInputError (the patient is excluded
with the reason): an empty myocardium mask, a landmark whose confidence is
below `min_confidence` (the reason names the landmark), an implausibly short
long axis, or an RV insertion on the long axis; the excluded patient's QC PNG
shows why (the heatmaps, the candidates and their confidences, the geometric
fallback's attempt; or the average with its mask). The AHA map is built by
`ctp_steps.aha` (the same construction as the phantom's truth).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from ctp_steps.aha import aha_segment_map, long_axis_frame
from ctp_steps.io import read_volume, write_json, write_volume
from ctp_steps.landmarks.config import LandmarkConfig
from ctp_steps.stages import Context, PatientInputs, PatientOutputs
from ctp_steps.types import PatientInputError

log = logging.getLogger(__name__)

MIN_MYOCARDIUM_VOXELS = 20


def detection_problem(names, world_mm: np.ndarray, confidence: np.ndarray, cfg: LandmarkConfig, threshold: float,
                      what: str = "confidence") -> str | None:
    """Why a set of landmarks cannot build the AHA map (every missing or unsure landmark named), or None."""
    low = [
        f"landmark {n} not found ({what} {c:.2f} < {threshold:.2f})"
        for n, c in zip(names, confidence)
        if not np.isfinite(c) or c < threshold or not np.all(np.isfinite(world_mm[list(names).index(n)]))
    ]
    if low:
        return "; ".join(low)
    lm = dict(zip(names, world_mm))
    length = float(np.linalg.norm(lm["apex"] - lm["base"]))
    if length < cfg.min_long_axis_mm:
        return f"landmarks apex and base only {length:.1f} mm apart (< min_long_axis_mm {cfg.min_long_axis_mm:.0f})"
    try:
        long_axis_frame(lm["apex"], lm["base"], lm["rv_insertion"])
    except ValueError as exc:
        return f"landmark rv_insertion unusable ({exc})"
    return None


@dataclass(frozen=True)
class ChosenLandmarks:
    """The landmarks kept, the method that found them and the attempts that failed before it."""

    names: tuple[str, ...]
    world_mm: np.ndarray
    confidence: np.ndarray  # the net's confidence, or the geometric method's quality
    source: str  # heatmap | geometric
    failed_attempts: list[str]

    def as_json(self) -> dict:
        return {
            name: {"world_mm": [float(v) for v in self.world_mm[i]], "confidence": float(self.confidence[i]),
                   "method": self.source}
            for i, name in enumerate(self.names)
        }


def choose_landmarks(det, image: np.ndarray, mask: np.ndarray, geometry, cfg: LandmarkConfig) -> ChosenLandmarks:
    """The net's landmarks if they pass; else the geometric fallback's; else PatientInputError listing both.

    The net was trained on one phantom's images; on studies unlike them it is unsure, while the masks
    and the image's own contrast still show where the LV axis and the RV lie.
    """
    problem = detection_problem(det.names, det.world_mm, det.confidence, cfg, cfg.min_confidence)
    if problem is None:
        return ChosenLandmarks(tuple(det.names), det.world_mm, det.confidence, "heatmap", [])
    attempts = [f"heatmap: {problem}"]
    tried = None
    if cfg.fallback == "geometric":
        from ctp_steps.landmarks.geometric import geometric_landmarks

        geo = geometric_landmarks(image, mask, geometry)
        log.info("geometric landmarks: %s (%s)", geo.as_json(), geo.failure or "no failure")
        problem = detection_problem(geo.names, geo.world_mm, geo.quality, cfg, cfg.min_geometric_quality, "quality")
        if problem is None:
            return ChosenLandmarks(tuple(geo.names), geo.world_mm, geo.quality, "geometric", attempts)
        attempts.append(f"geometric: {problem}" + (f" ({geo.failure})" if geo.failure else ""))
        tried = {**geo.as_json(), "failure": geo.failure}
    raise PatientInputError(
        "; ".join(attempts) if len(attempts) > 1 else problem,
        diagnostic=partial(_landmark_failure_figure, geometric=tried),  # the caller adds what it saw
    )


def _landmark_failure_figure(out_png: Path, reason: str, **seen) -> None:
    """The exclusion's QC figure (ctp_steps/landmarks/figure.py) from what the stage saw, bound by keyword."""
    from ctp_steps.landmarks.figure import plot_landmark_failure

    plot_landmark_failure(out_png, reason, **seen)


def heatmap_probabilities(detector, image: np.ndarray, mask: np.ndarray, geometry, crop) -> np.ndarray:
    """The net's per-landmark spatial distributions (K, D, H, W) on `crop`, as `decode` reads them.

    Only for the failure figure: a flat or split map is the usual reason a landmark is unsure.
    """
    import torch

    from ctp_steps.landmarks.crop import crop_channels

    x = crop_channels(image, mask, geometry, crop, detector.size, bool(detector.meta["input_mask"]))
    with torch.no_grad():
        logits = detector.net(torch.from_numpy(x)[None].to(detector.device))[0].float()
    k = logits.shape[0]
    return torch.softmax(logits.reshape(k, -1), dim=-1).reshape(logits.shape).cpu().numpy()


Config = LandmarkConfig


@dataclass(frozen=True, kw_only=True)
class Inputs(PatientInputs):
    average: Path  # the registered average
    myocardium: Path  # its myocardium mask
    weights: Path  # the landmark net (checked against the models manifest)


@dataclass(frozen=True, kw_only=True)
class Outputs(PatientOutputs):
    landmarks: Path
    aha: Path
    png: Path


def run(inputs: Inputs, outputs: Outputs, cfg: LandmarkConfig, ctx: Context) -> dict:
    """Detect, check, write the outputs; return the record for patients.parquet."""
    from ctp_steps.landmarks.figure import plot_landmarks
    from ctp_steps.landmarks.infer import LandmarkDetector
    from ctp_steps.models import MANIFEST, sha256_of, verified_weights

    average_path, myocardium_path = inputs.average, inputs.myocardium
    weights = verified_weights(cfg.model, ctx.models_manifest or MANIFEST)
    image, geometry = read_volume(average_path)
    mask, mask_geometry = read_volume(myocardium_path)
    if mask.shape != image.shape or not mask_geometry.allclose(geometry):
        raise ValueError(f"{myocardium_path}: grid differs from {average_path}")
    mask = mask > 0
    seen = {"image_zyx": image, "mask_zyx": mask, "geometry": geometry, "title": ctx.title}
    if np.count_nonzero(mask) < MIN_MYOCARDIUM_VOXELS:
        raise PatientInputError(
            f"{myocardium_path.name}: myocardium mask has {np.count_nonzero(mask)} voxels "
            f"(< {MIN_MYOCARDIUM_VOXELS}), no LV to find landmarks in",
            diagnostic=partial(_landmark_failure_figure, **seen),
        )
    detector = LandmarkDetector.from_checkpoint(weights, ctx.device)
    det = detector.detect(image.astype(np.float32), mask, geometry)
    log.info("landmarks: %s", det.as_json())
    try:
        chosen = choose_landmarks(det, image, mask, geometry, cfg)
    except PatientInputError as exc:
        heatmaps = heatmap_probabilities(detector, image.astype(np.float32), mask, geometry, det.crop)
        diagnostic = partial(exc.diagnostic or _landmark_failure_figure, **seen, detection=det.as_json(),
                             heatmaps=heatmaps, crop=det.crop, min_confidence=cfg.min_confidence)
        raise PatientInputError(f"{average_path.name}: {exc}", diagnostic=diagnostic) from None
    lm = dict(zip(chosen.names, chosen.world_mm))
    aha = aha_segment_map(mask, geometry, lm["apex"], lm["base"], lm["rv_insertion"], cfg.apex_cap_fraction)
    write_json(outputs.landmarks, chosen.as_json())
    write_volume(outputs.aha, aha.astype(np.uint8), geometry)
    plot_landmarks(image, mask, geometry, chosen.as_json(), outputs.png, title=ctx.title)
    record = {
        "landmarks_source": chosen.source,
        "landmarks_attempts": "; ".join(chosen.failed_attempts) or None,
        "landmarks_model_sha256": sha256_of(weights),
        "landmark_conf_min": float(chosen.confidence.min()),
        "lv_long_axis_mm": float(np.linalg.norm(lm["apex"] - lm["base"])),
    }
    record.update({f"landmark_conf_{n}": float(c) for n, c in zip(chosen.names, chosen.confidence)})
    return record
