"""The MBF stage's configuration (`mbf:` in config.yaml); importing it loads no torch."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Method = Literal["upslope", "one_compartment", "fermi"]
METHODS: tuple[Method, ...] = ("upslope", "one_compartment", "fermi")


class RegularisationConfig(BaseModel):
    """Edge-preserving averaging of tissue curves before the fit that makes `mbf.nii.gz`.

    Each voxel's curve becomes a weighted mean of its neighbours' curves: a
    Gaussian in distance times a Gaussian in the difference of a guide MBF map
    (first a plain same-segment smoothing, then the previous pass), so voxels
    across an ischemic border barely mix. The voxel-wise map stays in `mbf_raw.nii.gz`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="Regularise; false makes mbf.nii.gz the voxel-wise fit.")
    radius_mm: float = Field(6.0, gt=0, le=30, description="Neighbourhood radius (mm).")
    spatial_sigma_mm: float = Field(4.0, gt=0, le=30, description="Gaussian width of the distance weight (mm).")
    range_sigma: float = Field(
        30.0, gt=0, description="Gaussian width of the guide-MBF difference weight (mL/100mL/min)."
    )
    passes: int = Field(2, ge=1, le=5, description="Guided passes after the first plain smoothing.")
    same_segment: bool = Field(True, description="Average only within one AHA segment.")


class MBFConfig(BaseModel):
    """Myocardial blood flow: curves, fitting method, extraction correction, numerics."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Method = Field(
        "one_compartment",
        description="upslope (max tissue slope / peak AIF), one_compartment (K1, k2, vb, delay) "
        "or fermi (Fermi-constrained deconvolution, MBF = residue amplitude).",
    )
    renkin_crone: bool = Field(
        True,
        description="one_compartment: MBF from K1 = MBF*(1-exp(-PS/MBF)); false takes MBF = K1 (extraction 1).",
    )
    ps_ml_100ml_min: float = Field(
        130.0, gt=0, description="Permeability-surface product of iodine for the Renkin-Crone correction."
    )
    min_aif_peak_hu: float = Field(
        100.0, ge=0, description="AIF peak enhancement below this excludes the patient (missed or weak bolus)."
    )
    arrival_fraction: float = Field(
        0.1, gt=0, lt=1, description="Bolus arrival: the AIF first exceeds this fraction of its peak enhancement."
    )
    max_delay_s: float = Field(10.0, ge=0, le=30, description="Upper bound of the AIF-to-tissue delay (s).")
    max_iter: int = Field(60, ge=1, le=500, description="Levenberg-Marquardt iterations at most.")
    chunk_voxels: int = Field(20_000, ge=100, description="Voxels fitted at once; bounds memory.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Torch device of the fits.")
    regularisation: RegularisationConfig = Field(default_factory=RegularisationConfig)
