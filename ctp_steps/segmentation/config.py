"""Settings of the segmentation stages (validated as part of the pipeline config).

Inference follows what each checkpoint says about itself (widths, voxel
spacing, intensity window, input channels); `network` and `training` only
shape what `snakemake train` builds. The device comes from the pipeline-wide
`device` key.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ctp_steps.phantom.params import PhantomParams, randomised_training_phantom

# The study's published VB-Net widths (input block, down1..down4).
PUBLISHED_WIDTHS = (16, 32, 64, 128, 256)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VolumeBounds(Strict):
    """Plausible volume of one structure (mL); outside it the patient is excluded with the reason."""

    min_ml: float = Field(ge=0, description="Smallest plausible volume (mL).")
    max_ml: float = Field(gt=0, description="Largest plausible volume (mL).")

    @model_validator(mode="after")
    def _ordered(self) -> "VolumeBounds":
        if self.min_ml >= self.max_ml:
            raise ValueError("min_ml must be below max_ml")
        return self


class NetworkConfig(Strict):
    """The VB-Net that training builds, and the grid and intensities it sees."""

    widths: tuple[int, int, int, int, int] = Field(
        (8, 16, 32, 64, 128),
        description="Channels of the input block and down1..down4 (the up path mirrors them). "
        f"Published: {list(PUBLISHED_WIDTHS)}; the default is a narrow CPU variant.",
    )
    spacing_zyx_mm: tuple[float, float, float] = Field(
        (3.0, 2.5, 2.5), description="Voxel spacing the network works at; other inputs are resampled to it and back."
    )
    hu_window: tuple[float, float] = Field(
        (-200.0, 800.0), description="HU clipped to this window, then scaled to [-1, 1]."
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout3d on the up path (listed in the paper's table).")
    frames_context: Literal["none", "temporal_max"] = Field(
        "temporal_max",
        description="Second input channel of the frames model: `none` = the frame alone (as published), "
        "`temporal_max` = also the patient's voxelwise maximum over all frames, which shows the blood pools "
        "in frames taken before the contrast arrives.",
    )

    @model_validator(mode="after")
    def _valid(self) -> "NetworkConfig":
        if min(self.widths) < 1 or min(self.spacing_zyx_mm) <= 0:
            raise ValueError("widths and spacing must be positive")
        if self.hu_window[0] >= self.hu_window[1]:
            raise ValueError("hu_window: low must be below high")
        return self


class AugmentationConfig(Strict):
    """What each training crop may look like (ctp_steps/segmentation/augment.py says why each range).

    Defaults are generic imaging ranges (nnU-Net's published 3-D augmentation where it has one), not the
    training phantom's parameters; set `rotation_deg` 10, `scale` (0.9, 1.1), `stretch` 0, `contrast_gain`
    (0.95, 1.05), `offset_hu` 10, the probabilities 0 and `noise_correlation_max_vox` 0 for the narrow
    augmentation of the first shipped nets."""

    rotation_deg: float = Field(30.0, ge=0, le=90, description="Largest random rotation about each axis (degrees).")
    scale: tuple[float, float] = Field((0.7, 1.4), description="Random isotropic scaling range of a crop.")
    stretch: float = Field(0.1, ge=0, lt=0.5, description="Extra per-axis scaling, uniform in 1 ± stretch.")
    contrast_gain: tuple[float, float] = Field(
        (0.7, 1.4), description="Factor on HU − 40 (enhancement and fat contrast: tube voltage, bolus, iodine)."
    )
    offset_hu: float = Field(20.0, ge=0, description="Largest HU offset added to a crop (calibration).")
    gamma: tuple[float, float] = Field((0.7, 1.5), description="Gamma range on the windowed intensities.")
    gamma_probability: float = Field(0.3, ge=0, le=1, description="Share of crops given a gamma.")
    blur_sigma_vox: tuple[float, float] = Field((0.5, 1.0), description="Gaussian blur SD range (voxels).")
    blur_probability: float = Field(0.2, ge=0, le=1, description="Share of crops blurred (sharper/smoother kernels).")
    low_resolution_zoom: tuple[float, float] = Field(
        (0.5, 1.0), description="Down-and-up sampling factor range (a coarser acquisition)."
    )
    low_resolution_probability: float = Field(0.25, ge=0, le=1, description="Share of crops at lower resolution.")
    noise_sd_hu: tuple[float, float] = Field((0.0, 25.0), description="Extra noise SD per crop (HU, uniform range).")
    noise_correlation_max_vox: float = Field(
        1.5, ge=0, description="Largest SD (voxels) of the Gaussian that correlates the extra noise (0: white)."
    )

    @model_validator(mode="after")
    def _ordered(self) -> "AugmentationConfig":
        for name in ("scale", "contrast_gain", "gamma", "blur_sigma_vox", "low_resolution_zoom", "noise_sd_hu"):
            lo, hi = getattr(self, name)
            if lo > hi or lo < 0:
                raise ValueError(f"{name}: need 0 <= low <= high, got {(lo, hi)}")
        if self.scale[0] <= 0 or self.low_resolution_zoom[0] <= 0:
            raise ValueError("scale and low_resolution_zoom must be positive")
        return self


def widened_phantom(phantom: PhantomParams) -> dict:
    """The training phantom's settings that differ from the default cohort's (what the training distribution adds)."""
    default = PhantomParams().model_dump(mode="json")
    return {k: v for k, v in phantom.model_dump(mode="json").items() if default.get(k) != v}


class TaskTraining(Strict):
    """One model's optimisation."""

    steps: int = Field(1000, ge=1, description="Optimizer steps.")
    batch_size: int = Field(2, ge=1, description="Random crops per step.")
    crop_zyx: tuple[int, int, int] = Field((32, 48, 48), description="Training crop (voxels, multiples of 16).")
    learning_rate: float = Field(3e-3, gt=0, description="AdamW learning rate (one-cycle: warm-up, cosine decay).")
    foreground_fraction: float = Field(0.8, ge=0, le=1, description="Share of crops centred near a foreground voxel.")
    validate_every: int = Field(200, ge=1, description="Steps between validation Dice evaluations (best kept).")

    @model_validator(mode="after")
    def _crop(self) -> "TaskTraining":
        if any(c % 16 or c < 16 for c in self.crop_zyx):
            raise ValueError(f"crop_zyx {self.crop_zyx}: every axis must be a positive multiple of 16")
        return self


class TrainingConfig(Strict):
    """Supervised training on phantom patients made for training only (role `train`; seeds disjoint from the
    cohort's and from the validation patients')."""

    n_patients: int = Field(24, ge=1, description="Training phantom patients.")
    n_validation_patients: int = Field(4, ge=1, description="Validation phantom patients (model selection, model card).")
    seed: int = Field(20261127, ge=0, description="Root seed of the training/validation phantoms and of the run.")
    phantom: PhantomParams = Field(
        default_factory=lambda: randomised_training_phantom(),
        description="Phantom settings of the training patients (grid included): wider than the default cohort's.",
    )
    threads: int = Field(
        1, ge=1, description="CPU threads of a training job (1: on a shared machine, OpenMP threads that wait for "
        "each other burn far more CPU than they save)."
    )
    augmentation: AugmentationConfig = Field(
        default_factory=lambda: AugmentationConfig(), description="Domain randomisation of every training crop."
    )
    frames: TaskTraining = Field(default_factory=TaskTraining, description="Aorta + LV blood pool on single frames.")
    myocardium: TaskTraining = Field(
        default_factory=lambda: TaskTraining(steps=800), description="Myocardium on the average of aligned frames."
    )
    fp16_weights: bool = Field(True, description="Ship the weights in float16 (inference upcasts).")


class SegmentationConfig(Strict):
    frames_model: str = Field("vbnet_frames", description="Entry of models/manifest.json for aorta + LV on frames.")
    myocardium_model: str = Field("vbnet_myocardium", description="Entry of models/manifest.json for the myocardium.")
    batch_size: int = Field(4, ge=1, description="Frames per forward pass at inference.")
    threads: int = Field(1, ge=1, description="CPU threads of an inference job (torch intra-op threads).")
    amp: bool = Field(True, description="Mixed precision (float16 autocast) on CUDA; CPU always runs float32.")
    aif_erosion_voxels: int = Field(1, ge=0, description="Erosion of the aorta mask before its mean HU (partial volume).")
    aif_baseline_frames: int = Field(
        2, ge=1, description="Leading frames averaged as the unenhanced baseline of the AIF (`enhancement_hu`)."
    )
    aorta_ml: VolumeBounds = Field(
        default_factory=lambda: VolumeBounds(min_ml=2.0, max_ml=250.0), description="Aorta in the field of view."
    )
    lv_ml: VolumeBounds = Field(
        default_factory=lambda: VolumeBounds(min_ml=10.0, max_ml=450.0), description="LV blood pool."
    )
    myocardium_ml: VolumeBounds = Field(
        default_factory=lambda: VolumeBounds(min_ml=20.0, max_ml=500.0), description="LV myocardium."
    )
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
