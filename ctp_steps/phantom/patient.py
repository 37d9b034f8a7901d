"""One phantom patient from its spec: anatomy, MBF map, kinetics, motion, frames and truth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctp_steps.phantom.acquisition import draw_acquisition
from ctp_steps.phantom.anatomy import (
    AORTA,
    LA_BLOOD,
    LABEL_NAMES,
    LV_BLOOD,
    N_CLASSES,
    RV_BLOOD,
    RV_WALL,
    build_scene,
    draw_anatomy,
)
from ctp_steps.phantom.kinetics import draw_kinetics
from ctp_steps.phantom.motion import draw_motion
from ctp_steps.phantom.params import PatientSpec, PhantomParams, patient_rng
from ctp_steps.phantom.perfusion import draw_perfusion, mbf_field
from ctp_steps.phantom.render import add_noise, render_frames
from ctp_steps.phantom.truth import mbf_summary, reference_maps, segment_map
from ctp_steps.types import Geometry

CT_RANGE_HU = (-1024.0, 3071.0)  # what a 12-bit CT reconstruction can hold


@dataclass
class PhantomPatient:
    """A rendered patient and its truth.

    frames_hu: (t, z, y, x) float32 as the scanner reconstructs it (clipped to
    CT_RANGE_HU), before integer storage; frame_times_s: first frame at 0.0.
    labels: (z, y, x) uint8 at the reference (un-moved) anatomy: 1 aorta,
    2 LV blood pool, 3 myocardium, 4 RV blood pool; frame_labels: (t, z, y, x)
    where each frame shows them. mbf: (z, y, x) float32 true MBF
    (mL/100mL/min), 0 outside myocardium; aha17: (z, y, x) uint8 AHA segment of
    every myocardium voxel. truth: the content of truth.json.
    """

    spec: PatientSpec
    frames_hu: np.ndarray
    frame_times_s: np.ndarray
    geometry: Geometry
    kvp: float
    noise_sd_hu: float
    labels: np.ndarray
    frame_labels: np.ndarray
    mbf: np.ndarray
    aha17: np.ndarray
    truth: dict


def generate_patient(spec: PatientSpec, params: PhantomParams, with_noise: bool = True) -> PhantomPatient:
    """Deterministic in (spec, params): the same arrays bit for bit on every call.

    `with_noise=False` keeps the noise-free frames (the drawn noise SD is still
    recorded): the native-grid renderer adds its noise on its own grid.
    """
    anat = draw_anatomy(patient_rng(spec.seed, "anatomy"), params)
    perf = draw_perfusion(patient_rng(spec.seed, "perfusion"), params)
    acq = draw_acquisition(patient_rng(spec.seed, "timing"), patient_rng(spec.seed, "acquisition"), params)
    times = acq.frame_times_s
    kin = draw_kinetics(patient_rng(spec.seed, "kinetics"), params, times)
    heart_center = anat.lv.base + anat.lv.length / 2 * anat.lv.u
    motion = draw_motion(patient_rng(spec.seed, "motion"), params, heart_center, len(times))

    grid = anat.grid
    scene = build_scene(anat, grid.full_box())
    mbf_myo = mbf_field(perf, scene.heart, anat.lv)
    labels, mbf = reference_maps(scene, mbf_myo, grid, grid.output_box())
    landmarks = anat.landmarks
    aha17 = segment_map(labels, grid, landmarks, params.apex_cap_fraction)

    class_enh = np.zeros((len(times), N_CLASSES))
    class_enh[:, AORTA] = kin.aorta(times)
    class_enh[:, LV_BLOOD] = class_enh[:, LA_BLOOD] = kin.lv(times)
    class_enh[:, RV_BLOOD] = kin.rv(times)
    rv_wall_mbf = np.mean(list(perf.normal_mbf.values()))
    tissue = kin.tissue(np.append(mbf_myo, rv_wall_mbf), times)
    class_enh[:, RV_WALL] = tissue[:, -1]
    clean, frame_labels = render_frames(
        scene, grid, anat.static_hu(), class_enh, tissue[:, :-1], motion, params.psf_sigma_mm
    )
    noisy = None
    if with_noise:
        noisy = add_noise(
            clean, acq.noise_sd_hu, patient_rng(spec.seed, "noise"), params.noise_correlation_sigma_vox
        )
    frames = np.clip(noisy if with_noise else clean, *CT_RANGE_HU)

    voxel_ml = float(np.prod(grid.geometry.spacing)) / 1000.0
    truth = {
        "patient_id": spec.patient_id,
        "center": spec.center,
        "role": spec.role,
        "seed": spec.seed,
        "vendor_style": spec.vendor_style,
        "kvp": acq.kvp,
        "noise_sd_hu": acq.noise_sd_hu,
        "geometry": grid.geometry.to_dict(),
        "n_frames": len(times),
        "frame_times_s": times.tolist(),
        "labels": {str(k): v for k, v in LABEL_NAMES.items()},
        "landmarks": landmarks,
        "aha_apex_cap_fraction": params.apex_cap_fraction,
        "ischemia_threshold_mbf": params.ischemia_threshold_mbf,
        **mbf_summary(labels, mbf, aha17, voxel_ml, params.ischemia_threshold_mbf),
        **kin.aif_summary(times),
        "baseline_hu": dict(anat.hu),
        "ischemia": perf.record(),
        "kinetics": kin.record(),
        "anatomy": anat.record(),
        "motion": {
            "convention": "frame image at world point p shows the reference anatomy at p + u(p); "
            "u(p) = translation_mm + sum over modes of vector_mm * exp(-|p - center_mm|^2 / (2 sigma_mm^2)), "
            "world LPS mm",
            "frames": motion,
        },
    }
    return PhantomPatient(
        spec=spec,
        frames_hu=frames,
        frame_times_s=times,
        geometry=grid.geometry,
        kvp=acq.kvp,
        noise_sd_hu=acq.noise_sd_hu,
        labels=labels,
        frame_labels=frame_labels,
        mbf=mbf,
        aha17=aha17,
        truth=truth,
    )
