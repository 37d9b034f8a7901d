"""Named extraction presets: how the one-compartment K1 of iodinated contrast maps to myocardial blood flow.

K1 = E(F)·F, and the extraction E(F) of iodine is not known per patient: every
choice below is a model, and absolute MBF moves with it (issue 20, item 3). The
stage maps the same fitted K1 through every preset (no refit) and reports the
spread, so a reader sees how much of a patient's MBF is the model's choice.

Units: mL/100mL/min throughout. Literature values per gram (mL/g/min) are taken
×100 as per 100 mL; the myocardial density (~1.05 g/mL) is ignored, a 5 % scale
far below the spread between presets.

Presets (`PRESETS`):

- ``project_default``: Renkin-Crone E = 1 − exp(−PS/F) with capillary
  recruitment PS = 60 + 0.5·F (`MBFConfig.ps_ml_100ml_min`, `ps_flow_slope`).
  No published source of its own: it is the model this project's training
  phantom generates its tissue with (ctp_steps/phantom/kinetics.py), so on
  that phantom it is exact by construction, and nowhere else is it validated.
- ``ct_pet_2023``: the generalized Renkin-Crone form E = 1 − α·exp(−β/F)
  (the form of Lortie et al., Eur J Nucl Med Mol Imaging 2007;34:1765-74,
  for 82Rb) with α = 0.614, β = 0.218 mL/g/min, fitted between dynamic CT
  K1 and 82Rb PET MBF during stress in 79 healthy individuals (J Cardiovasc
  Comput Tomogr 2023, Rigshospitalet Copenhagen, article S1934-5925(23)00093-X).
  The only preset fitted to iodinated contrast in human myocardium. It maps
  to PET flow, so it also absorbs CT-specific underestimation, not only
  capillary extraction; E ≈ 0.60 at 50, 0.51 at 100, 0.43 at 300.
- ``sucrose_ps_1984``: classic fixed-PS Renkin-Crone E = 1 − exp(−PS/F),
  PS = 77 mL/100mL/min, the sucrose PS measured by local clearance in
  isolated Ringer-perfused rabbit hearts at F = 133 (Microvasc Res 1984,
  PMID 6708829; inulin: 13.9, restricted diffusion). Sucrose (342 Da) is
  smaller than iodinated monomers (~800 Da), so iodine's PS is likely lower.
  With a fixed PS, K1 saturates at PS: K1 ≥ k1(max_mbf) (72 for 600) maps to
  `max_mbf`, so this preset says "flow undetermined" for ordinary stress K1.
  A sensitivity bound, not a recommended model.
- ``unity``: E = 1, MBF = K1 (as `renkin_crone: false`). A floor, not a
  model: any extraction ≤ 1 gives MBF ≥ K1, and iodine is extracted
  substantially on first pass (Canty et al., Circulation 1991;84:2071-8).

`INTERVAL_PRESETS` are those whose MBF spans the reported model interval
(`mbf_extraction_low/high`): the configured preset and the published
iodinated-contrast preset. It is a model interval (spread over presets), not
a confidence interval; the per-preset columns show the bounds outside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, get_args

import numpy as np

from ctp_steps.mbf.config import ExtractionPreset, MBFConfig
from ctp_steps.mbf.fit import RenkinCrone

PRESETS: tuple[ExtractionPreset, ...] = get_args(ExtractionPreset)
INTERVAL_PRESETS: tuple[ExtractionPreset, ...] = ("project_default", "ct_pet_2023")


class ExtractionModel(Protocol):
    """K1 = E(F)·F and its monotone inverse (what `fit_curves` needs of `renkin_crone`)."""

    def k1(self, flow: np.ndarray) -> np.ndarray: ...

    def flow(self, k1: np.ndarray, max_flow: float) -> np.ndarray: ...


@dataclass(frozen=True)
class GeneralizedRenkinCrone:
    """E = 1 − a·exp(−b/F) (Lortie et al. 2007's form); b in mL/100mL/min.

    With a < 1, dK1/dF ≥ 1 − a > 0: K1 grows without bound, so every K1 has one flow.
    """

    a: float
    b: float

    def k1(self, flow: np.ndarray) -> np.ndarray:
        flow = np.asarray(flow, dtype=float)
        return flow * (1.0 - self.a * np.exp(-self.b / flow))

    def flow(self, k1: np.ndarray, max_flow: float) -> np.ndarray:
        """The inverse of k1() on the grid `RenkinCrone.flow` uses; at most `max_flow`."""
        flow = np.geomspace(1e-3, max_flow, 4000)
        return np.interp(np.asarray(k1, dtype=float), self.k1(flow), flow, left=0.0, right=max_flow)


# Published constants (mL/100mL/min); see the module docstring for sources.
CT_PET_2023 = GeneralizedRenkinCrone(a=0.614, b=21.8)
SUCROSE_PS_1984 = RenkinCrone(ps=77.0, flow_slope=0.0)


def preset_model(
    preset: ExtractionPreset, ps_ml_100ml_min: float = 60.0, ps_flow_slope: float = 0.5
) -> ExtractionModel | None:
    """The K1 → flow model of `preset` (None: MBF = K1); project_default takes the configured PS."""
    if preset == "project_default":
        return RenkinCrone(ps_ml_100ml_min, ps_flow_slope)
    if preset == "ct_pet_2023":
        return CT_PET_2023
    if preset == "sucrose_ps_1984":
        return SUCROSE_PS_1984
    if preset == "unity":
        return None
    raise ValueError(f"unknown extraction preset {preset!r}; known: {', '.join(PRESETS)}")


def used_preset(cfg: MBFConfig) -> ExtractionPreset:
    """The preset an `MBFConfig` applies to one-compartment K1 (`renkin_crone: false` is unity)."""
    return cfg.extraction if cfg.renkin_crone else "unity"


def extraction_model(cfg: MBFConfig) -> ExtractionModel | None:
    """The K1 → flow model an `MBFConfig` applies (None: MBF = K1); the default is today's RenkinCrone(60, 0.5)."""
    return preset_model(used_preset(cfg), cfg.ps_ml_100ml_min, cfg.ps_flow_slope)


def flow_of(k1: np.ndarray, model: ExtractionModel | None, max_flow: float) -> np.ndarray:
    """MBF from K1 (mL/100mL/min) under `model` (None: MBF = K1), as `fit_curves` computes it."""
    return model.flow(k1, max_flow) if model is not None else np.asarray(k1, dtype=float)


def k1_of(mbf: np.ndarray, model: ExtractionModel | None) -> np.ndarray:
    """K1 from MBF (mL/100mL/min) under `model` (None: K1 = MBF), the inverse of `flow_of`; flows are floored at
    1e-3 so that PS/F stays finite where a map holds 0."""
    mbf = np.asarray(mbf, dtype=float)
    return model.k1(np.maximum(mbf, 1e-3)) if model is not None else mbf


def preset_flows(cfg: MBFConfig, k1: np.ndarray) -> dict[ExtractionPreset, np.ndarray]:
    """MBF of the same K1 under every preset (project_default with the configured PS)."""
    return {p: flow_of(k1, preset_model(p, cfg.ps_ml_100ml_min, cfg.ps_flow_slope), cfg.max_mbf) for p in PRESETS}
