"""Anatomy of the shifted phantom family: a prolate-spheroidal LV shell and an ellipsoidal RV.

Different shape functions from `anatomy.py` (two non-confocal ellipsoids with a
constant lateral wall, RV as an angular crescent of fixed 120° span):

- LV: the myocardium is a shell between two surfaces of prolate spheroidal
  coordinates (μ, ν) about two foci on the long axis (the classic cardiac
  mechanics parametrisation; e.g. Streeter & Hanna, Circ Res 1973;33:639-55):
  endocardium μ = μ_endo, epicardium μ = μ_endo + Δμ(ν) with Δμ varying
  linearly in cos ν, so the wall thins from `wall_base_mm` at the base to the
  apical wall at the apex. The shell is cut by a base plane. As in the default
  family (and ctp_steps.aha), the apical wall is f/(1 − f) × cavity length so
  the endocardial apex sits where AHA segment 17 starts.
- RV: the blood pool is an ellipsoid set off towards the septum, minus the LV
  (the septum belongs to the LV): its angular span and crescent thickness follow
  from the ellipsoid, not from a fixed angle. The anterior insertion (θ = 0 of
  the AHA convention) is found where the ellipsoid leaves the LV epicardium.
- Left atrium: an ellipsoid beyond a valve gap. The chest (torso, lungs, spine,
  descending aorta, liver) reuses `anatomy.body_classes`, placed by its own draw.

Evaluation is pointwise on world coordinates of a PhantomGrid box, and returns
the default family's `HeartFields`/`Scene` containers so that rendering, truth
maps and AHA segments are built by the shared low-level code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctp_steps.phantom.anatomy import (
    AIR, BONE, CORTEX, CSF, FAT, LA_BLOOD, LIVER, LUNG, LV_BLOOD, MYO, N_CLASSES, NO_HEART, PERIAORTIC,
    RV_BLOOD, RV_WALL, SOFT, AORTA, Body, HeartFields, Scene, body_classes, compose,
)
from ctp_steps.phantom.grid import Box, PhantomGrid, intersect

_EPI_FAT_MM = 2.5
_MEDIASTINUM_MM = 8.0


def unit(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, dtype=float) / np.linalg.norm(v)


def rotate(v: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation of v about unit `axis` by `angle` radians."""
    return v * np.cos(angle) + np.cross(axis, v) * np.sin(angle) + axis * (axis @ v) * (1 - np.cos(angle))


@dataclass(frozen=True)
class SpheroidLV:
    """LV frame (base = mitral valve centre on the base plane, u towards the apex) and shell shape."""

    base: np.ndarray
    u: np.ndarray
    ref: np.ndarray  # θ = 0: anterior RV insertion
    ortho: np.ndarray
    septum: np.ndarray  # ⊥ u, towards the septum's middle
    focal_mm: float  # half the distance between the foci
    mu_endo: float
    dmu_base: float
    dmu_apex: float
    base_height_mm: float  # base plane distance from the spheroid centre, towards the base
    cos_nu_base: float  # cos ν where the base plane meets the endocardium

    @property
    def cavity_radius(self) -> float:
        return self.focal_mm * float(np.sinh(self.mu_endo))

    @property
    def cavity_half_length(self) -> float:
        return self.focal_mm * float(np.cosh(self.mu_endo))

    @property
    def apical_wall(self) -> float:
        return self.focal_mm * float(np.cosh(self.mu_endo + self.dmu_apex) - np.cosh(self.mu_endo))

    @property
    def length(self) -> float:
        """Base plane → epicardial apex (mm)."""
        return self.base_height_mm + self.cavity_half_length + self.apical_wall

    @property
    def apex(self) -> np.ndarray:
        return self.base + self.length * self.u

    @property
    def center(self) -> np.ndarray:
        return self.base + self.base_height_mm * self.u

    def dmu(self, cos_nu: np.ndarray) -> np.ndarray:
        """Wall in μ units, linear in cos ν from the base (cos ν_base) to the apex (cos ν = 1)."""
        s = np.clip((cos_nu - self.cos_nu_base) / (1.0 - self.cos_nu_base), 0.0, 1.0)
        return self.dmu_base + (self.dmu_apex - self.dmu_base) * s

    def spheroidal(self, s: np.ndarray, rho: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(μ, cos ν) of points at axial position s (from the centre, + towards the apex) and radius rho."""
        d = self.focal_mm
        r_apex = np.sqrt((s - d) ** 2 + rho**2)
        r_base = np.sqrt((s + d) ** 2 + rho**2)
        cosh_mu = np.maximum((r_apex + r_base) / (2 * d), 1.0)
        return np.arccosh(cosh_mu), np.clip((r_base - r_apex) / (2 * d), -1.0, 1.0)

    def epi_radius_at(self, a: float, direction: np.ndarray) -> float:
        """Distance from the axis of the epicardium at axial position a (from the base) along a ⊥ direction."""
        s = a - self.base_height_mm
        lo, hi = 0.0, 200.0
        for _ in range(60):
            mid = (lo + hi) / 2
            mu, cnu = self.spheroidal(np.asarray(s), np.asarray(mid))
            lo, hi = (mid, hi) if mu < self.mu_endo + self.dmu(cnu) else (lo, mid)
        return lo


@dataclass(frozen=True)
class EllipsoidRV:
    center: np.ndarray
    axes: np.ndarray  # (3, 3) rows: unit directions (u, septum, u × septum)
    semi_mm: np.ndarray  # (3,) semi-axes along them
    wall_mm: float
    top_mm: float  # RV blood starts this far beyond the base plane (a ≥ −top)

    def level(self, p_rel: tuple[np.ndarray, np.ndarray, np.ndarray], grow: float = 0.0) -> np.ndarray:
        """Ellipsoid function (< 1 inside) of points given as offsets from the centre (x, y, z), semi-axes + grow."""
        out = 0.0
        for axis, semi in zip(self.axes, self.semi_mm):
            proj = p_rel[0] * axis[0] + p_rel[1] * axis[1] + p_rel[2] * axis[2]
            out = out + (proj / (semi + grow)) ** 2
        return out


@dataclass(frozen=True)
class Atrium:
    center_a_mm: float  # axial position (from the base, negative: beyond the base plane)
    half_length_mm: float
    radius_mm: float


@dataclass(frozen=True)
class ShiftedAnatomy:
    grid: PhantomGrid
    lv: SpheroidLV
    rv: EllipsoidRV
    la: Atrium
    body: Body
    hu: dict[str, float]
    insertion_angle_deg: float  # from the septum to the anterior insertion, about −u

    @property
    def landmarks(self) -> dict[str, list[float]]:
        """World mm: epicardial apex, mitral valve centre, anterior RV insertion on the epicardium at 25 %."""
        lv = self.lv
        a = 0.25 * lv.length
        insertion = lv.base + a * lv.u + lv.epi_radius_at(a, lv.ref) * lv.ref
        return {"apex": lv.apex.tolist(), "base": lv.base.tolist(), "rv_insertion": insertion.tolist()}

    def static_hu(self) -> np.ndarray:
        """HU per tissue class before contrast (dynamic classes at their baselines)."""
        h = self.hu
        lut = np.zeros(N_CLASSES, dtype=np.float32)
        for cls, name in ((AIR, "air"), (FAT, "fat"), (SOFT, "soft_tissue"), (LUNG, "lung"), (LIVER, "liver"),
                          (BONE, "bone"), (CORTEX, "cortical_bone"), (CSF, "csf"), (PERIAORTIC, "fat")):
            lut[cls] = h[name]
        lut[[AORTA, LV_BLOOD, RV_BLOOD, LA_BLOOD]] = h["blood"]
        lut[[MYO, RV_WALL]] = h["myocardium"]
        return lut

    def record(self) -> dict:
        """truth.json `anatomy` (the default family's keys, plus the shifted shape's own)."""
        lv, rv, b = self.lv, self.rv, self.body
        return {
            "parametrisation": "prolate spheroidal LV shell, ellipsoidal RV (ctp_steps/phantom/shifted_anatomy.py)",
            "lv_long_axis": lv.u.tolist(),
            "lv_long_axis_tilt_deg": float(np.degrees(np.arccos(np.clip(lv.u @ unit([1.0, -1.0, -1.0]), -1, 1)))),
            "lv_cavity_radius_mm": lv.cavity_radius,
            "lv_cavity_length_mm": lv.base_height_mm + lv.cavity_half_length,
            "lv_length_mm": lv.length,
            "lv_wall_mm": lv.focal_mm * lv.dmu_base * float(np.hypot(np.sinh(lv.mu_endo), np.sqrt(1 - lv.cos_nu_base**2))),
            "lv_apical_wall_mm": lv.apical_wall,
            "lv_focal_mm": lv.focal_mm,
            "rv_semi_axes_mm": rv.semi_mm.tolist(),
            "rv_insertion_angle_deg": self.insertion_angle_deg,
            "aorta_center_xy_mm": list(b.aorta_xy),
            "aorta_radius_mm": b.aorta_radius,
            "torso_semi_axes_mm": list(b.torso_ab),
        }


def _cylinder(lv: SpheroidLV, p: tuple[np.ndarray, np.ndarray, np.ndarray]):
    """Axial position a (from the base), radius and θ (degrees from ref) of world points (x, y, z)."""
    d = (p[0] - lv.base[0], p[1] - lv.base[1], p[2] - lv.base[2])
    a = d[0] * lv.u[0] + d[1] * lv.u[1] + d[2] * lv.u[2]
    q1 = d[0] * lv.ref[0] + d[1] * lv.ref[1] + d[2] * lv.ref[2]
    q2 = d[0] * lv.ortho[0] + d[1] * lv.ortho[1] + d[2] * lv.ortho[2]
    return a, np.hypot(q1, q2), np.degrees(np.arctan2(q2, q1)) % 360.0


def surface_points(anat: ShiftedAnatomy, extra: float) -> np.ndarray:
    """Points bounding the heart (LV shell, RV, LA) grown by `extra` mm: boxes and body placement."""
    lv, rv, la = anat.lv, anat.rv, anat.la
    phi = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    ring = np.stack([np.cos(phi), np.sin(phi)], axis=1)
    pts = []
    r_epi = lv.cavity_radius + lv.focal_mm * lv.dmu_base * 1.6 + extra  # bounds the shell's widest point
    for a in np.linspace(-extra, lv.length + extra, 40):
        s = (a - lv.base_height_mm) / (lv.length - lv.base_height_mm + extra)
        r = r_epi * np.sqrt(max(0.0, 1 - min(1.0, s * s))) if s > 0 else r_epi
        pts.append(lv.base + a * lv.u + r * (ring[:, :1] * lv.ref + ring[:, 1:] * lv.ortho))
    sph = np.stack(np.meshgrid(np.linspace(0, np.pi, 13), phi, indexing="ij"), axis=-1).reshape(-1, 2)
    unit_sphere = np.stack([np.cos(sph[:, 0]), np.sin(sph[:, 0]) * np.cos(sph[:, 1]),
                            np.sin(sph[:, 0]) * np.sin(sph[:, 1])], axis=1)
    semi = rv.semi_mm + rv.wall_mm + extra
    pts.append(rv.center + (unit_sphere * semi) @ rv.axes)
    la_semi = np.array([la.half_length_mm, la.radius_mm, la.radius_mm]) + extra
    la_axes = np.stack([lv.u, lv.ref, lv.ortho])
    pts.append(lv.base + la.center_a_mm * lv.u + (unit_sphere * la_semi) @ la_axes)
    return np.concatenate(pts)


def heart_box(anat: ShiftedAnatomy, within: Box) -> Box:
    pts = surface_points(anat, _MEDIASTINUM_MM + 2.0)
    return anat.grid.box_around(pts.min(axis=0), pts.max(axis=0), within)


def heart_fields(anat: ShiftedAnatomy, box: Box) -> HeartFields:
    """Heart classes and the myocardium's LV coordinates on a fine box (pointwise)."""
    lv, rv, la = anat.lv, anat.rv, anat.la
    x, y, z = anat.grid.box_coords(box)
    a, rho, theta = _cylinder(lv, (x, y, z))
    s = a - lv.base_height_mm
    mu, cos_nu = lv.spheroidal(s, rho)
    mu_epi = lv.mu_endo + lv.dmu(cos_nu)
    below_base = a >= 0
    blood = below_base & (mu < lv.mu_endo)
    myo = below_base & (mu >= lv.mu_endo) & (mu < mu_epi)
    lv_all = below_base & (mu < mu_epi)

    rel = (x - rv.center[0], y - rv.center[1], z - rv.center[2])
    beyond_top = a >= -rv.top_mm
    rv_blood = (rv.level(rel) < 1) & beyond_top & ~lv_all
    rv_outer = (rv.level(rel, rv.wall_mm) < 1) & (a >= -rv.top_mm - rv.wall_mm) & ~lv_all
    # epicardial fat: a thin layer around the LV shell (in μ) and the RV
    grow_mu = _EPI_FAT_MM / (lv.focal_mm * np.maximum(np.sinh(mu_epi), 0.3))
    fat = (a >= -_EPI_FAT_MM) & (mu < mu_epi + grow_mu)
    fat |= (rv.level(rel, rv.wall_mm + _EPI_FAT_MM) < 1) & (a >= -rv.top_mm - rv.wall_mm - _EPI_FAT_MM)
    la_l = ((a - la.center_a_mm) / la.half_length_mm) ** 2 + (rho / la.radius_mm) ** 2
    la_blood = la_l < 1

    m = _MEDIASTINUM_MM
    envelope = (a >= -m) & (mu < mu_epi + m / (lv.focal_mm * np.maximum(np.sinh(mu_epi), 0.3)))
    envelope |= rv.level(rel, rv.wall_mm + m) < 1
    envelope |= ((a - la.center_a_mm) / (la.half_length_mm + m)) ** 2 + (rho / (la.radius_mm + m)) ** 2 < 1

    shape = np.broadcast_shapes(x.shape, y.shape, z.shape)
    classes = np.full(shape, NO_HEART, dtype=np.uint8)
    for mask, cls in ((fat, FAT), (rv_outer, RV_WALL), (rv_blood, RV_BLOOD), (la_blood, LA_BLOOD),
                      (myo, MYO), (blood, LV_BLOOD)):
        classes[np.broadcast_to(mask, shape)] = cls
    myo_index = np.flatnonzero(classes == MYO)
    full = lambda v: np.broadcast_to(v, shape).ravel()[myo_index]  # noqa: E731
    mu_m, epi_m = full(mu), full(mu_epi)
    return HeartFields(
        box=box,
        classes=classes,
        envelope=np.broadcast_to(envelope, shape) | (classes != NO_HEART),
        myo_index=myo_index,
        t=full(a) / lv.length,
        theta=full(theta),
        depth=np.clip((mu_m - lv.mu_endo) / (epi_m - lv.mu_endo), 0.0, 1.0),
        radius=full(rho),
    )


def build_scene(anat: ShiftedAnatomy, box: Box) -> Scene:
    """Tissue classes of a fine box: the chest of `anatomy.body_classes` with this family's heart put in."""
    hbox = intersect(heart_box(anat, anat.grid.full_box()), box)
    heart = heart_fields(anat, hbox)
    classes = body_classes(anat, box)
    inner = tuple(slice(h.start - b.start, h.stop - b.start) for h, b in zip(hbox, box))
    classes[inner] = compose(classes[inner], heart)
    return Scene(box=box, classes=classes, heart=heart)
