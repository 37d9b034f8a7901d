"""Settings of the segmentation stages (validated as part of the pipeline config).

Inference follows what each checkpoint says about itself (widths, voxel
spacing, intensity window, input channels); `network` and `training` only
shape what `snakemake train` builds. The device comes from the pipeline-wide
`device` key.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ctp_steps.phantom.params import PhantomParams

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
        default_factory=PhantomParams, description="Phantom settings of the training patients (grid included)."
    )
    threads: int = Field(
        1, ge=1, description="CPU threads of a training job (1: on a shared machine, OpenMP threads that wait for "
        "each other burn far more CPU than they save)."
    )
    noise_sd_hu: tuple[float, float] = Field((0.0, 15.0), description="Extra Gaussian noise per crop (HU, uniform range).")
    rotation_deg: float = Field(10.0, ge=0, le=45, description="Largest random rotation of a crop (degrees).")
    scale: tuple[float, float] = Field((0.9, 1.1), description="Random isotropic scaling range of a crop.")
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
