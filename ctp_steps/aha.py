"""AHA 17-segment model of the left ventricle, built from three landmarks.

One pure definition shared by the phantom (its truth segment map) and the
pipeline's landmark stage (on detected landmarks), so that segment-level
comparisons measure landmark and segmentation error, never a convention gap.

Landmarks (world LPS mm): `base` = centre of the mitral valve on the base
plane; `apex` = epicardial apex; `rv_insertion` = anterior insertion point of
the right-ventricular free wall on the LV.

Convention (Cerqueira et al., Circulation 2002, made exact):
- long axis u = unit(apex − base); axial fraction t = ((p − base)·u) / |apex − base|
  (0 on the base plane, 1 at the epicardial apex).
- angle θ ∈ [0°, 360°) of p about u, measured from the direction of
  rv_insertion projected perpendicular to u, positive by the right-hand rule
  about u. In a normal LPS heart (u ∝ (1,−1,−1), RV right-anterior) the septum
  is at θ = +60°.
- rings along the axis with f = apex_cap_fraction: segment 17 (apex cap) is
  t ≥ 1 − f; the rest [0, 1 − f) is split into equal thirds basal / mid /
  apical (points above the base plane, t < 0, count as basal).
- basal (mid) sectors of 60° from θ = 0: 2 (8) anteroseptal, 3 (9)
  inferoseptal, 4 (10) inferior, 5 (11) inferolateral, 6 (12) anterolateral,
  1 (7) anterior. Apical sectors of 90°: [15, 105) 14 septal, [105, 195)
  15 inferior, [195, 285) 16 lateral, otherwise 13 anterior.

The apex cap is "the myocardium beyond the end of the LV cavity". The
endocardial apex is not a landmark, so f stands for the apical wall thickness
over the base→epicardial-apex distance. The phantom builds every LV so that its
endocardial apex lies exactly at 1 − f (apical wall = f/(1−f) × cavity length)
and records f in truth.json (`aha_apex_cap_fraction`); a pipeline stage passes
the same value (DEFAULT_APEX_CAP_FRACTION unless configured), so truth and
pipeline use one definition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctp_steps.types import Geometry

DEFAULT_APEX_CAP_FRACTION = 0.1

SEGMENT_NAMES = {
    1: "basal anterior",
    2: "basal anteroseptal",
    3: "basal inferoseptal",
    4: "basal inferior",
    5: "basal inferolateral",
    6: "basal anterolateral",
    7: "mid anterior",
    8: "mid anteroseptal",
    9: "mid inferoseptal",
    10: "mid inferior",
    11: "mid inferolateral",
    12: "mid anterolateral",
    13: "apical anterior",
    14: "apical septal",
    15: "apical inferior",
    16: "apical lateral",
    17: "apex",
}
N_SEGMENTS = len(SEGMENT_NAMES)
TERRITORY_SEGMENTS = {
    "LAD": (1, 2, 7, 8, 13, 14, 17),
    "RCA": (3, 4, 9, 10, 15),
    "LCX": (5, 6, 11, 12, 16),
}
SEGMENT_TERRITORY = {seg: terr for terr, segs in TERRITORY_SEGMENTS.items() for seg in segs}

# (first θ of the sector in degrees, width in degrees, segment), per ring
RING_SECTORS = {
    "basal": tuple((60.0 * i, 60.0, seg) for i, seg in enumerate((2, 3, 4, 5, 6, 1))),
    "mid": tuple((60.0 * i, 60.0, seg) for i, seg in enumerate((8, 9, 10, 11, 12, 7))),
    "apical": tuple((15.0 + 90.0 * i, 90.0, seg) for i, seg in enumerate((14, 15, 16, 13))),
}


@dataclass(frozen=True)
class LongAxisFrame:
    """The LV's cylindrical frame: origin at the base, axis u, θ = 0 towards the RV insertion."""

    base: np.ndarray
    u: np.ndarray
    ref: np.ndarray  # unit, ⊥ u, towards the RV insertion (θ = 0)
    ortho: np.ndarray  # u × ref (θ = 90°)
    length_mm: float  # |apex − base|

    def coordinates(self, points_world: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(t, θ in degrees [0, 360), distance from the axis in mm) of points (..., 3)."""
        d = np.asarray(points_world, dtype=float) - self.base
        t = (d @ self.u) / self.length_mm
        x, y = d @ self.ref, d @ self.ortho
        theta = np.degrees(np.arctan2(y, x)) % 360.0
        return t, theta, np.hypot(x, y)


def long_axis_frame(apex, base, rv_insertion) -> LongAxisFrame:
    """The frame of the convention above; raises ValueError on degenerate landmarks."""
    apex, base, rv = (np.asarray(p, dtype=float).reshape(3) for p in (apex, base, rv_insertion))
    axis = apex - base
    length = float(np.linalg.norm(axis))
    if length < 1e-6:
        raise ValueError("apex and base coincide")
    u = axis / length
    r = (rv - base) - ((rv - base) @ u) * u
    if np.linalg.norm(r) < 1e-6:
        raise ValueError("rv_insertion lies on the long axis")
    ref = r / np.linalg.norm(r)
    return LongAxisFrame(base=base, u=u, ref=ref, ortho=np.cross(u, ref), length_mm=length)


def ring_bounds(apex_cap_fraction: float = DEFAULT_APEX_CAP_FRACTION) -> tuple[float, float, float]:
    """Axial fractions where basal→mid, mid→apical and apical→apex cap change."""
    if not 0 < apex_cap_fraction < 1:
        raise ValueError(f"apex_cap_fraction {apex_cap_fraction} must lie in (0, 1)")
    rest = 1.0 - apex_cap_fraction
    return rest / 3.0, 2.0 * rest / 3.0, rest


def segments_from_coordinates(
    t: np.ndarray, theta_deg: np.ndarray, apex_cap_fraction: float = DEFAULT_APEX_CAP_FRACTION
) -> np.ndarray:
    """AHA segment (1..17, uint8) from axial fraction t and angle θ (degrees)."""
    t1, t2, t3 = ring_bounds(apex_cap_fraction)
    t = np.asarray(t, dtype=float)
    theta = np.asarray(theta_deg, dtype=float) % 360.0
    ring6 = np.minimum((theta // 60.0).astype(int), 5)
    apical4 = (((theta - 15.0) % 360.0) // 90.0).astype(int) % 4
    basal = np.array([s for _, _, s in RING_SECTORS["basal"]], dtype=np.uint8)
    mid = np.array([s for _, _, s in RING_SECTORS["mid"]], dtype=np.uint8)
    apical = np.array([s for _, _, s in RING_SECTORS["apical"]], dtype=np.uint8)
    return np.select(
        [t < t1, t < t2, t < t3],
        [basal[ring6], mid[ring6], apical[apical4]],
        default=np.uint8(17),
    ).astype(np.uint8)


def aha_segments(
    points_world: np.ndarray,
    apex,
    base,
    rv_insertion,
    apex_cap_fraction: float = DEFAULT_APEX_CAP_FRACTION,
) -> np.ndarray:
    """AHA segment (1..17, uint8) of points (..., 3) in world LPS mm; shape (...)."""
    t, theta, _ = long_axis_frame(apex, base, rv_insertion).coordinates(points_world)
    return segments_from_coordinates(t, theta, apex_cap_fraction)


def aha_segment_map(
    myocardium_zyx: np.ndarray,
    geometry: Geometry,
    apex,
    base,
    rv_insertion,
    apex_cap_fraction: float = DEFAULT_APEX_CAP_FRACTION,
) -> np.ndarray:
    """uint8 volume: the segment of every myocardium voxel (at its centre), 0 elsewhere."""
    mask = np.asarray(myocardium_zyx, dtype=bool)
    zyx = np.argwhere(mask)
    out = np.zeros(mask.shape, dtype=np.uint8)
    if len(zyx):
        points = geometry.zyx_to_world(zyx)
        out[mask] = aha_segments(points, apex, base, rv_insertion, apex_cap_fraction)
    return out
