"""Per-patient anatomy: an analytic chest with a truncated-ellipsoid LV, evaluated on the fine grid.

The heart is built in the LV's long-axis frame (origin at the base = mitral
valve centre, axis u towards the apex, θ = 0 towards the anterior RV insertion,
as in ctp_steps.aha):
- LV: prolate ellipsoidal shell cut by the base plane; cavity = endocardial
  ellipsoid, myocardium between endo- and epicardial ellipsoids. The apical wall
  is apex_cap_fraction/(1 − fraction) × cavity length, so the endocardial apex
  lies exactly where AHA segment 17 starts.
- RV: a crescent on the septal side (θ from 0 to 2h, thickest at θ = 2h·f;
  h = 60° and f = 0.5 by default, drawn from `rv_half_angle_deg` and
  `rv_septum_fraction`), from
  slightly above the base plane to 80 % of the LV length, with a
  thin free wall; epicardial fat around both; left atrium beyond the base plane
  behind a 2 mm valve plane.
The chest is placed around the heart: chest wall in front, spine and descending
aorta behind, lungs on both sides (carved away from the mediastinum), and a
diaphragm dome with liver below. All of it is pointwise arithmetic on world
coordinates, so any block of the fine grid can be evaluated on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ctp_steps.phantom.grid import IDENTITY, Box, PhantomGrid, intersect
from ctp_steps.phantom.params import PhantomParams, uniform
from ctp_steps.types import Geometry

# tissue classes of the fine grid
(
    AIR,
    FAT,
    SOFT,
    LUNG,
    LIVER,
    BONE,
    CORTEX,
    CSF,
    PERIAORTIC,
    AORTA,
    LV_BLOOD,
    MYO,
    RV_BLOOD,
    RV_WALL,
    LA_BLOOD,
) = range(15)
N_CLASSES = 15
NO_HEART = 255

# truth labels (labels.nii.gz): 1 aorta, 2 LV blood pool, 3 myocardium, 4 RV blood pool
LABEL_NAMES = {1: "aorta", 2: "lv_blood", 3: "myocardium", 4: "rv_blood"}
N_LABELS = 5
LABEL_OF_CLASS = np.zeros(N_CLASSES, dtype=np.uint8)
LABEL_OF_CLASS[[AORTA, LV_BLOOD, MYO, RV_BLOOD]] = [1, 2, 3, 4]

_PROTECTED = (BONE, CORTEX, CSF, PERIAORTIC, AORTA)  # posterior mediastinum the heart never overwrites
_EPI_FAT_MM = 3.0
_MEDIASTINUM_MM = 8.0  # lungs keep this far from the heart
_VALVE_GAP_MM = 2.0
_CAVITY_RADIUS_MM = 20.0  # nominal LV (stress, near end-systole); scaled by lv_scale
_CAVITY_HALF_LENGTH_MM = 52.0


@dataclass(frozen=True)
class LeftVentricle:
    base: np.ndarray  # mitral valve centre (world mm)
    u: np.ndarray  # long axis, base → apex
    ref: np.ndarray  # ⊥ u, towards the anterior RV insertion (θ = 0)
    ortho: np.ndarray  # u × ref (θ = 90°)
    cavity_radius: float  # endocardial short semi-axis
    cavity_half_length: float  # endocardial long semi-axis
    base_offset: float  # base plane distance from the ellipsoid centre, towards the base
    wall: float  # lateral wall thickness
    apical_wall: float

    @property
    def epi_radius(self) -> float:
        return self.cavity_radius + self.wall

    @property
    def epi_half_length(self) -> float:
        return self.cavity_half_length + self.apical_wall

    @property
    def length(self) -> float:
        """Base plane → epicardial apex (mm)."""
        return self.base_offset + self.epi_half_length

    @property
    def apex(self) -> np.ndarray:
        return self.base + self.length * self.u

    def epi_rho(self, a: np.ndarray, extra: float = 0.0) -> np.ndarray:
        """Radius of the (untruncated) epicardial ellipsoid grown by `extra` mm at axial position a."""
        s = (a - self.base_offset) / (self.epi_half_length + extra)
        return (self.epi_radius + extra) * np.sqrt(np.maximum(0.0, 1.0 - s * s))


@dataclass(frozen=True)
class RightVentricle:
    thickness: float  # largest cavity thickness, at the septum
    wall: float
    a0: float  # axial extent (mm from the base plane)
    a1: float
    half_angle: float = 60.0  # the crescent spans θ ∈ [0, 2·half_angle] (anterior to inferior insertion)
    septum_fraction: float = 0.5  # its thickest point lies this fraction of the span from the anterior insertion

    @property
    def anterior_span(self) -> float:
        """Degrees from the anterior insertion to the thickest point."""
        return 2.0 * self.half_angle * self.septum_fraction

    @property
    def inferior_span(self) -> float:
        """Degrees from the thickest point to the inferior insertion."""
        return 2.0 * self.half_angle * (1.0 - self.septum_fraction)


@dataclass(frozen=True)
class LeftAtrium:
    half_length: float  # along u
    radius: float


@dataclass(frozen=True)
class Body:
    torso_xy: tuple[float, float]
    torso_ab: tuple[float, float]  # outer semi-axes (x, y)
    fat: float
    muscle: float
    lungs: tuple[tuple[float, float, float, float, float], ...]  # (cx, cy, semi x, semi y, dome top z)
    dome_drop: float
    sternum_xy: tuple[float, float]
    spine_xy: tuple[float, float]
    spine_radius: float
    aorta_xy: tuple[float, float]
    aorta_radius: float


@dataclass(frozen=True)
class Anatomy:
    grid: PhantomGrid
    lv: LeftVentricle
    rv: RightVentricle
    la: LeftAtrium
    body: Body
    hu: dict[str, float]  # static / baseline attenuation per tissue

    @property
    def landmarks(self) -> dict[str, list[float]]:
        """World mm: epicardial apex, mitral valve centre, anterior RV insertion (on the epicardium)."""
        lv = self.lv
        a = 0.25 * lv.length
        insertion = lv.base + a * lv.u + float(lv.epi_rho(np.asarray(a))) * lv.ref
        return {"apex": lv.apex.tolist(), "base": lv.base.tolist(), "rv_insertion": insertion.tolist()}

    def static_hu(self) -> np.ndarray:
        """HU of every tissue class before contrast (dynamic classes at their baselines)."""
        h = self.hu
        lut = np.zeros(N_CLASSES, dtype=np.float32)
        lut[[AIR, FAT, SOFT, LUNG, LIVER, BONE, CORTEX, CSF, PERIAORTIC]] = [
            h["air"],
            h["fat"],
            h["soft_tissue"],
            h["lung"],
            h["liver"],
            h["bone"],
            h["cortical_bone"],
            h["csf"],
            h["fat"],
        ]
        lut[[AORTA, LV_BLOOD, RV_BLOOD, LA_BLOOD]] = h["blood"]
        lut[[MYO, RV_WALL]] = h["myocardium"]
        return lut

    def record(self) -> dict:
        """JSON-able description (truth.json `anatomy`)."""
        lv, rv, b = self.lv, self.rv, self.body
        return {
            "lv_long_axis": lv.u.tolist(),
            "lv_cavity_radius_mm": lv.cavity_radius,
            "lv_cavity_length_mm": lv.base_offset + lv.cavity_half_length,
            "lv_length_mm": lv.length,
            "lv_wall_mm": lv.wall,
            "lv_apical_wall_mm": lv.apical_wall,
            "rv_thickness_mm": rv.thickness,
            "rv_half_angle_deg": rv.half_angle,
            "rv_septum_fraction": rv.septum_fraction,
            "aorta_center_xy_mm": list(b.aorta_xy),
            "aorta_radius_mm": b.aorta_radius,
            "torso_semi_axes_mm": list(b.torso_ab),
        }


def _rotate(v: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation of v about unit `axis` by `angle` radians (right-hand rule)."""
    return v * np.cos(angle) + np.cross(axis, v) * np.sin(angle) + axis * (axis @ v) * (1 - np.cos(angle))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def make_grid(rng: np.random.Generator, params: PhantomParams) -> PhantomGrid:
    """Reconstructed grid: axial, centred near the isocentre, at a random table position."""
    shape = tuple(int(n) for n in params.shape_zyx)
    sp_xyz = np.asarray(params.spacing_zyx_mm[::-1], dtype=float)
    centre = np.array([rng.uniform(-20, 20), rng.uniform(-20, 20), rng.uniform(-300, -100)])
    origin = np.round(centre - (np.asarray(shape[::-1]) - 1) / 2 * sp_xyz, 3)
    margin = params.rigid_shift_max_mm + params.n_deformation_modes * params.deformation_max_mm + 2.0
    pad = tuple(int(np.ceil(margin / s)) for s in params.spacing_zyx_mm)
    geometry = Geometry(tuple(origin.tolist()), tuple(sp_xyz.tolist()), IDENTITY)
    return PhantomGrid(geometry=geometry, shape=shape, factor=params.supersample, pad=pad)


def grid_center(grid: PhantomGrid) -> np.ndarray:
    sp = np.asarray(grid.geometry.spacing)
    return np.asarray(grid.geometry.origin) + (np.asarray(grid.shape[::-1]) - 1) / 2 * sp


def draw_anatomy(rng: np.random.Generator, params: PhantomParams) -> Anatomy:
    """One patient's anatomy (grid placement included); deterministic given the stream."""
    grid = make_grid(rng, params)
    lv, rv, la = _draw_heart(rng, params, grid)
    body = _place_body(rng, lv, rv, la)
    hu = {
        "air": -1000.0,
        "fat": uniform(rng, (-110.0, -80.0)),
        "soft_tissue": uniform(rng, (35.0, 55.0)),
        "lung": uniform(rng, (-870.0, -820.0)),
        "liver": uniform(rng, (50.0, 65.0)),
        "bone": uniform(rng, (200.0, 350.0)),
        "cortical_bone": uniform(rng, (600.0, 900.0)),
        "csf": uniform(rng, (5.0, 15.0)),
        "blood": uniform(rng, params.blood_baseline_hu),
        "myocardium": uniform(rng, params.myocardium_baseline_hu),
    }
    return Anatomy(grid=grid, lv=lv, rv=rv, la=la, body=body, hu=hu)


def _draw_heart(
    rng: np.random.Generator, params: PhantomParams, grid: PhantomGrid
) -> tuple[LeftVentricle, RightVentricle, LeftAtrium]:
    # long axis: LPS (1, -1, -1) tilted by up to lv_axis_tilt_max_deg in a random direction
    u0 = _unit(np.array([1.0, -1.0, -1.0]))
    w = _unit(np.cross(u0, _unit(rng.normal(size=3))))
    tilt = np.radians(rng.uniform(0, params.lv_axis_tilt_max_deg))
    u = _unit(np.cos(tilt) * u0 + np.sin(tilt) * w)
    # septum towards the RV (right-anterior), rotated ±10° about the axis
    septum = _unit(np.array([-1.0, -1.0, 0.0]) - (np.array([-1.0, -1.0, 0.0]) @ u) * u)
    septum = _rotate(septum, u, np.radians(rng.uniform(-10, 10)))
    ref = septum  # placeholder: aimed at the anterior RV insertion once the RV's span is drawn (below)
    scale = uniform(rng, params.lv_scale)
    cavity_radius = _CAVITY_RADIUS_MM * scale
    base_frac = rng.uniform(0.2, 0.3)  # base plane lies this fraction of the half-length beyond the equator
    cavity_half_length = _CAVITY_HALF_LENGTH_MM * scale
    cavity_length = (1 + base_frac) * cavity_half_length
    f = params.apex_cap_fraction
    wall = uniform(rng, params.wall_thickness_mm)
    lv0 = LeftVentricle(
        base=np.zeros(3),
        u=u,
        ref=ref,
        ortho=np.cross(u, ref),
        cavity_radius=cavity_radius,
        cavity_half_length=cavity_half_length,
        base_offset=base_frac * cavity_half_length,
        wall=wall,
        apical_wall=f / (1 - f) * cavity_length,
    )
    # LV mid-point (half-way base → apex) near the FOV centre
    jitter = params.lv_position_jitter_mm * np.array([1.0, 1.0, 0.6])
    mid = grid_center(grid) + rng.uniform(-1, 1, size=3) * jitter
    lv = replace(lv0, base=mid - lv0.length / 2 * u)
    rv = RightVentricle(
        thickness=uniform(rng, params.rv_thickness_mm),
        wall=rng.uniform(2.5, 4.0),
        a0=-rng.uniform(8.0, 15.0),
        a1=rng.uniform(0.7, 0.8) * lv.length,
    )
    la = LeftAtrium(half_length=rng.uniform(14.0, 18.0), radius=rng.uniform(17.0, 22.0))
    lo, hi = params.rv_half_angle_deg
    half_angle = float(rng.uniform(lo, hi)) if hi > lo else lo  # drawn last and only when it varies:
    # the default cohort's random stream is unchanged
    lo, hi = params.rv_septum_fraction
    fraction = float(rng.uniform(lo, hi)) if hi > lo else lo  # likewise
    rv = replace(rv, half_angle=half_angle, septum_fraction=fraction)
    ref = _rotate(septum, u, -np.radians(rv.anterior_span))  # θ = 0 at the anterior RV insertion
    lv = replace(lv, ref=ref, ortho=np.cross(u, ref))
    return lv, rv, la


def _heart_surface_points(
    lv: LeftVentricle, rv: RightVentricle, la: LeftAtrium, extra: float, whole_lv: bool
) -> np.ndarray:
    """Points on the heart's outer surfaces grown by `extra` mm, to place the heart (LV below its
    base plane) or to bound its fields (whole epicardial ellipsoid: the lungs' envelope)."""
    phi = np.linspace(0, 2 * np.pi, 73)[:, None]
    pts = []
    a_from = lv.base_offset - lv.epi_half_length - extra if whole_lv else -extra
    a = np.linspace(a_from, lv.length + extra, 61)[None, :]
    rho = lv.epi_rho(a, extra)
    pts.append(_cyl_points(lv, a, rho, phi))
    a = np.linspace(rv.a0 - 4 - extra, rv.a1 + 4 + extra, 41)[None, :]
    lo, hi = np.radians(rv.anterior_span + 8 + extra), np.radians(rv.inferior_span + 8 + extra)
    ang = np.radians(rv.anterior_span) + np.linspace(-lo, hi, 37)[:, None]
    rho = lv.epi_rho(a) + (rv.thickness + rv.wall + extra) * _rv_axial_profile(rv, a, 4 + extra)
    pts.append(_cyl_points(lv, a, rho * np.ones_like(ang), ang))
    centre = -(_VALVE_GAP_MM + la.half_length)
    s = np.linspace(-1, 1, 41)[None, :]
    a = centre + s * (la.half_length + extra)
    rho = (la.radius + extra) * np.sqrt(np.maximum(0, 1 - s * s))
    pts.append(_cyl_points(lv, a, rho, phi))
    return np.concatenate([p.reshape(-1, 3) for p in pts])


def _cyl_points(lv: LeftVentricle, a: np.ndarray, rho: np.ndarray, phi: np.ndarray) -> np.ndarray:
    a, rho, phi = np.broadcast_arrays(a, rho, phi)
    return (
        lv.base
        + a[..., None] * lv.u
        + (rho * np.cos(phi))[..., None] * lv.ref
        + (rho * np.sin(phi))[..., None] * lv.ortho
    )


def _rv_axial_profile(rv: RightVentricle, a: np.ndarray, grow: float) -> np.ndarray:
    """Elliptic taper of the RV crescent along the axis (1 in the middle, 0 at its ends)."""
    mid = (rv.a0 + rv.a1) / 2
    half = (rv.a1 - rv.a0) / 2 + grow
    s = (a - mid) / half
    return np.sqrt(np.maximum(0.0, 1.0 - s * s))


def _place_body(rng: np.random.Generator, lv: LeftVentricle, rv: RightVentricle, la: LeftAtrium) -> Body:
    """Chest wall in front of the heart, spine and aorta behind it, lungs either side."""
    pts = _heart_surface_points(lv, rv, la, _EPI_FAT_MM, whole_lv=False)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    mid = lv.base + lv.length / 2 * lv.u
    muscle, fat = rng.uniform(10, 16), rng.uniform(8, 25)
    y_cavity_front = lo[1] - rng.uniform(2, 6)
    y_front = y_cavity_front - muscle - fat
    aorta_radius = rng.uniform(11.0, 14.0)
    spine_radius = rng.uniform(15.0, 19.0)
    spine_y = hi[1] + aorta_radius + rng.uniform(10, 14)
    torso_x = mid[0] - rng.uniform(15, 30)
    aorta_xy = (torso_x + rng.uniform(18, 24), spine_y - rng.uniform(6, 10))
    y_back = spine_y + spine_radius + rng.uniform(50, 65)
    b = (y_back - y_front) / 2
    a = b * rng.uniform(1.3, 1.5)
    torso_y = (y_back + y_front) / 2
    ac, bc = a - fat - muscle, b - fat - muscle
    lungs = tuple(
        (torso_x + side * 0.5 * ac, torso_y + 0.05 * bc, 0.48 * ac, 0.9 * bc, lo[2] + rng.uniform(*top))
        for side, top in ((+1, (0.0, 15.0)), (-1, (10.0, 25.0)))
    )
    return Body(
        torso_xy=(torso_x, torso_y),
        torso_ab=(a, b),
        fat=fat,
        muscle=muscle,
        lungs=lungs,
        dome_drop=rng.uniform(30, 45),
        sternum_xy=(torso_x, y_front + fat + muscle / 2),
        spine_xy=(torso_x, spine_y),
        spine_radius=spine_radius,
        aorta_xy=aorta_xy,
        aorta_radius=aorta_radius,
    )


def heart_box(anat: Anatomy, within: Box) -> Box:
    """Block-aligned fine box (inside `within`) that holds every heart field, lung margin included."""
    pts = _heart_surface_points(anat.lv, anat.rv, anat.la, _MEDIASTINUM_MM + 1.0, whole_lv=True)
    return anat.grid.box_around(pts.min(axis=0), pts.max(axis=0), within)


def body_classes(anat: Anatomy, box: Box) -> np.ndarray:
    """Tissue classes of the chest without the heart, on a fine box."""
    b = anat.body
    x, y, z = anat.grid.box_coords(box)
    x, y = x[0], y[0]  # the chest is the same in every slice except for the diaphragm
    tx, ty = b.torso_xy
    ta, tb = b.torso_ab

    def ellipse(cx: float, cy: float, sa: float, sb: float) -> np.ndarray:
        return ((x - cx) / sa) ** 2 + ((y - cy) / sb) ** 2

    def disc(cxy: tuple[float, float], r: float) -> np.ndarray:
        return (x - cxy[0]) ** 2 + (y - cxy[1]) ** 2 < r * r

    plane = np.full(np.broadcast_shapes(x.shape, y.shape), AIR, dtype=np.uint8)
    plane[ellipse(tx, ty, ta, tb) < 1] = FAT
    plane[ellipse(tx, ty, ta - b.fat, tb - b.fat) < 1] = SOFT
    cavity = ellipse(tx, ty, ta - b.fat - b.muscle, tb - b.fat - b.muscle) < 1
    cavity &= ~disc(b.spine_xy, b.spine_radius + _MEDIASTINUM_MM) & ~disc(
        b.aorta_xy, b.aorta_radius + _MEDIASTINUM_MM
    )
    plane[ellipse(*b.sternum_xy, 13.0, 5.0) < 1] = BONE
    sx, sy = b.spine_xy
    plane[ellipse(sx, sy + b.spine_radius + 14.0, 20.0, 12.0) < 1] = BONE  # posterior arch
    plane[disc(b.spine_xy, b.spine_radius)] = CORTEX
    plane[disc(b.spine_xy, b.spine_radius - 2.0)] = BONE
    plane[disc((sx, sy + b.spine_radius + 9.0), 8.0)] = CSF
    plane[disc(b.aorta_xy, b.aorta_radius + 2.5)] = PERIAORTIC
    plane[disc(b.aorta_xy, b.aorta_radius)] = AORTA

    out = np.repeat(plane[None], z.shape[0], axis=0)
    for cx, cy, sa, sb, top in b.lungs:
        r2 = ellipse(cx, cy, sa, sb)
        inside = (r2 < 1) & cavity
        above = z > top - b.dome_drop * r2
        out[inside & above] = LUNG
        out[inside & ~above] = LIVER
    return out


@dataclass
class HeartFields:
    """Heart classes on a box (NO_HEART elsewhere) and the LV coordinates of its myocardium voxels."""

    box: Box
    classes: np.ndarray
    envelope: np.ndarray  # where lungs give way to mediastinum
    myo_index: np.ndarray  # flat indices into the box
    t: np.ndarray  # axial fraction base (0) → epicardial apex (1)
    theta: np.ndarray  # degrees, AHA convention
    depth: np.ndarray  # transmural position, 0 endocardium → 1 epicardium
    radius: np.ndarray  # distance from the long axis (mm)


def heart_fields(anat: Anatomy, box: Box) -> HeartFields:
    """Evaluate the heart on a fine box (pointwise: any sub-box gives the same values)."""
    lv, rv, la = anat.lv, anat.rv, anat.la
    x, y, z = anat.grid.box_coords(box)
    d = (x - lv.base[0], y - lv.base[1], z - lv.base[2])
    a = d[0] * lv.u[0] + d[1] * lv.u[1] + d[2] * lv.u[2]
    q1 = d[0] * lv.ref[0] + d[1] * lv.ref[1] + d[2] * lv.ref[2]
    q2 = d[0] * lv.ortho[0] + d[1] * lv.ortho[1] + d[2] * lv.ortho[2]
    rho = np.hypot(q1, q2)
    theta = np.degrees(np.arctan2(q2, q1)) % 360.0
    s = a - lv.base_offset

    def lam(long: float, short: float) -> np.ndarray:
        return np.sqrt((s / long) ** 2 + (rho / short) ** 2)

    lam_endo = lam(lv.cavity_half_length, lv.cavity_radius)
    lam_epi = lam(lv.epi_half_length, lv.epi_radius)
    below_base = a >= 0
    blood = below_base & (lam_endo < 1)
    myo = below_base & (lam_endo >= 1) & (lam_epi < 1)

    phi = (theta - rv.anterior_span + 180.0) % 360.0 - 180.0  # angle from the RV's thickest point
    epi = lv.epi_rho(a)

    def crescent(thick: float, wider_deg: float, grow: float) -> np.ndarray:
        """RV-shaped shell `thick` mm deep at its thickest, its angular span widened by `wider_deg` each side."""
        half_angle = np.where(phi < 0, rv.anterior_span + wider_deg, rv.inferior_span + wider_deg)
        c = np.clip(phi / half_angle, -1, 1)
        width = thick * np.sqrt(1 - c * c) * _rv_axial_profile(rv, a, grow)
        return (np.abs(phi) < half_angle) & (rho >= epi) & (rho - epi < width)

    rv_blood = crescent(rv.thickness, 0.0, 0.0)
    rv_outer = crescent(rv.thickness + rv.wall, 8, 4.0)
    fat = crescent(rv.thickness + rv.wall + _EPI_FAT_MM, 8 + _EPI_FAT_MM, 4.0 + _EPI_FAT_MM)
    fat |= (a >= -_EPI_FAT_MM) & (lam(lv.epi_half_length + _EPI_FAT_MM, lv.epi_radius + _EPI_FAT_MM) < 1)
    la_axial = (a + _VALVE_GAP_MM + la.half_length) / la.half_length
    la_blood = la_axial**2 + (rho / la.radius) ** 2 < 1

    m = _MEDIASTINUM_MM
    envelope = lam(lv.epi_half_length + m, lv.epi_radius + m) < 1
    envelope |= crescent(rv.thickness + rv.wall + m, 8 + m, 4.0 + m)
    envelope |= ((a + _VALVE_GAP_MM + la.half_length) / (la.half_length + m)) ** 2 + (
        rho / (la.radius + m)
    ) ** 2 < 1

    classes = np.full(a.shape, NO_HEART, dtype=np.uint8)
    for mask, cls in (
        (fat, FAT),
        (rv_outer, RV_WALL),
        (rv_blood, RV_BLOOD),
        (la_blood, LA_BLOOD),
        (myo, MYO),
        (blood, LV_BLOOD),
    ):
        classes[mask] = cls
    myo_index = np.flatnonzero(classes == MYO)
    sm, rm = s.ravel()[myo_index], rho.ravel()[myo_index]

    def distance(lam_all: np.ndarray, long: float, short: float) -> np.ndarray:
        """First-order distance (mm) to an ellipsoid surface: |λ − 1| / |∇λ|."""
        lm = lam_all.ravel()[myo_index]
        grad = np.hypot(sm / long**2, rm / short**2) / lm
        return np.abs(lm - 1.0) / grad

    to_endo = distance(lam_endo, lv.cavity_half_length, lv.cavity_radius)
    to_epi = distance(lam_epi, lv.epi_half_length, lv.epi_radius)
    return HeartFields(
        box=box,
        classes=classes,
        envelope=envelope | (classes != NO_HEART),
        myo_index=myo_index,
        t=a.ravel()[myo_index] / lv.length,
        theta=theta.ravel()[myo_index],
        depth=to_endo / (to_endo + to_epi),
        radius=rho.ravel()[myo_index],
    )


def compose(body: np.ndarray, heart: HeartFields) -> np.ndarray:
    """Body classes of the heart box with the heart put in (lungs give way; posterior mediastinum stays)."""
    out = body.copy()
    out[heart.envelope & (out == LUNG)] = SOFT
    hc = heart.classes
    lv = (hc == MYO) | (hc == LV_BLOOD)
    put = (hc != NO_HEART) & (~np.isin(out, _PROTECTED) | lv)
    out[put] = hc[put]
    return out


@dataclass
class Scene:
    """Tissue classes on a fine box, with the heart fields that live inside it."""

    box: Box
    classes: np.ndarray
    heart: HeartFields

    def myo_index(self) -> np.ndarray:
        """Flat indices into `classes` of the heart's myocardium voxels, in heart-field order."""
        local = np.unravel_index(self.heart.myo_index, self.heart.classes.shape)
        offset = [h.start - b.start for h, b in zip(self.heart.box, self.box)]
        return np.ravel_multi_index(tuple(i + o for i, o in zip(local, offset)), self.classes.shape)


def build_scene(anat: Anatomy, box: Box) -> Scene:
    """Tissue classes of a fine box (the whole padded grid for rendering, the heart box for IMV)."""
    hbox = intersect(heart_box(anat, anat.grid.full_box()), box)
    heart = heart_fields(anat, hbox)
    classes = body_classes(anat, box)
    inner = tuple(slice(h.start - b.start, h.stop - b.start) for h, b in zip(hbox, box))
    classes[inner] = compose(classes[inner], heart)
    return Scene(box=box, classes=classes, heart=heart)
