"""The shifted phantom family: patients the nets were never trained on, to measure generalisation.

`generate_shifted_patient(spec, params)` returns the same `PhantomPatient` (and
truth.json keys) as `generate_patient`, so DICOM writing, conversion and every
validation metric work unchanged, but it is built by other code paths:

(a) anatomy: a prolate-spheroidal LV shell whose wall thins base → apex, long
    axis tilted 25-40° from the default mean orientation, an ellipsoidal RV,
    the heart set off 12-22 mm from the field-of-view centre
    (`shifted_anatomy.py`);
(b) kinetics: a Parker-shaped AIF and a two-compartment exchange myocardium
    with PS drawn independently of flow (`shifted_kinetics.py`); its own MBF
    map (wavefront-shaped ischemia, other heterogeneity modes), frame timing
    (three-phase protocol) and motion draws;
(c) grids: a native scanner grid drawn per patient (256², 0.66-0.9 mm pixels,
    2-3 mm slices), rendered noise-free at ≥ 1 mm and interpolated with the
    noise added on the native voxels (as `native.py` does);
(d) storage: head-first and feet-first through the vendor styles of the spec.

Every range in `ShiftedParams` says where it comes from: physiology/literature,
or "outside the training distribution" with the training phantom's range
(`PhantomParams`) beside it. Seeds: every random stream is
SeedSequence(spec.seed, spawn_key=(SHIFTED_SPAWN_KEY, stream)), a namespace no
default-family stream uses (those are spawn_key=(stream,) and, for native-grid
noise, (0x6E6F6973, frame)), so even a spec whose seed a training patient had
would draw nothing the training saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import expit

from ctp_steps.phantom.anatomy import (
    AORTA, LA_BLOOD, LABEL_NAMES, LV_BLOOD, N_CLASSES, RV_BLOOD, RV_WALL, Body,
)
from ctp_steps.phantom.grid import IDENTITY, PhantomGrid
from ctp_steps.phantom.native import interpolate_linear, native_geometry, nearest
from ctp_steps.phantom.params import NativeGrid, PatientSpec, PhantomParams, Range
from ctp_steps.phantom.patient import CT_RANGE_HU, PhantomPatient
from ctp_steps.phantom.perfusion import TERRITORIES, territory_weights
from ctp_steps.phantom.render import add_noise, render_frames
from ctp_steps.phantom.shifted_anatomy import (
    Atrium, EllipsoidRV, ShiftedAnatomy, SpheroidLV, build_scene, rotate, surface_points, unit,
)
from ctp_steps.phantom.shifted_kinetics import ParkerAIF, ShiftedKinetics
from ctp_steps.phantom.truth import mbf_summary, reference_maps, segment_map
from ctp_steps.types import Geometry

FAMILY = "shifted"
SHIFTED_SPAWN_KEY = 0x5348  # "SH": the shifted family's seed namespace
STREAMS = ("grid", "anatomy", "perfusion", "timing", "kinetics", "motion", "acquisition", "noise")
DEFAULT_LONG_AXIS = unit(np.array([1.0, -1.0, -1.0]))  # the training phantom's mean LV axis (anatomy.py)


def shifted_rng(seed: int, stream: str, *extra: int) -> np.random.Generator:
    """One random stream of the shifted family (its own spawn-key namespace)."""
    key = (SHIFTED_SPAWN_KEY, STREAMS.index(stream), *extra)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _u(rng: np.random.Generator, r: tuple[float, float]) -> float:
    return float(rng.uniform(r[0], r[1]))


class ShiftedParams(BaseModel):
    """Ranges of the shifted family, drawn uniformly per patient. `Training:` names the default family's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # (c) grids — training renders 40×80×80 at 3.0×2.5×2.5 mm (PhantomParams.shape_zyx/spacing_zyx_mm)
    matrix: int = Field(256, description="In-plane matrix of the native grid (a common CT reconstruction matrix).")
    pixel_mm: Range = Field((0.66, 0.9), description="In-plane pixel: 170-230 mm cardiac FOV on 256². Training: 2.5 mm.")
    slice_mm: Range = Field((2.0, 3.0), description="Slice spacing. Training: 3.0 mm.")
    z_extent_mm: Range = Field((130.0, 150.0), description="Scan length (wide-detector/shuttle coverage). Training: 120 mm.")
    anatomy_spacing_mm: float = Field(1.0, description="Noise-free rendering grid (as native.py): ≥ this per axis.")
    table_center_mm: tuple[Range, Range, Range] = Field(
        ((-60.0, 60.0), (-60.0, 60.0), (-650.0, -350.0)),
        description="FOV centre in LPS (reference frame anywhere). Training: x, y ±20, z −300…−100.")
    psf_sigma_mm: Range = Field((0.45, 0.7), description="Scanner PSF SD (sharper kernel). Training: 0.8 mm.")
    noise_sd_hu: Range = Field((20.0, 45.0), description="Noise SD on the native voxels. Training: 10-30 HU on 2.5 mm voxels.")
    noise_correlation_px: Range = Field((0.9, 1.4), description="In-plane noise blur (native pixels). Training: 0.6 voxel.")
    kvp_choices: tuple[float, ...] = Field((80.0, 90.0, 100.0), description="Tube voltages. Training: 70/80/100.")

    # (a) anatomy
    axis_tilt_deg: Range = Field(
        (25.0, 40.0), description="LV long-axis deviation from LPS (1,−1,−1)/√3, random direction. "
        "Training: ≤ lv_axis_tilt_max_deg = 15°.")
    septum_rotation_deg: Range = Field(
        (12.0, 30.0), description="Septum rotation about the long axis, random sign. Training: ±10°.")
    cavity_radius_mm: Range = Field(
        (22.0, 28.0), description="Endocardial short semi-axis: LV end-diastolic diameter 44-56 mm (normal range "
        "42-58 mm, Lang et al., J Am Soc Echocardiogr 2015;28:1-39). Training: 20 × lv_scale = 18-22 mm.")
    cavity_half_length_mm: Range = Field(
        (42.0, 52.0), description="Endocardial long semi-axis (rounder LV than training's 47-57 mm).")
    base_height: Range = Field(
        (0.35, 0.55), description="Base plane beyond the equator, fraction of the long semi-axis. Training: 0.2-0.3.")
    wall_base_mm: Range = Field(
        (10.0, 14.0), description="Basal wall; thins to the apical wall (f/(1−f) × cavity length) — "
        "real walls thin towards the apex. Training: one constant lateral wall 8-12 mm.")
    heart_offset_mm: Range = Field(
        (12.0, 22.0), description="LV mid-point distance from the FOV centre in-plane, random direction. "
        "Training: ≤ 10 mm per axis.")
    rv_depth_mm: Range = Field((12.0, 22.0), description="RV blood thickness at the septum.")
    rv_width: Range = Field((1.05, 1.35), description="RV ellipsoid semi-axis across the septum / LV epicardial radius.")
    rv_wall_mm: Range = Field((3.0, 5.0), description="RV free wall. Training: 2.5-4 mm.")

    # (b) perfusion and kinetics
    normal_mbf: Range = Field(
        (200.0, 350.0), description="Hyperaemic MBF of normal territories, 15O-water PET 2.0-4.5 mL/g/min "
        "(e.g. Danad et al., JACC Cardiovasc Imaging 2014;7:... ; Kajander 2011). Training: 150-250.")
    ischemic_mbf: Range = Field((30.0, 90.0), description="Ischemic stress MBF. Training: 50-100.")
    ischemic_territory_probs: tuple[float, float, float] = Field((0.3, 0.4, 0.3), description="0, 1, 2 territories.")
    wavefront_start: Range = Field((0.1, 0.6), description="Ischemia starts here along base→apex.")
    wavefront_extent: tuple[Range, Range] = Field(
        ((0.2, 0.5), (0.6, 1.2)), description="Transmural extent where it starts and at the apex (the wavefront "
        "phenomenon grows subendocardial → transmural; Reimer & Jennings 1979). Training: one extent 0.4-1.2.")
    border_width_mm: Range = Field((1.0, 2.0), description="Logistic border scale. Training: 0.75 mm.")
    heterogeneity: Range = Field((0.08, 0.15), description="Smooth relative MBF heterogeneity. Training: 0.05-0.10.")
    permeability_surface: Range = Field(
        (70.0, 130.0), description="Capillary PS (mL/100mL/min), drawn independently of flow: small hydrophilic "
        "tracers in myocardium 0.7-1.3 mL/min/g (Bassingthwaighte et al., Circ Res 1989;65:997-1020). "
        "Training: PS = 60 + 0.5·MBF (flow-coupled).")
    blood_volume: Range = Field((0.10, 0.15), description="vb under vasodilation. Training: 0.08-0.12.")
    interstitial_volume: Range = Field(
        (0.15, 0.25), description="ve: myocardial ECV 0.25 ± 0.04 minus plasma (Haaf et al., JCMR 2016;18:89). "
        "Training: 0.25 fixed.")
    hematocrit: Range = Field((0.36, 0.46), description="Hct of the exchange model (normal adult range).")
    tissue_delay_s: Range = Field((2.0, 3.5), description="Myocardial delay after the aortic AIF. Training: 1-2 s.")
    aif_arrival_s: Range = Field((4.0, 9.0), description="Bolus arrival after the first frame.")
    aif_stretch: Range = Field((1.0, 1.6), description="Time stretch of Parker's AIF (peak 10-16 s after arrival).")
    aif_peak_hu: Range = Field((350.0, 750.0), description="Aortic peak at 80-100 kVp. Training: 300-600 HU.")
    aif_recirculation: Range = Field((0.6, 1.5), description="Scale of Parker's recirculation Gaussian.")
    aif_washout: Range = Field((0.6, 1.3), description="Scale of Parker's washout term.")
    lv_lead_s: Range = Field((0.5, 2.0), description="LV blood ahead of the descending aorta. Training: 1 s.")
    rv_lead_s: Range = Field((3.0, 5.0), description="RV blood ahead of the aorta. Training: 3 s.")
    kinetics_dt_s: float = Field(0.1, description="Integration step of the exchange model (s).")

    # timing and motion
    n_frames: tuple[int, int] = Field((10, 15), description="Frames. Training: 12-20.")
    duration_s: Range = Field((40.0, 55.0), description="First → last frame. Training: 30-40 s.")
    rigid_shift_max_mm: float = Field(8.0, description="Largest z shift (x, y: 50 %). Training: 5 mm (x, y: 40 %).")
    n_deformation_modes: int = Field(4, description="Gaussian bumps near the heart. Training: 3.")
    deformation_sigma_mm: Range = Field((15.0, 25.0), description="Bump width. Training: 25-40 mm.")
    deformation_max_mm: float = Field(2.5, description="Largest bump displacement. Training: 2 mm.")


# ---------------------------------------------------------------- draws


def draw_native_grid(rng: np.random.Generator, p: ShiftedParams) -> tuple[NativeGrid, np.ndarray]:
    """The patient's scanner grid and the world position of its FOV centre."""
    px, sz = _u(rng, p.pixel_mm), _u(rng, p.slice_mm)
    nz = int(np.ceil(_u(rng, p.z_extent_mm) / sz))
    centre = np.array([_u(rng, r) for r in p.table_center_mm])
    px, sz = round(px, 4), round(sz, 3)
    return NativeGrid(shape_zyx=(nz, p.matrix, p.matrix), spacing_zyx_mm=(sz, px, px)), centre


def anatomy_grid(native: NativeGrid, centre: np.ndarray, p: ShiftedParams) -> PhantomGrid:
    """Noise-free rendering grid over the native FOV (≥ anatomy_spacing_mm per axis), padded for motion."""
    spacing = np.maximum(np.asarray(native.spacing_zyx_mm), p.anatomy_spacing_mm)
    shape = np.maximum(np.ceil(native.extent_zyx_mm / spacing).astype(int), 4)
    spacing = native.extent_zyx_mm / shape
    sp_xyz = spacing[::-1]
    origin = centre - (shape[::-1] - 1) / 2 * sp_xyz
    margin = p.rigid_shift_max_mm + p.n_deformation_modes * p.deformation_max_mm + 2.0
    pad = tuple(int(np.ceil(margin / s)) for s in spacing)
    geometry = Geometry(tuple(origin.tolist()), tuple(sp_xyz.tolist()), IDENTITY)
    return PhantomGrid(geometry=geometry, shape=tuple(int(n) for n in shape), factor=1, pad=pad)


def _random_perpendicular(rng: np.random.Generator, u: np.ndarray) -> np.ndarray:
    return unit(np.cross(u, unit(rng.normal(size=3))))


def draw_heart(rng: np.random.Generator, p: ShiftedParams, cap_fraction: float, fov_centre: np.ndarray):
    """LV shell, RV ellipsoid and LA of one patient (world mm)."""
    tilt = np.radians(_u(rng, p.axis_tilt_deg))
    u = unit(np.cos(tilt) * DEFAULT_LONG_AXIS + np.sin(tilt) * _random_perpendicular(rng, DEFAULT_LONG_AXIS))
    septum0 = np.array([-1.0, -1.0, 0.0])
    septum = unit(septum0 - (septum0 @ u) * u)
    septum = rotate(septum, u, np.radians(_u(rng, p.septum_rotation_deg)) * rng.choice([-1.0, 1.0]))

    r_endo = _u(rng, p.cavity_radius_mm)
    l_endo = max(_u(rng, p.cavity_half_length_mm), r_endo + 8.0)
    d = float(np.sqrt(l_endo**2 - r_endo**2))
    mu_e = float(np.arccosh(l_endo / d))
    h = _u(rng, p.base_height) * l_endo
    cos_nu_b = -h / l_endo
    apical = cap_fraction / (1 - cap_fraction) * (h + l_endo)
    dmu_apex = float(np.arccosh(np.cosh(mu_e) + apical / d) - mu_e)
    wall_base = _u(rng, p.wall_base_mm)
    dmu_base = wall_base / (d * float(np.hypot(np.sinh(mu_e), np.sqrt(1 - cos_nu_b**2))))
    offset_dir = rng.uniform(0, 2 * np.pi)
    off = _u(rng, p.heart_offset_mm)
    mid = fov_centre + np.array([off * np.cos(offset_dir), off * np.sin(offset_dir), rng.uniform(-8, 8)])
    shape = SpheroidLV(base=np.zeros(3), u=u, ref=septum, ortho=np.cross(u, septum), septum=septum, focal_mm=d,
                       mu_endo=mu_e, dmu_base=dmu_base, dmu_apex=dmu_apex, base_height_mm=h, cos_nu_base=cos_nu_b)
    base = mid - shape.length / 2 * u
    lv0 = SpheroidLV(**{**shape.__dict__, "base": base})

    r_epi = lv0.epi_radius_at(0.5 * lv0.length, septum)
    depth = _u(rng, p.rv_depth_mm)
    c_off = rng.uniform(0.3, 0.6) * r_epi
    semi = np.array([rng.uniform(0.42, 0.5) * lv0.length, r_epi - c_off + depth, _u(rng, p.rv_width) * r_epi])
    rv_mid = base + rng.uniform(0.35, 0.45) * lv0.length * u + c_off * septum
    rv = EllipsoidRV(center=rv_mid, axes=np.stack([u, septum, np.cross(u, septum)]), semi_mm=semi,
                     wall_mm=_u(rng, p.rv_wall_mm), top_mm=rng.uniform(5.0, 12.0))
    angle = insertion_angle(lv0, rv)
    ref = rotate(septum, u, -np.radians(angle))
    lv = SpheroidLV(**{**lv0.__dict__, "ref": ref, "ortho": np.cross(u, ref)})
    la = Atrium(center_a_mm=-(rng.uniform(3.0, 5.0) + (half := rng.uniform(15.0, 20.0))), half_length_mm=half,
                radius_mm=rng.uniform(18.0, 24.0))
    return lv, rv, la, angle


def insertion_angle(lv: SpheroidLV, rv: EllipsoidRV) -> float:
    """Degrees from the septum (about −u) where the RV ellipsoid leaves the LV epicardium at 25 % of the length."""
    a = 0.25 * lv.length
    for deg in np.arange(0.0, 180.0, 0.5):
        direction = rotate(lv.septum, lv.u, -np.radians(deg))
        point = lv.base + a * lv.u + (lv.epi_radius_at(a, direction) + 1.0) * direction
        rel = tuple(point - rv.center)
        if rv.level(rel) >= 1:
            return float(deg)
    return 180.0


def place_body(rng: np.random.Generator, anat_points: np.ndarray, lv: SpheroidLV) -> Body:
    """The chest around the heart (a wider, flatter torso than training, aorta further left)."""
    lo, hi = anat_points.min(axis=0), anat_points.max(axis=0)
    mid = lv.base + lv.length / 2 * lv.u
    muscle, fat = rng.uniform(8, 14), rng.uniform(12, 35)
    y_front = lo[1] - rng.uniform(3, 8) - muscle - fat
    aorta_radius = rng.uniform(12.0, 16.0)
    spine_radius = rng.uniform(16.0, 20.0)
    spine_y = hi[1] + aorta_radius + rng.uniform(12, 18)
    torso_x = mid[0] - rng.uniform(20, 40)
    aorta_xy = (torso_x + rng.uniform(24, 32), spine_y - rng.uniform(4, 9))
    y_back = spine_y + spine_radius + rng.uniform(55, 70)
    b = (y_back - y_front) / 2
    a = b * rng.uniform(1.35, 1.55)
    torso_y = (y_back + y_front) / 2
    ac, bc = a - fat - muscle, b - fat - muscle
    lungs = tuple(
        (torso_x + side * 0.5 * ac, torso_y + 0.05 * bc, 0.47 * ac, 0.88 * bc, lo[2] + rng.uniform(*top))
        for side, top in ((+1, (-5.0, 10.0)), (-1, (5.0, 20.0)))
    )
    return Body(torso_xy=(torso_x, torso_y), torso_ab=(a, b), fat=fat, muscle=muscle, lungs=lungs,
                dome_drop=rng.uniform(25, 40), sternum_xy=(torso_x, y_front + fat + muscle / 2),
                spine_xy=(torso_x, spine_y), spine_radius=spine_radius, aorta_xy=aorta_xy, aorta_radius=aorta_radius)


def draw_anatomy(seed: int, p: ShiftedParams, cap_fraction: float) -> tuple[ShiftedAnatomy, NativeGrid]:
    native, centre = draw_native_grid(shifted_rng(seed, "grid"), p)
    grid = anatomy_grid(native, centre, p)
    rng = shifted_rng(seed, "anatomy")
    lv, rv, la, angle = draw_heart(rng, p, cap_fraction, centre)
    hu = {
        "air": -1000.0, "fat": _u(rng, (-120.0, -90.0)), "soft_tissue": _u(rng, (40.0, 60.0)),
        "lung": _u(rng, (-900.0, -800.0)), "liver": _u(rng, (55.0, 70.0)), "bone": _u(rng, (250.0, 450.0)),
        "cortical_bone": _u(rng, (700.0, 1100.0)), "csf": _u(rng, (5.0, 15.0)), "blood": _u(rng, (35.0, 55.0)),
        "myocardium": _u(rng, (30.0, 50.0)),
    }
    provisional = ShiftedAnatomy(grid, lv, rv, la, None, hu, angle)  # body placed around the heart's points
    body = place_body(rng, surface_points(provisional, 3.0), lv)
    shift = aorta_in_view(grid, body)
    if shift.any():
        grid = anatomy_grid(native, centre + shift, p)
    return ShiftedAnatomy(grid, lv, rv, la, body, hu, angle), native


def aorta_in_view(grid: PhantomGrid, body: Body, margin_mm: float = 10.0) -> np.ndarray:
    """Smallest in-plane move of the field of view that keeps the descending aorta (+ margin) inside it:
    the operator of a perfusion scan frames the heart and the descending aorta, where the AIF is read."""
    sp = np.asarray(grid.geometry.spacing)
    lo = np.asarray(grid.geometry.origin) - sp / 2
    hi = lo + np.asarray(grid.shape[::-1]) * sp
    r = body.aorta_radius + margin_mm
    shift = np.zeros(3)
    for axis in range(2):
        c = body.aorta_xy[axis]
        if c + r > hi[axis]:
            shift[axis] = c + r - hi[axis]
        elif c - r < lo[axis]:
            shift[axis] = (c - r) - lo[axis]
    return shift


@dataclass(frozen=True)
class ShiftedPerfusion:
    normal_mbf: dict[str, float]
    ischemia: dict[str, dict]  # territory → mbf, start, extent_start, extent_apex
    heterogeneity: float
    coefficients: tuple[float, ...]
    border_width_mm: float

    def record(self) -> dict:
        """truth.json `ischemia` (the default family's keys, plus the wavefront's)."""
        return {
            "territories": sorted(self.ischemia),
            "severity_mbf": {k: v["mbf"] for k, v in self.ischemia.items()},
            "extent": {k: {"axial_start_fraction": v["start"], "transmural_extent": v["extent_apex"],
                           "transmural_extent_at_start": v["extent_start"]} for k, v in self.ischemia.items()},
            "normal_mbf": dict(self.normal_mbf),
            "heterogeneity": self.heterogeneity,
            "border_width_mm": self.border_width_mm,
            "pattern": "wavefront: transmural extent grows linearly from its start level to the apex",
        }


def draw_perfusion(rng: np.random.Generator, p: ShiftedParams) -> ShiftedPerfusion:
    normal = {t: _u(rng, p.normal_mbf) for t in TERRITORIES}
    n = int(rng.choice(3, p=p.ischemic_territory_probs))
    chosen = sorted(rng.choice(len(TERRITORIES), size=n, replace=False).tolist())
    ischemia = {
        TERRITORIES[i]: {"mbf": _u(rng, p.ischemic_mbf), "start": _u(rng, p.wavefront_start),
                         "extent_start": _u(rng, p.wavefront_extent[0]), "extent_apex": _u(rng, p.wavefront_extent[1])}
        for i in chosen
    }
    return ShiftedPerfusion(normal, ischemia, _u(rng, p.heterogeneity), tuple(rng.normal(size=6).tolist()),
                            _u(rng, p.border_width_mm))


def mbf_field(perf: ShiftedPerfusion, heart, lv: SpheroidLV, cap_fraction: float) -> np.ndarray:
    """True MBF of every myocardium voxel: AHA territories, wavefront ischemia, smooth heterogeneity."""
    w = perf.border_width_mm
    wall = lv.focal_mm * lv.dmu_base * np.sinh(lv.mu_endo)
    weights = territory_weights(heart.t, heart.theta, heart.radius, lv.length, w, cap_fraction)
    mbf = np.zeros_like(heart.t)
    for terr in TERRITORIES:
        normal = perf.normal_mbf[terr]
        isch = perf.ischemia.get(terr)
        if isch is None:
            mbf += weights[terr] * normal
            continue
        frac = np.clip((heart.t - isch["start"]) / max(1.0 - isch["start"], 1e-6), 0.0, 1.0)
        extent = isch["extent_start"] + (isch["extent_apex"] - isch["extent_start"]) * frac
        q = expit((heart.t - isch["start"]) * lv.length / w) * expit((extent - heart.depth) * wall / w)
        mbf += weights[terr] * ((1 - q) * normal + q * isch["mbf"])
    c = np.asarray(perf.coefficients)
    th = np.radians(heart.theta)
    modes = np.stack([np.cos(th), np.sin(th), np.cos(3 * th), np.sin(3 * th), (2 * heart.t - 1) ** 2 * 2 - 1,
                      2 * heart.depth - 1])
    return mbf * (1 + perf.heterogeneity * (c @ modes) / np.abs(c).sum())


def draw_frame_times(rng: np.random.Generator, p: ShiftedParams, arrival_s: float) -> np.ndarray:
    """Three-phase protocol: sparse baseline (≥ 2 frames before arrival − 1 s), dense first pass, sparse late."""
    n = int(rng.integers(p.n_frames[0], p.n_frames[1] + 1))
    duration = _u(rng, p.duration_s)
    n_base = int(rng.integers(2, 4))
    base = np.linspace(0.0, max(arrival_s - 1.0, 0.5), n_base)
    n_late = int(rng.integers(2, 4))
    first_end = rng.uniform(0.55, 0.7) * duration
    n_first = n - n_base - n_late
    first = np.linspace(base[-1], first_end, n_first + 1)[1:]
    first = first + rng.uniform(-0.2, 0.2, size=first.size) * np.diff(np.append(base[-1], first)).mean()
    late = np.linspace(first_end, duration, n_late + 1)[1:]
    times = np.round(np.sort(np.concatenate([base, first, late])), 3)
    return times - times[0]


def draw_kinetics(rng: np.random.Generator, p: ShiftedParams, arrival_s: float) -> ShiftedKinetics:
    stretch, peak = _u(rng, p.aif_stretch), _u(rng, p.aif_peak_hu)
    recirc, wash = _u(rng, p.aif_recirculation), _u(rng, p.aif_washout)
    rv_lead = _u(rng, p.rv_lead_s)
    return ShiftedKinetics(
        aif=ParkerAIF(arrival_s, stretch, peak, recirc, wash),
        rv_first_pass=ParkerAIF(arrival_s - rv_lead, stretch * rng.uniform(0.55, 0.75),
                                peak * rng.uniform(1.1, 1.4), recirc, wash),
        lv_lead_s=_u(rng, p.lv_lead_s),
        rv_lead_s=rv_lead,
        tissue_delay_s=_u(rng, p.tissue_delay_s),
        blood_volume=_u(rng, p.blood_volume),
        interstitial_volume=_u(rng, p.interstitial_volume),
        permeability_surface=_u(rng, p.permeability_surface),
        hematocrit=_u(rng, p.hematocrit),
        dt_s=p.kinetics_dt_s,
    )


def draw_motion(rng: np.random.Generator, p: ShiftedParams, heart_center: np.ndarray, n_frames: int) -> list[dict]:
    """Per-frame motion in the documented closed form (motion.py), with its own amplitudes and bumps;
    a smooth breathing drift (not independent frames) plus bumps that vary frame to frame."""
    severity = rng.uniform(0.3, 1.0)
    centers = [heart_center + rng.uniform(-25.0, 25.0, size=3) for _ in range(p.n_deformation_modes)]
    sigmas = [_u(rng, p.deformation_sigma_mm) for _ in range(p.n_deformation_modes)]
    phase, period = rng.uniform(0, 2 * np.pi), rng.uniform(4.0, 9.0)
    frames = []
    for f in range(n_frames):
        drift = np.sin(phase + 2 * np.pi * f / period)
        shift = severity * p.rigid_shift_max_mm * (
            np.array([0.5, 0.5, 1.0]) * (0.6 * drift + 0.4 * rng.uniform(-1.0, 1.0, size=3)))
        modes = []
        for c, s in zip(centers, sigmas):
            direction = rng.normal(size=3)
            size = severity * p.deformation_max_mm * rng.uniform(0.0, 1.0)
            modes.append({"center_mm": c.tolist(), "sigma_mm": s,
                          "vector_mm": (size * direction / np.linalg.norm(direction)).tolist()})
        frames.append({"translation_mm": shift.tolist(), "modes": modes})
    return frames


# ---------------------------------------------------------------- assembly


@dataclass
class ShiftedStudy:
    """A shifted patient on its anatomy grid (noise-free frames) and its native grid."""

    clean: PhantomPatient
    native: NativeGrid
    native_geometry: Geometry
    noise_correlation_px: float


def shifted_study(spec: PatientSpec, params: PhantomParams, shifted: ShiftedParams | None = None) -> ShiftedStudy:
    """Render a patient noise-free on its anatomy grid (deterministic in spec, params, shifted).

    Only `apex_cap_fraction` and `ischemia_threshold_mbf` come from `params`: they are conventions the
    pipeline shares with the truth, not phantom draws.
    """
    p = shifted or ShiftedParams()
    f = params.apex_cap_fraction
    anat, native = draw_anatomy(spec.seed, p, f)
    grid = anat.grid
    perf = draw_perfusion(shifted_rng(spec.seed, "perfusion"), p)
    timing = shifted_rng(spec.seed, "timing")
    arrival = _u(timing, p.aif_arrival_s)
    times = draw_frame_times(timing, p, arrival)
    kin = draw_kinetics(shifted_rng(spec.seed, "kinetics"), p, arrival)
    acq = shifted_rng(spec.seed, "acquisition")
    kvp = float(acq.choice(np.asarray(p.kvp_choices)))
    noise_sd = _u(acq, p.noise_sd_hu)
    noise_corr = _u(acq, p.noise_correlation_px)
    psf = _u(acq, p.psf_sigma_mm)
    heart_center = anat.lv.base + anat.lv.length / 2 * anat.lv.u
    motion = draw_motion(shifted_rng(spec.seed, "motion"), p, heart_center, len(times))

    scene = build_scene(anat, grid.full_box())
    mbf_myo = mbf_field(perf, scene.heart, anat.lv, f)
    labels, mbf = reference_maps(scene, mbf_myo, grid, grid.output_box())
    landmarks = anat.landmarks
    aha17 = segment_map(labels, grid, landmarks, f)

    class_enh = np.zeros((len(times), N_CLASSES))
    class_enh[:, AORTA] = kin.aorta(times)
    class_enh[:, LV_BLOOD] = class_enh[:, LA_BLOOD] = kin.lv(times)
    class_enh[:, RV_BLOOD] = kin.rv(times)
    tissue = kin.tissue(np.append(mbf_myo, np.mean(list(perf.normal_mbf.values()))), times)
    class_enh[:, RV_WALL] = tissue[:, -1]
    frames, frame_labels = render_frames(scene, grid, anat.static_hu(), class_enh, tissue[:, :-1], motion, psf)

    truth = {
        "patient_id": spec.patient_id, "center": spec.center, "role": spec.role, "seed": spec.seed,
        "vendor_style": spec.vendor_style, "family": FAMILY, "kvp": kvp, "noise_sd_hu": noise_sd,
        "geometry": grid.geometry.to_dict(), "n_frames": len(times), "frame_times_s": times.tolist(),
        "labels": {str(k): v for k, v in LABEL_NAMES.items()}, "landmarks": landmarks,
        "aha_apex_cap_fraction": f, "ischemia_threshold_mbf": params.ischemia_threshold_mbf,
        **mbf_summary(labels, mbf, aha17, grid.geometry.voxel_ml, params.ischemia_threshold_mbf),
        **kin.aif_summary(times),
        "baseline_hu": dict(anat.hu), "ischemia": perf.record(), "kinetics": kin.record(),
        "anatomy": anat.record(), "psf_sigma_mm": psf,
        "motion": {
            "convention": "frame image at world point p shows the reference anatomy at p + u(p); "
            "u(p) = translation_mm + sum over modes of vector_mm * exp(-|p - center_mm|^2 / (2 sigma_mm^2)), "
            "world LPS mm",
            "frames": motion,
        },
    }
    clean = PhantomPatient(spec=spec, frames_hu=frames, frame_times_s=times, geometry=grid.geometry, kvp=kvp,
                           noise_sd_hu=noise_sd, labels=labels, frame_labels=frame_labels, mbf=mbf, aha17=aha17,
                           truth=truth)
    geometry = native_geometry(grid.geometry, grid.shape, native)
    return ShiftedStudy(clean, native, geometry, noise_corr)


def generate_shifted_patient(
    spec: PatientSpec, params: PhantomParams, shifted: ShiftedParams | None = None
) -> PhantomPatient:
    """The shifted patient on its native grid, noise added there (the DICOM writer's input).

    Same dataclass and truth keys as `generate_patient` (plus `family`, `rendering`, `psf_sigma_mm`).
    """
    study = shifted_study(spec, params, shifted)
    clean, grid = study.clean, study.native
    sp_in = clean.geometry.spacing[::-1]
    frames = np.empty((clean.frames_hu.shape[0], *grid.shape_zyx), dtype=np.float32)
    for f in range(frames.shape[0]):
        frame = interpolate_linear(clean.frames_hu[f], sp_in, grid.shape_zyx, grid.spacing_zyx_mm)
        noisy = add_noise(frame[None], clean.noise_sd_hu, shifted_rng(spec.seed, "noise", f),
                          study.noise_correlation_px)[0]
        frames[f] = np.clip(noisy, *CT_RANGE_HU)
    maps = {name: nearest(getattr(clean, name), sp_in, grid.shape_zyx, grid.spacing_zyx_mm)
            for name in ("labels", "mbf", "aha17")}
    frame_labels = np.stack([nearest(lab, sp_in, grid.shape_zyx, grid.spacing_zyx_mm) for lab in clean.frame_labels])
    truth = dict(clean.truth, geometry=study.native_geometry.to_dict(), rendering={
        "native_shape_zyx": list(grid.shape_zyx), "native_spacing_zyx_mm": list(grid.spacing_zyx_mm),
        "anatomy_spacing_zyx_mm": list(sp_in),
        "note": "shifted family: anatomy rendered noise-free on the anatomy grid, interpolated linearly, "
        "noise added on the native grid",
    })
    voxel_ml = study.native_geometry.voxel_ml
    truth.update(mbf_summary(maps["labels"], maps["mbf"], maps["aha17"], voxel_ml, params.ischemia_threshold_mbf))
    return PhantomPatient(spec=spec, frames_hu=frames, frame_times_s=clean.frame_times_s,
                          geometry=study.native_geometry, kvp=clean.kvp, noise_sd_hu=clean.noise_sd_hu,
                          labels=maps["labels"], frame_labels=frame_labels, mbf=maps["mbf"], aha17=maps["aha17"],
                          truth=truth)


def family_parameters() -> dict:
    """Every shifted range with its source (for reports and BENCHMARKS.md)."""
    return {name: {"value": getattr(ShiftedParams(), name), "source": f.description}
            for name, f in ShiftedParams.model_fields.items()}


__all__ = ["FAMILY", "ShiftedParams", "generate_shifted_patient", "shifted_study", "family_parameters"]
