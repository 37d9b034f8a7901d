"""Settings of the landmark stage (validated as part of the pipeline config)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ctp_steps.aha import DEFAULT_APEX_CAP_FRACTION, TERRITORY_SEGMENTS


class LandmarkGridConfig(BaseModel):
    """One phantom grid the training patients are drawn on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shape_zyx: tuple[int, int, int] = Field(description="Grid size (slices, rows, columns).")
    spacing_zyx_mm: tuple[float, float, float] = Field(description="Voxel spacing in mm (slice, row, column).")
    weight: float = Field(1.0, gt=0, description="Relative share of the training patients on this grid.")


class LandmarkTrainingConfig(BaseModel):
    """How `snakemake train` builds the landmark net (stored with the weights; inference reads the checkpoint)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int = Field(8, ge=1, le=64, description="Channels of the first block (16 = the published width).")
    head_channels: int | None = Field(
        16, ge=1,
        description="Channels before the last 1³ convolution (None: one per landmark, as published; "
        "that 3-map bottleneck left the apex map flat in CPU-budget trainings).",
    )
    input_mask: bool = Field(
        True, description="Feed the myocardium mask as a second input channel beside the average image."
    )
    crop_size: int = Field(40, ge=16, le=128, description="LV crop size in voxels per axis (isotropic, multiple of 4).")
    crop_margin_mm: float = Field(12.0, ge=0, description="Margin around the myocardium's bounding box (mm).")
    heatmap_sigma_vox: float = Field(1.5, gt=0, description="SD of the Gaussian heatmap targets (crop voxels).")
    train_patients: int = Field(96, ge=1, description="Training-role phantom patients.")
    val_patients: int = Field(16, ge=1, description="Validation-role phantom patients (disjoint seeds).")
    seed: int = Field(5151, ge=0, description="Root seed of the training and validation phantom patients.")
    grids: list[LandmarkGridConfig] = Field(
        default_factory=lambda: [
            LandmarkGridConfig(shape_zyx=(40, 80, 80), spacing_zyx_mm=(3.0, 2.5, 2.5), weight=3.0),
            LandmarkGridConfig(shape_zyx=(32, 64, 64), spacing_zyx_mm=(3.75, 3.125, 3.125), weight=1.0),
            LandmarkGridConfig(shape_zyx=(16, 40, 40), spacing_zyx_mm=(6.0, 5.0, 5.0), weight=1.0),
        ],
        min_length=1,
        description="Phantom grids of the training patients (validation uses the first).",
    )
    anatomy: Literal["randomised", "default"] = Field(
        "randomised",
        description="Training phantom: `randomised` = ctp_steps.phantom.params.randomised_training_phantom (long axis "
        "±25°, LV size and wall, noise, contrast widened), `default` = the default cohort's phantom (the first "
        "shipped net).",
    )
    rotation_deg: float = Field(
        30.0, ge=0, le=90, description="Largest random rotation of a training crop about a random axis "
        "(nnU-Net's 3-D default; 12 for the first shipped net)."
    )
    size_jitter: float = Field(0.15, ge=0, lt=0.5, description="Crop side scaled by 1 ± this (0.10 for the first net).")
    contrast_gain: tuple[float, float] = Field(
        (0.7, 1.4), description="Factor on HU − 40 of a training crop (tube voltage, bolus; 0.9–1.1 on all HU for the first net)."
    )
    steps: int = Field(400, ge=1, description="Optimiser steps.")
    batch_size: int = Field(4, ge=1, description="Crops per step.")
    learning_rate: float = Field(3e-3, gt=0, description="Peak Adam learning rate (one-cycle schedule).")
    val_every: int = Field(50, ge=1, description="Validate (and keep the best weights) every this many steps.")
    threads: int = Field(2, ge=1, description="CPU threads of the training job.")

    @field_validator("crop_size")
    @classmethod
    def _multiple_of_4(cls, v: int) -> int:
        if v % 4:
            raise ValueError(f"crop_size {v} must be a multiple of 4")
        return v


# The device comes from the pipeline-wide `device` key.
class LandmarkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field("landmark_net", description="Entry of models/manifest.json for the landmark heatmap net.")
    fallback: Literal["geometric", "none"] = Field(
        "geometric",
        description="When the heatmap net is unsure (min_confidence) or its landmarks are implausible, derive them "
        "from the masks and the image instead (ctp_steps/landmarks/geometric.py: long axis from the LV shape, "
        "apex and base at its ends, RV insertion where the contrast-filled RV meets the septum) before "
        "excluding the patient (`none`: exclude at once).",
    )
    min_geometric_quality: float = Field(
        0.5, ge=0, le=1,
        description="The geometric fallback's landmarks are used only if each one's quality (1: every check it "
        "depends on met with margin, 0: a check failed) reaches this.",
    )
    min_confidence: float = Field(
        0.5, ge=0, le=1,
        description="A landmark whose heatmap holds less than this probability mass near its peak "
        "excludes the patient (reason names the landmark).",
    )
    max_off_myocardium_mm: float = Field(
        8.0, gt=0,
        description="The apex and the RV insertion are points of the epicardium: one farther than this from every "
        "myocardium voxel is implausible whatever the net's confidence, and the fallback replaces it (about one "
        "LV wall thickness, 6-11 mm in adults, so a point this far off lies on no wall of this LV).",
    )
    apex: Literal["net", "mean_of_net_and_axis"] = Field(
        "mean_of_net_and_axis",
        description="How the stage settles the net's apex. `net`: as detected. `mean_of_net_and_axis`: the mean of "
        "the net's apex and the point where the LV's axis of symmetry (the base through the LV solid's centroid) "
        "leaves the epicardium (ctp_steps.landmarks.geometric.apex_on_axis_of_symmetry): two estimators with "
        "independent errors, the net's alone when they lie more than a fifth of base → apex apart. An apex from a "
        "fallback is kept as it is. landmarks.json records which.",
    )
    rv_insertion: Literal["net", "net_placed", "net_and_contact_placed"] = Field(
        "net_and_contact_placed",
        description="How the stage settles the RV insertion the AHA angles start from. `net`: the heatmap's point "
        "as detected. `net_placed`: its direction about the long axis and its distance from it, the point put at "
        "the level where ctp_steps.aha defines it (a quarter of base → apex; the insertion is a line along the "
        "septum's anterior margin, so the net's position along it carries no information the AHA map uses). "
        "`net_and_contact_placed`: the direction is the mean of the net's and the geometric method's RV-contact "
        "estimate about the same axis (ctp_steps.landmarks.geometric.rv_insertion_on_axis: two estimators with "
        "independent errors), the net's alone when the contact is not found (quality below min_geometric_quality) "
        "or lies more than 60° away; then placed. landmarks.json records which, and the angle between the two.",
    )
    min_long_axis_mm: float = Field(
        30.0, ge=0, description="Apex–base distances below this are implausible and exclude the patient."
    )
    apex_cap_fraction: float = Field(
        DEFAULT_APEX_CAP_FRACTION, gt=0, lt=0.5,
        description="AHA segment 17 = last fraction of the base→apex distance (ctp_steps.aha; the phantom uses the same).",
    )
    territories: dict[str, list[int]] = Field(
        default_factory=lambda: {k: list(v) for k, v in TERRITORY_SEGMENTS.items()},
        description="Coronary territory → AHA segments; every segment 1..17 exactly once.",
    )
    training: LandmarkTrainingConfig = Field(default_factory=LandmarkTrainingConfig)

    @model_validator(mode="after")
    def _territories_partition(self) -> "LandmarkConfig":
        segs = sorted(s for v in self.territories.values() for s in v)
        if segs != list(range(1, 18)):
            raise ValueError(f"territories must list every AHA segment 1..17 exactly once, got {segs}")
        return self
