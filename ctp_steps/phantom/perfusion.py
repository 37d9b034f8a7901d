"""The true stress MBF map: coronary territories, ischemia and smooth heterogeneity.

Territories follow the AHA segments (ctp_steps.aha) with logistic borders a
few mm wide. An ischemic territory gets its ischemic MBF from a random level
along the axis down to the apex, and from the endocardium out to a random
fraction of the wall (subendocardial predominance; ≥ 1 is transmural). A mild
smooth field (low angular harmonics and a base-apex trend) multiplies all of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from ctp_steps.aha import RING_SECTORS, SEGMENT_TERRITORY, TERRITORY_SEGMENTS, ring_bounds
from ctp_steps.phantom.anatomy import HeartFields, LeftVentricle
from ctp_steps.phantom.params import PhantomParams, uniform

TERRITORIES = tuple(TERRITORY_SEGMENTS)  # ("LAD", "RCA", "LCX")


@dataclass(frozen=True)
class Ischemia:
    mbf: float  # ischemic stress MBF (mL/100mL/min)
    axial_start: float  # fraction base → apex where it begins
    transmural_extent: float  # fraction of the wall from the endocardium


@dataclass(frozen=True)
class Perfusion:
    normal_mbf: dict[str, float]
    ischemia: dict[str, Ischemia]
    heterogeneity: float
    heterogeneity_coefficients: tuple[float, ...]
    border_width_mm: float
    apex_cap_fraction: float

    def record(self) -> dict:
        """JSON-able parameters (truth.json `ischemia` and `perfusion`)."""
        return {
            "territories": sorted(self.ischemia),
            "severity_mbf": {k: v.mbf for k, v in self.ischemia.items()},
            "extent": {
                k: {"axial_start_fraction": v.axial_start, "transmural_extent": v.transmural_extent}
                for k, v in self.ischemia.items()
            },
            "normal_mbf": dict(self.normal_mbf),
            "heterogeneity": self.heterogeneity,
            "border_width_mm": self.border_width_mm,
        }


def draw_perfusion(rng: np.random.Generator, params: PhantomParams) -> Perfusion:
    normal = {t: uniform(rng, params.normal_mbf) for t in TERRITORIES}
    n_ischemic = int(rng.choice(3, p=params.ischemic_territory_probs))
    chosen = sorted(rng.choice(len(TERRITORIES), size=n_ischemic, replace=False).tolist())
    ischemia = {
        TERRITORIES[i]: Ischemia(
            mbf=uniform(rng, params.ischemic_mbf),
            axial_start=uniform(rng, params.ischemia_axial_start),
            transmural_extent=uniform(rng, params.ischemia_transmural_extent),
        )
        for i in chosen
    }
    return Perfusion(
        normal_mbf=normal,
        ischemia=ischemia,
        heterogeneity=uniform(rng, params.mbf_heterogeneity),
        heterogeneity_coefficients=tuple(rng.normal(size=5).tolist()),
        border_width_mm=params.border_width_mm,
        apex_cap_fraction=params.apex_cap_fraction,
    )


def territory_weights(
    t: np.ndarray,
    theta: np.ndarray,
    radius: np.ndarray,
    length_mm: float,
    width_mm: float,
    cap_fraction: float,
) -> dict[str, np.ndarray]:
    """Soft AHA territory membership (sums to 1) with logistic borders `width_mm` wide."""
    arc = np.radians(1.0) * np.maximum(radius, 5.0) / width_mm  # logistic units per degree

    def ring(name: str) -> dict[str, np.ndarray]:
        out = {terr: np.zeros_like(t) for terr in TERRITORIES}
        for start, width, seg in RING_SECTORS[name]:
            off = np.abs((theta - start - width / 2 + 180.0) % 360.0 - 180.0)
            out[SEGMENT_TERRITORY[seg]] += expit((width / 2 - off) * arc)
        return out

    _, t_apical, t_cap = ring_bounds(cap_fraction)
    mid, apical = ring("mid"), ring("apical")
    w_apical = expit((t - t_apical) * length_mm / width_mm)
    w_cap = expit((t - t_cap) * length_mm / width_mm)
    weights = {terr: (1 - w_apical) * mid[terr] + w_apical * apical[terr] for terr in TERRITORIES}
    total = sum(weights.values())
    return {
        terr: (1 - w_cap) * weights[terr] / total + (w_cap if terr == "LAD" else 0.0) for terr in TERRITORIES
    }


def mbf_field(perf: Perfusion, heart: HeartFields, lv: LeftVentricle) -> np.ndarray:
    """True MBF (mL/100mL/min) of every myocardium voxel of the heart fields."""
    w = perf.border_width_mm
    weights = territory_weights(heart.t, heart.theta, heart.radius, lv.length, w, perf.apex_cap_fraction)
    mbf = np.zeros_like(heart.t)
    for terr in TERRITORIES:
        normal = perf.normal_mbf[terr]
        isch = perf.ischemia.get(terr)
        if isch is None:
            mbf += weights[terr] * normal
            continue
        q = expit((heart.t - isch.axial_start) * lv.length / w) * expit(
            (isch.transmural_extent - heart.depth) * lv.wall / w
        )
        mbf += weights[terr] * ((1 - q) * normal + q * isch.mbf)
    c = np.asarray(perf.heterogeneity_coefficients)
    th = np.radians(heart.theta)
    modes = np.stack([np.cos(th), np.sin(th), np.cos(2 * th), np.sin(2 * th), 2 * heart.t - 1])
    return mbf * (1 + perf.heterogeneity * (c @ modes) / np.abs(c).sum())
