"""Kinetics of the shifted phantom family: a Parker-shaped AIF and a two-compartment exchange myocardium.

Nothing here is shared with `kinetics.py` (the training phantom's gamma variates
and one-compartment Renkin-Crone tissue): a net or estimator that learnt the
training family's curve shapes meets different ones here.

AIF (blood, HU above baseline): the population-averaged form of Parker et al.,
Magn Reson Med 2006;56:993-1000 (two Gaussians, first pass and recirculation,
plus an exponential washout switched on by a sigmoid), with the published
constants, stretched in time (an iodine bolus injected over ~5 s is wider than
the MRI gadolinium bolus Parker fitted), its recirculation and washout terms
scaled per patient, shifted to the bolus arrival and scaled to a peak HU.
Unlike a gamma variate with recirculation it does not return to baseline: the
washout plateau stays at ~20-35 % of the peak over the scan.

Myocardium: the two-compartment exchange model (2CXM; Brix et al., Magn Reson
Med 2004;52:420-9; Sourbron & Buckley, Phys Med Biol 2012;57:R1-33):
    vp·dCp/dt = Fp·(Ca_p − Cp) − PS·(Cp − Ce),   ve·dCe/dt = PS·(Cp − Ce),
    C = vp·Cp + ve·Ce,
with plasma flow Fp = F·(1 − Hct), plasma volume vp = vb·(1 − Hct) and the
plasma AIF Ca_p = Ca/(1 − Hct) (iodine stays in plasma), so that in whole-blood
terms C = F · (IRF ⊗ Ca)(t − δ) with the bi-exponential impulse response
    IRF(t) = A·e^(−K₊t) + (1 − A)·e^(−K₋t),  K± = (a ± √(a² − 4b))/2,
    a = (Fp + PS)/vp + PS/ve,  b = Fp·PS/(vp·ve),  A = (Fp/vp − K₋)/(K₊ − K₋).
PS is drawn per patient independently of flow (the training phantom ties it to
flow: PS = 60 + 0.5·MBF). The convolution is integrated exactly for a
piecewise-linear AIF on a fine time grid (not the training phantom's trapezoid).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# Parker et al. 2006, Table 1 (times in minutes)
PARKER = {
    "A1": 0.809, "A2": 0.330, "T1": 0.17046, "T2": 0.365, "sigma1": 0.0563, "sigma2": 0.132,
    "alpha": 1.050, "beta": 0.1685, "s": 38.078, "tau": 0.483,
}


def parker_shape(t_min: np.ndarray, recirculation: float = 1.0, washout: float = 1.0) -> np.ndarray:
    """Parker's population AIF (arbitrary units) at times in minutes; recirculation/washout scale its
    second Gaussian and its exponential term (1, 1: the published curve)."""
    p = PARKER
    t = np.asarray(t_min, dtype=float)
    g1 = p["A1"] / (p["sigma1"] * np.sqrt(2 * np.pi)) * np.exp(-((t - p["T1"]) ** 2) / (2 * p["sigma1"] ** 2))
    g2 = p["A2"] / (p["sigma2"] * np.sqrt(2 * np.pi)) * np.exp(-((t - p["T2"]) ** 2) / (2 * p["sigma2"] ** 2))
    wash = p["alpha"] * np.exp(-p["beta"] * t) / (1.0 + np.exp(-p["s"] * (t - p["tau"])))
    return g1 + recirculation * g2 + washout * wash


@dataclass(frozen=True)
class ParkerAIF:
    """A Parker-shaped blood curve (HU): zero before `arrival_s`, maximum `peak_hu`."""

    arrival_s: float
    stretch: float  # seconds of this curve per second of Parker's (× 60 s/min)
    peak_hu: float
    recirculation: float
    washout: float

    def _raw(self, t: np.ndarray) -> np.ndarray:
        tm = np.maximum(np.asarray(t, dtype=float) - self.arrival_s, 0.0) / (60.0 * self.stretch)
        zero = parker_shape(np.zeros(1), self.recirculation, self.washout)[0]
        return np.where(np.asarray(t, dtype=float) > self.arrival_s,
                        np.maximum(parker_shape(tm, self.recirculation, self.washout) - zero, 0.0), 0.0)

    def __call__(self, t: np.ndarray) -> np.ndarray:
        fine = np.linspace(0.0, 1.0, 2001) * 60.0 * self.stretch + self.arrival_s  # first minute holds the peak
        return self.peak_hu * self._raw(t) / float(self._raw(fine).max())


def exchange_rates(mbf: np.ndarray, ps: float, vb: float, ve: float, hct: float):
    """2CXM impulse response of whole-blood flow F = MBF/6000 (1/s): (F, A, K₊, K₋), each per voxel."""
    f = np.asarray(mbf, dtype=float) / 6000.0
    fp, vp, ps_s = f * (1.0 - hct), vb * (1.0 - hct), ps / 6000.0
    a = (fp + ps_s) / vp + ps_s / ve
    b = fp * ps_s / (vp * ve)
    disc = np.sqrt(np.maximum(a * a - 4.0 * b, 0.0))
    k_plus, k_minus = (a + disc) / 2.0, (a - disc) / 2.0
    amp = (fp / vp - k_minus) / np.maximum(k_plus - k_minus, 1e-12)
    return f, amp, k_plus, k_minus


def convolve_exponential(ca: np.ndarray, k: np.ndarray, dt: float, keep: np.ndarray) -> np.ndarray:
    """y_n = ∫₀^(n·dt) e^(−k(n·dt − s)) ca(s) ds for ca linear between samples, exact; rows n in `keep` only
    (voxels × all steps would not fit in memory)."""
    k = np.maximum(np.asarray(k, dtype=float), 1e-9)
    kd = k * dt
    decay = np.exp(-kd)
    i0 = -np.expm1(-kd) / k  # ∫₀^dt e^(−k(dt−s)) ds
    i1 = 1.0 / k - i0 / kd  # (1/dt)·∫₀^dt s·e^(−k(dt−s)) ds
    w_prev, w_next = i0 - i1, i1
    keep = np.asarray(keep, dtype=int)
    out = np.zeros((len(keep), k.size))
    y = np.zeros(k.size)
    for n in range(1, int(keep.max()) + 1):
        y = decay * y + w_prev * ca[n - 1] + w_next * ca[n]
        out[keep == n] = y
    return out


@dataclass(frozen=True)
class ShiftedKinetics:
    aif: ParkerAIF  # descending aorta
    rv_first_pass: ParkerAIF
    lv_lead_s: float
    rv_lead_s: float
    tissue_delay_s: float
    blood_volume: float  # vb
    interstitial_volume: float  # ve
    permeability_surface: float  # PS, mL/100mL/min, independent of flow
    hematocrit: float
    dt_s: float

    def aorta(self, t: np.ndarray) -> np.ndarray:
        return self.aif(t)

    def lv(self, t: np.ndarray) -> np.ndarray:
        return self.aif(np.asarray(t, dtype=float) + self.lv_lead_s)

    def rv(self, t: np.ndarray) -> np.ndarray:
        return self.rv_first_pass(np.asarray(t, dtype=float))

    def extraction(self, mbf: np.ndarray) -> np.ndarray:
        """Crone-Renkin first-pass extraction E = 1 − exp(−PS/Fp) of this PS (for the record and tests)."""
        return 1.0 - np.exp(-self.permeability_surface / (np.asarray(mbf, dtype=float) * (1 - self.hematocrit)))

    def tissue(self, mbf: np.ndarray, times_s: np.ndarray) -> np.ndarray:
        """Myocardial enhancement (frames, voxels) in HU for MBF values (voxels,) in mL/100mL/min."""
        f, amp, k_plus, k_minus = exchange_rates(
            mbf, self.permeability_surface, self.blood_volume, self.interstitial_volume, self.hematocrit
        )
        tau = np.maximum(np.asarray(times_s, dtype=float) - self.tissue_delay_s, 0.0)
        dt = self.dt_s
        n = int(np.ceil(tau.max() / dt)) + 2
        ca = self.aorta(np.arange(n) * dt)
        i0 = np.minimum(np.floor(tau / dt).astype(int), n - 2)
        w = ((tau - i0 * dt) / dt)[:, None]
        out = np.zeros((len(tau), np.size(mbf)))
        m = len(tau)
        for weight, k in ((amp, k_plus), (1.0 - amp, k_minus)):
            y = convolve_exponential(ca, k, dt, np.concatenate([i0, i0 + 1]))
            out += weight * ((1 - w) * y[:m] + w * y[m:])
        return f * out

    def aif_summary(self, times_s: np.ndarray) -> dict:
        """Truth of the AIF: values at the frames and the continuous peak (same keys as the default family)."""
        fine = np.arange(0.0, float(times_s[-1]) + 1e-9, 0.01)
        curve = self.aorta(fine)
        i = int(np.argmax(curve))
        return {
            "aif": self.aorta(times_s).tolist(),
            "aif_peak_hu": float(curve[i]),
            "aif_peak_time_s": float(fine[i]),
            "bolus_arrival_s": self.aif.arrival_s,
        }

    def record(self) -> dict:
        d = asdict(self)
        d["model"] = (
            "2CXM (Brix 2004; Sourbron & Buckley 2012): C(t) = F*(IRF conv Ca)(t - delay), "
            "IRF = A exp(-K+ t) + (1-A) exp(-K- t), Fp = F(1-Hct), vp = vb(1-Hct), PS independent of flow; "
            "AIF: Parker et al. 2006 population form, stretched and scaled"
        )
        return d
