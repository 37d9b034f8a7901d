"""The per-patient landmark stage: landmarks, the AHA 17-segment map and a QC PNG from the average and the myocardium.

Contract (ctp_steps/stages.py): `Inputs`, `Outputs` (the keys of rules/landmarks.smk), `Config`, `run`.

Known per-patient problems raise PatientInputError (the patient is excluded
with the reason): an empty myocardium mask, a landmark whose confidence is
below `min_confidence` or, for the apex and the RV insertion, which lies off the
myocardium (the reason names the landmark), an implausibly short long axis, or
an RV insertion on the long axis, each after the geometric fallback had its
turn; the excluded patient's QC PNG
shows why (the heatmaps, the candidates and their confidences, the geometric
fallback's attempt; or the average with its mask). The AHA map is built by
`ctp_steps.aha` (the same construction as the phantom's truth).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
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


ON_EPICARDIUM = ("apex", "rv_insertion")  # defined on the LV's outer surface, hence next to the myocardium mask


def distance_to_mask_mm(points_world: np.ndarray, mask_world: np.ndarray) -> np.ndarray:
    """Distance (mm) from each point (rows, world LPS) to the nearest of a mask's voxel centres (`mask_world`,
    rows, world LPS); inf for a point that is not finite or an empty mask."""
    return np.array([
        float(np.sqrt(((mask_world - p) ** 2).sum(axis=1)).min()) if np.all(np.isfinite(p)) and len(mask_world)
        else np.inf
        for p in np.asarray(points_world, float)
    ])


def landmark_problems(names, world_mm: np.ndarray, score: np.ndarray, off_mask_mm: np.ndarray | None,
                      cfg: LandmarkConfig, threshold: float, what: str = "confidence") -> dict[str, str]:
    """Per landmark, why it cannot be used: not found (score below `threshold`) or, for the landmarks on the
    epicardium, farther from every myocardium voxel than `max_off_myocardium_mm` (a confident peak elsewhere)."""
    problems = {}
    for i, (n, c) in enumerate(zip(names, score)):
        if not np.isfinite(c) or c < threshold or not np.all(np.isfinite(world_mm[i])):
            problems[n] = f"landmark {n} not found ({what} {c:.2f} < {threshold:.2f})"
        elif off_mask_mm is not None and n in ON_EPICARDIUM and off_mask_mm[i] > cfg.max_off_myocardium_mm:
            problems[n] = (f"landmark {n} {off_mask_mm[i]:.1f} mm from the myocardium "
                           f"(> max_off_myocardium_mm {cfg.max_off_myocardium_mm:.0f})")
    return problems


def frame_problem(lm: dict[str, np.ndarray], cfg: LandmarkConfig) -> str | None:
    """Why three landmarks cannot span the AHA frame (too short a long axis, RV insertion on it), or None."""
    length = float(np.linalg.norm(lm["apex"] - lm["base"]))
    if length < cfg.min_long_axis_mm:
        return f"landmarks apex and base only {length:.1f} mm apart (< min_long_axis_mm {cfg.min_long_axis_mm:.0f})"
    try:
        long_axis_frame(lm["apex"], lm["base"], lm["rv_insertion"])
    except ValueError as exc:
        return f"landmark rv_insertion unusable ({exc})"
    return None


def detection_problem(names, world_mm: np.ndarray, confidence: np.ndarray, cfg: LandmarkConfig, threshold: float,
                      what: str = "confidence", off_mask_mm: np.ndarray | None = None) -> str | None:
    """Why a set of landmarks cannot build the AHA map (every missing, unsure or misplaced landmark named), or None."""
    problems = landmark_problems(names, world_mm, confidence, off_mask_mm, cfg, threshold, what)
    if problems:
        return "; ".join(problems.values())
    return frame_problem(dict(zip(names, world_mm)), cfg)


@dataclass(frozen=True)
class ChosenLandmarks:
    """The landmarks kept, the method that found each and the attempts that failed before them."""

    names: tuple[str, ...]
    world_mm: np.ndarray
    confidence: np.ndarray  # the net's confidence, or the geometric method's quality
    methods: tuple[str, ...]  # heatmap | heatmap+lv_axis | heatmap+rv_contact | apex_from_base | geometric
    failed_attempts: list[str]
    notes: dict[str, dict] = field(default_factory=dict)  # per landmark, how it was settled (landmarks.json)

    @property
    def source(self) -> str:
        """The methods used, joined by + (heatmap; heatmap+lv_axis+rv_contact; heatmap+apex_from_base; ...)."""
        used = {part for m in self.methods for part in m.split("+")}
        return "+".join(m for m in ("heatmap", "lv_axis", "rv_contact", "apex_from_base", "geometric") if m in used)

    def as_json(self) -> dict:
        return {
            name: {"world_mm": [float(v) for v in self.world_mm[i]], "confidence": float(self.confidence[i]),
                   "method": self.methods[i], **self.notes.get(name, {})}
            for i, name in enumerate(self.names)
        }


# Two apex estimates this far apart (as a fraction of base → apex) cannot both be near it: the axis would tilt > 10°.
MAX_APEX_DISAGREEMENT_FRACTION = 0.2


def settle_apex(chosen: ChosenLandmarks, lv, cfg: LandmarkConfig) -> ChosenLandmarks:
    """The net's apex by `cfg.apex` (config doc) about the chosen base; a fallback's apex is left as it is.
    `lv`: the myocardium's LVSolid (ctp_steps.landmarks.geometric.lv_solid), None when it has none."""
    from ctp_steps.landmarks.geometric import apex_on_axis_of_symmetry

    i = chosen.names.index("apex")
    if cfg.apex == "net" or chosen.methods[i] != "heatmap" or lv is None:
        return chosen
    lm = dict(zip(chosen.names, chosen.world_mm))
    axis_apex = apex_on_axis_of_symmetry(lv, lm["base"])
    if axis_apex is None:
        return chosen
    apart = float(np.linalg.norm(axis_apex - lm["apex"]))
    length = float(np.linalg.norm(lm["apex"] - lm["base"]))
    note = {"net_vs_axis_mm": apart}
    world, methods = chosen.world_mm.copy(), list(chosen.methods)
    if apart <= MAX_APEX_DISAGREEMENT_FRACTION * length:
        world[i] = (lm["apex"] + axis_apex) / 2.0
        methods[i] = "heatmap+lv_axis"
    else:
        note["axis_note"] = f"axis apex {apart:.1f} mm from the net's (> {MAX_APEX_DISAGREEMENT_FRACTION:g} of base→apex)"
    return replace(chosen, world_mm=world, methods=tuple(methods), notes={**chosen.notes, "apex": note})


def settle_rv_insertion(chosen: ChosenLandmarks, lv, cfg: LandmarkConfig) -> ChosenLandmarks:
    """The RV insertion by `cfg.rv_insertion` (config doc) about the chosen apex → base axis (`lv` as in
    settle_apex).

    A geometric-fallback insertion is already the RV contact about the fallback's own axis: it is only placed
    (about the final axis), never averaged with itself.
    """
    from ctp_steps.landmarks.geometric import rv_insertion_on_axis

    if cfg.rv_insertion == "net" or lv is None:
        return chosen
    i = chosen.names.index("rv_insertion")
    lm = dict(zip(chosen.names, chosen.world_mm))
    combine = cfg.rv_insertion == "net_and_contact_placed" and chosen.methods[i] == "heatmap"
    settled = rv_insertion_on_axis(lv, lm["apex"], lm["base"], lm["rv_insertion"],
                                   cfg.min_geometric_quality if combine else None)
    if settled is None:  # the axis misses the LV solid: keep the point as found
        return chosen
    world = chosen.world_mm.copy()
    world[i] = settled.world_mm
    methods = list(chosen.methods)
    if settled.direction == "mean_of_net_and_contact":
        methods[i] = "heatmap+rv_contact"
    note = {"direction": settled.direction if combine else "as_found", "placed": "aha_definition"}
    if combine:
        angle = settled.disagreement_deg
        note.update(net_vs_contact_deg=angle if np.isfinite(angle) else None, contact_quality=settled.contact_quality)
        if settled.note:
            note["contact_note"] = settled.note
    return replace(chosen, world_mm=world, methods=tuple(methods), notes={**chosen.notes, "rv_insertion": note})


def settle_landmarks(chosen: ChosenLandmarks, image: np.ndarray, mask: np.ndarray, geometry,
                     cfg: LandmarkConfig) -> ChosenLandmarks:
    """Apex, then RV insertion about the settled axis, each with its second estimate (config `apex`,
    `rv_insertion`); the myocardium's LV solid is built once for both."""
    if cfg.apex == "net" and cfg.rv_insertion == "net":
        return chosen
    from ctp_steps.landmarks.geometric import lv_solid

    lv = lv_solid(image, mask, geometry)
    lv = None if isinstance(lv, str) else lv
    return settle_rv_insertion(settle_apex(chosen, lv, cfg), lv, cfg)


def choose_landmarks(det, image: np.ndarray, mask: np.ndarray, geometry, cfg: LandmarkConfig) -> ChosenLandmarks:
    """The net's landmarks where they pass; fallbacks for the others; else PatientInputError listing each attempt.

    The net was trained on phantom images; on studies unlike them it can be unsure, or sure of a peak off the
    heart, while the masks and the image's own contrast still show where the LV axis and the RV lie. A net
    landmark that passes is kept (it is the more precise method where it works). A failed apex is taken as the
    myocardium's far end from the net's base when that base passed (`apex_from_base`); any landmark still
    missing comes from the geometric method. When the net's three points pass one by one but cannot span the
    AHA frame, the geometric set replaces them all.
    """
    from ctp_steps.landmarks.geometric import apex_from_base

    names = tuple(det.names)
    myocardium_world = geometry.zyx_to_world(np.argwhere(mask))
    net_problems = landmark_problems(names, det.world_mm, det.confidence,
                                     distance_to_mask_mm(det.world_mm, myocardium_world), cfg, cfg.min_confidence)
    net_frame = None if net_problems else frame_problem(dict(zip(names, det.world_mm)), cfg)
    if not net_problems and net_frame is None:
        return ChosenLandmarks(names, det.world_mm, det.confidence, ("heatmap",) * len(names), [])
    attempts = [f"heatmap: {net_frame or '; '.join(net_problems.values())}"]
    tried = None
    if cfg.fallback == "geometric":
        found: dict[str, tuple[np.ndarray, float, str]] = {}  # name -> (world, score, method)
        if net_frame is None:
            found = {n: (det.world_mm[i], float(det.confidence[i]), "heatmap")
                     for i, n in enumerate(names) if n not in net_problems}
        if "apex" not in found and found.get("base", (None, None, ""))[2] == "heatmap":
            apex, quality = apex_from_base(found["base"][0], mask, geometry)
            problem = landmark_problems(("apex",), apex[None], np.array([quality]),
                                        distance_to_mask_mm(apex[None], myocardium_world), cfg,
                                        cfg.min_geometric_quality, "quality")
            if problem:
                attempts.append(f"apex_from_base: {problem['apex']}")
            else:
                found["apex"] = (apex, quality, "apex_from_base")
        problem = None
        if len(found) < len(names):
            from ctp_steps.landmarks.geometric import geometric_landmarks

            geo = geometric_landmarks(image, mask, geometry)
            log.info("geometric landmarks: %s (%s)", geo.as_json(), geo.failure or "no failure")
            tried = {**geo.as_json(), "failure": geo.failure}
            geo_problems = landmark_problems(geo.names, geo.world_mm, geo.quality,
                                             distance_to_mask_mm(geo.world_mm, myocardium_world), cfg,
                                             cfg.min_geometric_quality, "quality")
            missing = [n for n in names if n not in found and n in geo_problems]
            if missing:
                problem = "; ".join(geo_problems[n] for n in missing)
            else:
                i_of = {n: i for i, n in enumerate(geo.names)}
                found.update({n: (geo.world_mm[i_of[n]], float(geo.quality[i_of[n]]), "geometric")
                              for n in names if n not in found})
        if problem is None:
            world = np.array([found[n][0] for n in names])
            problem = frame_problem(dict(zip(names, world)), cfg)
            if problem is None:
                return ChosenLandmarks(names, world, np.array([found[n][1] for n in names]),
                                       tuple(found[n][2] for n in names), attempts)
        attempts.append(f"geometric: {problem}" + (f" ({tried['failure']})" if tried and tried["failure"] else ""))
    raise PatientInputError(
        "; ".join(attempts) if len(attempts) > 1 else attempts[0].removeprefix("heatmap: "),
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
    chosen = settle_landmarks(chosen, image, mask, geometry, cfg)
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
        "landmark_rv_net_vs_contact_deg": chosen.notes.get("rv_insertion", {}).get("net_vs_contact_deg"),
    }
    record.update({f"landmark_conf_{n}": float(c) for n, c in zip(chosen.names, chosen.confidence)})
    return record
