"""Contrast kinetics: gamma-variate blood curves and a one-compartment myocardium.

Curves are enhancements in HU above each tissue's baseline (iodine concentration
is proportional to HU). The descending aorta carries the AIF: a first-pass
gamma variate plus a smaller, broader recirculation. LV blood is the same curve
`lv_lead_s` earlier; RV blood arrives `rv_lead_s` before the aorta with a
higher, sharper first pass. Myocardium (MBF in mL/100mL/min, F = MBF/6000 1/s):
    C(t) = K1·(Ca ⊗ e^(−k2·t))(t − δ) + vb·Ca(t − δ),
    K1 = E·F,  E = 1 − exp(−PS/MBF) (Renkin-Crone),  k2 = K1/ve,
    PS = PS0 + γ·MBF (capillary recruitment: extraction ~0.8 at 50, ~0.55 at 200;
    written out here, not imported from the MBF stage, so the truth stays independent of the estimator),
with Ca the aortic AIF and δ the tissue delay. The convolution is integrated on
a fine time grid (exponential trapezoid recursion, vectorised over voxels) and
sampled at the frame times.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ctp_steps.phantom.params import PhantomParams, uniform


@dataclass(frozen=True)
class GammaVariate:
    """peak · x^α · e^(α(1−x)), x = (t − arrival)/time_to_peak: peaks at arrival + time_to_peak."""

    arrival_s: float
    time_to_peak_s: float
    peak: float
    shape: float

    def __call__(self, t: np.ndarray) -> np.ndarray:
        x = np.maximum(np.asarray(t, dtype=float) - self.arrival_s, 0.0) / self.time_to_peak_s
        return self.peak * x**self.shape * np.exp(self.shape * (1.0 - x))


@dataclass(frozen=True)
class Kinetics:
    first_pass: GammaVariate  # descending aorta
    recirculation: GammaVariate
    rv_first_pass: GammaVariate
    lv_lead_s: float
    rv_lead_s: float
    tissue_delay_s: float
    blood_volume: float  # vb
    extravascular_volume: float  # ve
    permeability_surface: float  # PS at zero flow, mL/100mL/min
    ps_flow_slope: float  # PS = permeability_surface + ps_flow_slope * MBF (capillary recruitment)
    dt_s: float

    def aorta(self, t: np.ndarray) -> np.ndarray:
        """The true AIF: descending-aorta enhancement (HU)."""
        return self.first_pass(t) + self.recirculation(t)

    def lv(self, t: np.ndarray) -> np.ndarray:
        return self.aorta(np.asarray(t) + self.lv_lead_s)

    def rv(self, t: np.ndarray) -> np.ndarray:
        return self.rv_first_pass(t) + self.recirculation(np.asarray(t) + self.rv_lead_s)

    def rate_constants(self, mbf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """K1 and k2 (1/s) for MBF in mL/100mL/min."""
        mbf = np.asarray(mbf, dtype=float)
        extraction = 1.0 - np.exp(-self.permeability_surface / mbf - self.ps_flow_slope)
        k1 = extraction * mbf / 6000.0
        return k1, k1 / self.extravascular_volume

    def tissue(self, mbf: np.ndarray, times_s: np.ndarray) -> np.ndarray:
        """Myocardial enhancement (frames, voxels) in HU for MBF values (voxels,)."""
        k1, k2 = self.rate_constants(mbf)
        tau = np.maximum(np.asarray(times_s, dtype=float) - self.tissue_delay_s, 0.0)
        dt = self.dt_s
        i0 = np.floor(tau / dt).astype(int)
        w = (tau - i0 * dt) / dt
        wanted = set(i0.tolist()) | set((i0 + 1).tolist())
        ca = self.aorta(np.arange(max(wanted) + 1) * dt)
        decay, half = np.exp(-k2 * dt), 0.5 * dt
        y = np.zeros_like(k1)
        snapshots = {0: y}
        for n in range(1, max(wanted) + 1):
            y = decay * (y + half * ca[n - 1]) + half * ca[n]
            if n in wanted:
                snapshots[n] = y
        conv = np.stack([(1 - wf) * snapshots[i] + wf * snapshots[i + 1] for i, wf in zip(i0, w)])
        return k1 * conv + self.blood_volume * self.aorta(tau)[:, None]

    def aif_summary(self, times_s: np.ndarray) -> dict:
        """Truth of the AIF: values at the frames and the continuous peak."""
        fine = np.arange(0.0, float(times_s[-1]) + 1e-9, 0.01)
        curve = self.aorta(fine)
        i = int(np.argmax(curve))
        return {
            "aif": self.aorta(times_s).tolist(),
            "aif_peak_hu": float(curve[i]),
            "aif_peak_time_s": float(fine[i]),
            "bolus_arrival_s": self.first_pass.arrival_s,
        }

    def record(self) -> dict:
        d = asdict(self)
        d["model"] = (
            "C(t) = K1*(Ca conv exp(-k2 t))(t - delay) + vb*Ca(t - delay); "
            "K1 = E*MBF/6000, E = 1 - exp(-PS/MBF), PS = permeability_surface + ps_flow_slope*MBF, k2 = K1/ve"
        )
        return d


def draw_kinetics(rng: np.random.Generator, params: PhantomParams, frame_times_s: np.ndarray) -> Kinetics:
    """Curves whose arrival leaves at least two baseline frames (arrival ≥ second frame + 1 s)."""
    lo, hi = params.aif_arrival_s
    arrival = uniform(rng, (min(max(lo, float(frame_times_s[1]) + 1.0), hi), hi))
    ttp = uniform(rng, params.aif_time_to_peak_s)
    peak = uniform(rng, params.aif_peak_hu)
    shape = uniform(rng, params.aif_shape)
    first = GammaVariate(arrival, ttp, peak, shape)
    recirc = GammaVariate(
        arrival_s=arrival + ttp + rng.uniform(1.0, 3.0),
        time_to_peak_s=ttp * rng.uniform(1.2, 1.6),
        peak=peak * uniform(rng, params.recirculation_fraction),
        shape=rng.uniform(1.5, 2.5),
    )
    rv = GammaVariate(arrival - params.rv_lead_s, ttp * 0.6, peak * rng.uniform(1.1, 1.4), shape + 1.0)
    return Kinetics(
        first_pass=first,
        recirculation=recirc,
        rv_first_pass=rv,
        lv_lead_s=params.lv_lead_s,
        rv_lead_s=params.rv_lead_s,
        tissue_delay_s=uniform(rng, params.tissue_delay_s),
        blood_volume=uniform(rng, params.blood_volume_fraction),
        extravascular_volume=params.extravascular_fraction,
        permeability_surface=params.permeability_surface,
        ps_flow_slope=params.ps_flow_slope,
        dt_s=params.kinetics_dt_s,
    )
