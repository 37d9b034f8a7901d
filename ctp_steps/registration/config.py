"""Settings of the registration stage (validated as part of the pipeline config).

The method itself is chosen by `stages.registration` (learned | simpleitk | none);
this section holds how each method runs. The device comes from the pipeline-wide
`device` key.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The study's published widths (conv1/2, conv4/5, conv7/8 filters) for a 100³ → 60³ GPU network.
PUBLISHED_WIDTHS = (128, 256, 512)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NetworkConfig(Strict):
    """The registration net and the grid it sees: an isotropic, LPS-aligned box around the LV."""

    widths: tuple[int, int, int] = Field(
        (8, 16, 32),
        description="Filters of the three encoder levels (conv1-2, conv4-5, conv7-8); the decoder mirrors them. "
        f"Published: {list(PUBLISHED_WIDTHS)} (GPU); the default is a narrow CPU variant.",
    )
    spacing_mm: float = Field(2.5, gt=0, description="Isotropic voxel size of the network grid (mm).")
    output_size: int = Field(
        48, ge=8, description="Edge of the cubic output field (voxels, multiple of 4); the input is 40 voxels larger "
        "(valid convolutions). 48 × 2.5 mm covers the LV with its myocardium. Published: 60 (input 100).",
    )
    intensity_scale_hu: float = Field(500.0, gt=0, description="Network input = HU / this, clipped to ±clip.")
    intensity_clip: float = Field(2.0, gt=0, description="Clip of the scaled intensities.")

    @model_validator(mode="after")
    def _sizes(self) -> "NetworkConfig":
        if self.output_size % 4:
            raise ValueError(f"output_size {self.output_size}: must be a multiple of 4 (two 2× poolings, valid convs)")
        return self

    @property
    def input_size(self) -> int:
        return self.output_size + 40


class TrainingConfig(Strict):
    """Unsupervised training on training-role phantom patients (the true motion is never used)."""

    n_patients: int = Field(16, ge=1, description="Training phantom patients (role `train`, seeds disjoint from the cohort).")
    frames_per_patient: int = Field(8, ge=2, description="Frames kept per training patient (evenly spread in time).")
    n_validation_patients: int = Field(4, ge=0, description="Validation phantom patients (role `validation`) for the model card.")
    seed: int = Field(20260401, ge=0, description="Root seed of the training/validation phantoms and of the training run.")
    steps: int = Field(600, ge=1, description="Optimizer steps (one random frame pair of one patient each).")
    batch_size: int = Field(1, ge=1, description="Frame pairs per step.")
    mask_noise_mm: float = Field(
        0.0, ge=0, description="The masks the net sees are shifted (uniform ± this per axis) and eroded or dilated "
        "by about a voxel, independently for fixed and moving; the Dice term uses the clean masks. Meant to teach "
        "the net to trust the images where segmentation masks are off. 0: off (the shipped weights; not validated on).",
    )
    patch_size: int = Field(
        64, ge=48, description="Training input patch edge (voxels, multiple of 4), cut at a random place of the "
        "stored input-size crop (valid convolutions: the net is trained on patches and applied to the whole box). "
        "Set it to network.output_size + 40 to train on whole boxes.",
    )
    learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate (cosine decay to 5 %).")
    weight_similarity: float = Field(1.0, ge=0, description="Weight of the local NCC² image term (robust to contrast change).")
    weight_dice: float = Field(
        0.5, ge=0, description="Weight of the soft Dice of the warped moving LV mask (higher: the net bends the "
        "myocardium to fit the masks' voxel edges; chosen on validation-role patients against the true motion)."
    )
    weight_smoothness: float = Field(
        30.0, ge=0, description="Weight of the mean squared spatial gradient of the field (voxels); 0.5-3 fitted mask "
        "edges and noise (myocardium field error 0.7-1.8 mm vs 0.45 mm on validation patients)."
    )
    ncc_window: int = Field(9, ge=3, description="Window (voxels) of the local normalised cross-correlation.")
    jitter_mm: float = Field(
        2.5, ge=0, description="Random extra shift of the moving crop (uniform ± this per axis): teaches the net to "
        "correct LV centroids that are off (imperfect segmentation)."
    )
    threads: int = Field(2, ge=1, description="CPU threads of the training job.")
    fp16_weights: bool = Field(True, description="Ship the weights in float16 (half the size; inference upcasts).")


class SimpleITKConfig(Strict):
    """The baseline a user would pick: LV-centroid initialisation, affine then B-spline, Mattes mutual information."""

    histogram_bins: int = Field(32, ge=8, description="Mattes mutual information histogram bins.")
    sampling_fraction: float = Field(0.25, gt=0, le=1, description="Random fraction of the masked fixed voxels sampled per iteration.")
    affine_iterations: int = Field(100, ge=1, description="Iterations per resolution level of the affine stage.")
    bspline_iterations: int = Field(60, ge=1, description="Iterations per resolution level of the B-spline stage.")
    bspline_mesh: int = Field(4, ge=1, description="B-spline mesh cells per axis over the LV box.")
    metric_margin_mm: float = Field(
        30.0, ge=0, description="The metric is evaluated on the reference LV mask dilated by this: the heart with its "
        "lung border (a tight 15 mm region lets mutual information drift on low-contrast frames)."
    )


class RegistrationConfig(Strict):
    """How the `register` stage runs; the method (learned | simpleitk | none) is config `stages.registration`."""

    model: str = Field("regnet", description="Entry of models/manifest.json for the learned registration net.")
    reference_frame: Literal["peak_myocardium", "peak_lv", "first", "middle"] | int = Field(
        "peak_myocardium",
        description="Frame every other frame is aligned to: the frame of peak enhancement around the LV blood pool "
        "(a proxy of the myocardium before it is segmented), of peak LV blood enhancement, the first, the middle, "
        "or a frame index.",
    )
    taper_mm: float = Field(
        10.0, ge=0, description="Outside the LV box the field falls back to the frame's LV translation over this distance."
    )
    field_spacing_mm: float = Field(
        2.5,
        gt=0,
        description="The displacement-fields file is written at the centres of blocks spanning about this many mm "
        "where the image's voxels are finer: a field varies over centimetres, and at 0.8 mm voxels a full-resolution 4D vector file is GBs. "
        "Frames are still warped with the full-resolution field.",
    )
    max_lv_shift_mm: float = Field(
        30.0, gt=0, description="A frame whose LV centroid lies farther than this from the reference's cannot be registered."
    )
    min_lv_dice_after: float = Field(
        0.75, ge=0, le=1, description="A frame whose LV Dice to the reference stays below this after registration "
        "excludes the patient (learned and simpleitk only). Checked on frames whose LV boundary is visible "
        "(min_lv_contrast_sd)."
    )
    min_lv_contrast_sd: float = Field(
        1.0,
        ge=0,
        description="The LV Dice check applies to a frame only where its LV blood differs from the wall around it "
        "by at least this many voxel noise SDs (registration.reference.boundary_contrast_sd). Before the bolus and "
        "late in the washout blood and myocardium hold about the same HU: the LV mask there is the segmentation's "
        "shape guess, and its Dice measures that guess, not the registration. 1 SD: by the Rose criterion (an "
        "object is reliably seen at contrast x sqrt(pixels) / noise of about 5; Rose, J Opt Soc Am "
        "1948;38:196-208) a boundary patch of 5 x 5 voxels is seen from a contrast of one noise SD. Such frames "
        "keep the folding and displacement checks; 0 checks every frame.",
    )
    fallback: Literal["simpleitk", "none"] = Field(
        "simpleitk",
        description="When the learned registration fails its QC (min_lv_dice_after), register again with this "
        "method before excluding the patient (`none`: exclude at once). The row's `register_source` names the "
        "method whose result was kept, `register_attempts` every failed attempt.",
    )
    inference_batch: int = Field(4, ge=1, description="Frames per network forward pass.")
    threads: int = Field(
        1, ge=1, description="CPU threads of a `register` job (torch and ITK). 1 by default, as for the other "
        "stages: the net gains only ~1.3x from a second thread, so on a cohort two one-thread jobs finish more "
        "patients per core-second than one two-thread job (BENCHMARKS.md, \"Main job\")."
    )
    network: NetworkConfig = Field(
        default_factory=NetworkConfig, description="Network and grid used for training (inference reads them from the checkpoint)."
    )
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    simpleitk: SimpleITKConfig = Field(default_factory=SimpleITKConfig)

    @model_validator(mode="after")
    def _patch(self) -> "RegistrationConfig":
        p = self.training.patch_size
        if p % 4 or p > self.network.input_size:
            raise ValueError(
                f"training.patch_size {p}: must be a multiple of 4 and at most network input size {self.network.input_size}"
            )
        return self
