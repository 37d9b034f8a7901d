"""A phantom patient on a scanner's native grid: 256²/512² matrices, sub-millimetre pixels, thin slices.

Rendering the anatomy directly at 0.4 mm on 512² × 320 slices with
supersampling would cost minutes and tens of GB per patient, and buys nothing
a stage can see: the scanner's PSF (~0.8 mm) already blurs below that. So the
patient is rendered noise-free on an *anatomy grid* that covers the native
field of view at no finer than `anatomy_spacing_mm` per axis, each frame is
interpolated (separable, linear) onto the native grid, and the CT noise is
added there, with the drawn SD and in-plane correlation in native voxels,
so the noise texture is the native grid's. Truth labels, MBF and AHA maps are
taken to the native grid by nearest neighbour.

Frames are produced one at a time (`native_frames`), so a 512² × 320 × 20
study never has to exist in memory as float.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from ctp_steps.phantom.params import NativeGrid, PatientSpec, PhantomParams
from ctp_steps.phantom.patient import CT_RANGE_HU, PhantomPatient, generate_patient
from ctp_steps.phantom.render import add_noise
from ctp_steps.types import Geometry

DEFAULT_ANATOMY_SPACING_MM = 1.0  # near the PSF's width: a finer anatomy grid changes little that a stage sees


@dataclass
class NativeStudy:
    """A patient on its native grid. `clean` holds the noise-free frames on the anatomy grid."""

    clean: PhantomPatient
    grid: NativeGrid
    geometry: Geometry
    noise_correlation_sigma_vox: float  # in native voxels

    @property
    def n_frames(self) -> int:
        return self.clean.frames_hu.shape[0]


def anatomy_params(params: PhantomParams, native: NativeGrid, anatomy_spacing_mm: float) -> PhantomParams:
    """The phantom's own grid for `native`: same field of view, voxels no finer than `anatomy_spacing_mm`."""
    spacing = np.maximum(np.asarray(native.spacing_zyx_mm), anatomy_spacing_mm)
    shape = np.maximum(np.ceil(native.extent_zyx_mm / spacing).astype(int), 4)
    spacing = native.extent_zyx_mm / shape  # exactly the native field of view
    return params.model_copy(
        update={"shape_zyx": tuple(int(n) for n in shape), "spacing_zyx_mm": tuple(float(s) for s in spacing),
                "supersample": 1}
    )


def native_geometry(anatomy: Geometry, anatomy_shape_zyx: tuple[int, int, int], native: NativeGrid) -> Geometry:
    """The native grid covering the same field of view (same outer box, identity direction)."""
    sp_a = np.asarray(anatomy.spacing)
    sp_n = np.asarray(native.spacing_zyx_mm[::-1])
    corner = np.asarray(anatomy.origin) - sp_a / 2  # outer corner of the field of view
    return Geometry(tuple((corner + sp_n / 2).tolist()), tuple(sp_n.tolist()), anatomy.direction)


def native_study(
    spec: PatientSpec,
    params: PhantomParams,
    native: NativeGrid,
    anatomy_spacing_mm: float = DEFAULT_ANATOMY_SPACING_MM,
) -> NativeStudy:
    """Render `spec` noise-free on the anatomy grid; frames come out of `native_frames`."""
    own = anatomy_params(params, native, anatomy_spacing_mm)
    clean = generate_patient(spec, own, with_noise=False)
    geometry = native_geometry(clean.geometry, own.shape_zyx, native)
    return NativeStudy(clean, native, geometry, params.noise_correlation_sigma_vox)


def frame_noise_rng(seed: int, frame: int) -> np.random.Generator:
    """The native noise of one frame: its own stream, so frames can be rendered in any order."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x6E6F6973, frame)))


def _linear_weights(n_in: int, n_out: int, sp_in: float, sp_out: float) -> tuple[np.ndarray, np.ndarray]:
    """Lower source index and weight of each target voxel centre (both grids share the outer corner)."""
    centre = ((np.arange(n_out) + 0.5) * sp_out) / sp_in - 0.5
    centre = np.clip(centre, 0.0, n_in - 1.0)
    lo = np.minimum(np.floor(centre).astype(np.int64), max(n_in - 2, 0))
    return lo, (centre - lo).astype(np.float32)


def interpolate_linear(volume: np.ndarray, spacing_in_zyx, shape_out_zyx, spacing_out_zyx) -> np.ndarray:
    """Separable linear interpolation between two grids sharing the outer corner of their field of view."""
    out = volume.astype(np.float32, copy=False)
    for axis in range(3):
        n_in = out.shape[axis]
        if n_in == 1:
            out = np.repeat(out, shape_out_zyx[axis], axis=axis)
            continue
        lo, w = _linear_weights(n_in, shape_out_zyx[axis], spacing_in_zyx[axis], spacing_out_zyx[axis])
        shape = [1, 1, 1]
        shape[axis] = -1
        w = w.reshape(shape)
        out = np.take(out, lo, axis=axis) * (1 - w) + np.take(out, lo + 1, axis=axis) * w
    return out


def nearest(volume: np.ndarray, spacing_in_zyx, shape_out_zyx, spacing_out_zyx) -> np.ndarray:
    """Nearest-neighbour resampling (labels) between grids sharing the outer corner."""
    out = volume
    for axis in range(3):
        centre = ((np.arange(shape_out_zyx[axis]) + 0.5) * spacing_out_zyx[axis]) / spacing_in_zyx[axis] - 0.5
        idx = np.clip(np.rint(centre).astype(np.int64), 0, out.shape[axis] - 1)
        out = np.take(out, idx, axis=axis)
    return out


def native_frames(study: NativeStudy) -> Iterator[np.ndarray]:
    """Frame after frame on the native grid: float32 HU with native-grid noise, clipped to the CT range."""
    spacing_in = study.clean.geometry.spacing[::-1]
    sd = float(study.clean.noise_sd_hu)
    for f in range(study.n_frames):
        frame = interpolate_linear(study.clean.frames_hu[f], spacing_in, study.grid.shape_zyx, study.grid.spacing_zyx_mm)
        rng = frame_noise_rng(study.clean.spec.seed, f)
        noisy = add_noise(frame[None], sd, rng, study.noise_correlation_sigma_vox)[0]
        yield np.clip(noisy, *CT_RANGE_HU)


def native_truth(study: NativeStudy) -> dict[str, np.ndarray]:
    """Reference labels, MBF and AHA segments on the native grid (nearest neighbour)."""
    sp_in = study.clean.geometry.spacing[::-1]
    out = {}
    for name in ("labels", "mbf", "aha17"):
        out[name] = nearest(getattr(study.clean, name), sp_in, study.grid.shape_zyx, study.grid.spacing_zyx_mm)
    return out


def as_patient(study: NativeStudy) -> PhantomPatient:
    """The study as a PhantomPatient on the native grid (all frames in memory: for writers that need them)."""
    frames = np.empty((study.n_frames, *study.grid.shape_zyx), dtype=np.float32)
    for f, frame in enumerate(native_frames(study)):
        frames[f] = frame
    truth = native_truth(study)
    sp_in = study.clean.geometry.spacing[::-1]
    frame_labels = np.empty((study.n_frames, *study.grid.shape_zyx), dtype=np.uint8)
    for f, labels in enumerate(study.clean.frame_labels):
        frame_labels[f] = nearest(labels, sp_in, study.grid.shape_zyx, study.grid.spacing_zyx_mm)
    record = dict(study.clean.truth, geometry=study.geometry.to_dict(), rendering={
        "native_shape_zyx": list(study.grid.shape_zyx),
        "native_spacing_zyx_mm": list(study.grid.spacing_zyx_mm),
        "anatomy_spacing_zyx_mm": list(study.clean.geometry.spacing[::-1]),
        "note": "anatomy rendered noise-free on the anatomy grid, interpolated linearly, noise added on the native grid",
    })
    return replace(
        study.clean, frames_hu=frames, geometry=study.geometry, labels=truth["labels"], mbf=truth["mbf"],
        aha17=truth["aha17"], frame_labels=frame_labels, truth=record,
    )
