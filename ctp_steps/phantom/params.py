"""What the phantom draws from: generator parameters, patient specs and their seeds.

Every random quantity of a patient comes from one integer seed. Each concern
(anatomy, perfusion, timing, ...) reads its own child stream of that seed, so
e.g. `true_imv_pct` can redraw the anatomy and MBF map without drawing the
frames, and adding a draw to one concern never changes another concern.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

VENDOR_STYLES = ("series_per_frame", "temporal_position", "trigger_time")

ROLE_PREFIX = {"cohort": "S", "train": "T", "validation": "V", "test": "X"}
_ROLE_SPAWN_KEY = {"cohort": 0, "train": 1, "validation": 2, "test": 3}
_STREAMS = ("anatomy", "perfusion", "timing", "kinetics", "motion", "acquisition", "noise", "dicom")


def _ordered(r: tuple[float, float]) -> tuple[float, float]:
    if r[0] > r[1]:
        raise ValueError(f"range {r}: min must not exceed max")
    return r


Range = Annotated[tuple[float, float], AfterValidator(_ordered)]
IntRange = Annotated[tuple[int, int], AfterValidator(_ordered)]


class NativeGrid(BaseModel):
    """A scanner's reconstructed grid to render on (ctp_steps/phantom/native.py): matrix and voxel size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shape_zyx: tuple[int, int, int] = Field(description="Slices, rows, columns (e.g. 96, 512, 512).")
    spacing_zyx_mm: tuple[float, float, float] = Field(description="Slice, row and column spacing in mm.")

    @model_validator(mode="after")
    def _positive(self) -> "NativeGrid":
        if min(self.shape_zyx) < 4 or min(self.spacing_zyx_mm) <= 0:
            raise ValueError(f"native grid {self.shape_zyx} at {self.spacing_zyx_mm} mm: need >= 4 voxels and spacing > 0")
        return self

    @property
    def extent_zyx_mm(self) -> np.ndarray:
        return np.asarray(self.shape_zyx) * np.asarray(self.spacing_zyx_mm)


class PhantomParams(BaseModel):
    """Generator settings shared by a cohort; ranges are (min, max), drawn uniformly per patient."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # grid and image formation
    shape_zyx: tuple[int, int, int] = Field(
        (40, 80, 80), description="Reconstructed grid size (slices, rows, columns)."
    )
    spacing_zyx_mm: tuple[float, float, float] = Field(
        (3.0, 2.5, 2.5), description="Voxel spacing in mm (slice, row, column)."
    )
    supersample: int = Field(
        2,
        ge=1,
        le=4,
        description="Anatomy is rendered on a grid this many times finer per axis, "
        "then block-averaged: the partial-volume effect.",
    )
    psf_sigma_mm: float = Field(
        0.8, ge=0, description="Gaussian point-spread function of the scanner (SD, mm)."
    )
    noise_sd_hu: Range = Field((10.0, 30.0), description="Per-patient image noise SD (HU).")
    noise_correlation_sigma_vox: float = Field(
        0.6,
        ge=0,
        description="In-plane Gaussian blur of the noise (voxels); the SD is rescaled to stay as drawn.",
    )
    kvp_choices: tuple[float, ...] = Field(
        (70.0, 80.0, 100.0), min_length=1, description="Tube voltages drawn from."
    )

    # acquisition timing
    n_frames: IntRange = Field((12, 20), description="Number of dynamic frames.")
    duration_s: Range = Field((30.0, 40.0), description="Time from the first to the last frame (s).")
    frame_step_jitter: float = Field(
        0.3, ge=0, lt=1, description="Relative jitter of the frame steps (irregular timing)."
    )

    # motion
    rigid_shift_max_mm: float = Field(
        5.0, ge=0, description="Largest per-frame rigid shift along z (breathing); x and y get 40 %."
    )
    deformation_max_mm: float = Field(
        2.0, ge=0, description="Largest displacement of one smooth deformation mode."
    )
    n_deformation_modes: int = Field(3, ge=0, description="Gaussian-bump deformation modes near the heart.")
    deformation_sigma_mm: Range = Field((25.0, 40.0), description="Width (SD) of the deformation modes (mm).")

    # anatomy
    lv_scale: Range = Field((0.9, 1.1), description="LV size factor (cavity radius and length).")
    wall_thickness_mm: Range = Field((8.0, 12.0), description="LV myocardial wall thickness (mm).")
    lv_position_jitter_mm: float = Field(
        10.0, ge=0, description="LV centre offset from the FOV centre in x and y (mm); z gets 60 %."
    )
    lv_axis_tilt_max_deg: float = Field(
        15.0, ge=0, le=45, description="Long-axis deviation from LPS (1,-1,-1)/√3 (degrees)."
    )
    rv_half_angle_deg: Range = Field(
        (60.0, 60.0),
        description="Half the angular span of the RV's contact with the LV (degrees about the long axis): the "
        "anterior and inferior RV insertions lie this far either side of the septum's centre. 60 (a 120° "
        "septum, the span the AHA 17-segment model assumes) by default; drawn only when the range is not one value.",
    )
    rv_septum_fraction: Range = Field(
        (0.5, 0.5),
        description="Where the RV crescent is thickest, as a fraction of its span from the anterior insertion "
        "(0.5: symmetric); drawn only when the range is not one value.",
    )
    rv_thickness_mm: Range = Field(
        (14.0, 22.0), description="Largest depth of the RV cavity over the septum (mm)."
    )
    apex_cap_fraction: float = Field(
        0.1,
        gt=0,
        lt=0.5,
        description="AHA segment 17 = last fraction of the base→apex distance; the phantom's "
        "apical wall is built so that its endocardial apex lies exactly there (see ctp_steps.aha).",
    )

    # perfusion
    normal_mbf: Range = Field((150.0, 250.0), description="Stress MBF of normal territories (mL/100mL/min).")
    ischemic_mbf: Range = Field(
        (50.0, 100.0), description="Stress MBF in ischemic myocardium (mL/100mL/min)."
    )
    ischemic_territory_probs: tuple[float, float, float] = Field(
        (0.4, 0.4, 0.2), description="Probability of 0, 1, 2 ischemic coronary territories."
    )
    ischemia_axial_start: Range = Field(
        (0.0, 0.6), description="Where ischemia starts along base→apex (fraction); it extends to the apex."
    )
    ischemia_transmural_extent: Range = Field(
        (0.4, 1.2), description="Ischemic fraction of the wall from the endocardium (≥ 1: transmural)."
    )
    mbf_heterogeneity: Range = Field(
        (0.05, 0.10), description="Amplitude of smooth relative MBF heterogeneity."
    )
    border_width_mm: float = Field(
        0.75,
        gt=0,
        description="Logistic scale of territory and ischemia borders (mm); 10-90 % over 4.4× this.",
    )
    ischemia_threshold_mbf: float = Field(
        100.0, gt=0, description="True IMV = myocardium with MBF below this."
    )

    # tracer kinetics
    aif_arrival_s: Range = Field(
        (4.0, 8.0), description="Bolus arrival in the descending aorta after the first frame (s)."
    )
    aif_time_to_peak_s: Range = Field((5.0, 10.0), description="Aortic peak after arrival (s).")
    aif_peak_hu: Range = Field((300.0, 600.0), description="Aortic first-pass peak enhancement (HU).")
    aif_shape: Range = Field((2.5, 4.0), description="Gamma-variate shape α (larger: narrower bolus).")
    recirculation_fraction: Range = Field(
        (0.10, 0.20), description="Recirculation peak relative to the first pass."
    )
    lv_lead_s: float = Field(
        1.0, ge=0, description="LV blood enhances this much earlier than the descending aorta (s)."
    )
    rv_lead_s: float = Field(
        3.0, ge=0, description="RV blood enhances this much earlier than the descending aorta (s)."
    )
    tissue_delay_s: Range = Field((1.0, 2.0), description="Myocardial delay δ after the aortic AIF (s).")
    blood_volume_fraction: Range = Field((0.08, 0.12), description="Myocardial blood volume vb.")
    extravascular_fraction: float = Field(
        0.25, gt=0, le=1, description="Extravascular distribution volume ve (k2 = K1/ve)."
    )
    permeability_surface: float = Field(
        60.0,
        gt=0,
        description="Capillary PS at zero flow (mL/100mL/min) in Renkin-Crone extraction E = 1 − exp(−PS/MBF).",
    )
    ps_flow_slope: float = Field(
        0.5,
        ge=0,
        description="Capillary recruitment: PS = permeability_surface + ps_flow_slope·MBF, so extraction "
        "falls from ~0.8 at 50 to ~0.5 at 300 mL/100mL/min instead of saturating K1 at PS.",
    )
    kinetics_dt_s: float = Field(
        0.1, gt=0, le=0.5, description="Time step of the tissue-curve integration (s)."
    )
    blood_baseline_hu: Range = Field((38.0, 50.0), description="Unenhanced blood (HU).")
    myocardium_baseline_hu: Range = Field((35.0, 45.0), description="Unenhanced myocardium (HU).")

    @model_validator(mode="after")
    def _consistent(self) -> "PhantomParams":
        if min(self.shape_zyx) < 4:
            raise ValueError(f"shape_zyx {self.shape_zyx}: every axis needs at least 4 voxels")
        if min(self.spacing_zyx_mm) <= 0:
            raise ValueError(f"spacing_zyx_mm {self.spacing_zyx_mm}: spacing must be positive")
        if self.n_frames[0] < 3:
            raise ValueError("n_frames: at least 3 frames")
        if (
            self.duration_s[0] <= 0
            or self.noise_sd_hu[0] < 0
            or self.normal_mbf[0] <= 0
            or self.ischemic_mbf[0] <= 0
        ):
            raise ValueError("duration_s, noise_sd_hu and MBF ranges must be positive")
        if self.ischemic_mbf[1] > self.normal_mbf[0]:
            raise ValueError("ischemic_mbf must lie below normal_mbf")
        if min(self.ischemic_territory_probs) < 0 or not np.isclose(sum(self.ischemic_territory_probs), 1.0):
            raise ValueError("ischemic_territory_probs must be ≥ 0 and sum to 1")
        if not 0 <= self.ischemia_axial_start[0] <= self.ischemia_axial_start[1] < 1:
            raise ValueError("ischemia_axial_start must lie in [0, 1)")
        if self.aif_arrival_s[0] <= 0:
            raise ValueError("aif_arrival_s must be positive (baseline frames come first)")
        if self.rv_lead_s >= self.aif_arrival_s[0]:
            raise ValueError("rv_lead_s must be shorter than the earliest aif_arrival_s")
        if min(self.kvp_choices) <= 0:
            raise ValueError("kvp_choices must be positive")
        return self


@dataclass(frozen=True)
class PatientSpec:
    """Who a phantom patient is: everything else follows from (spec, PhantomParams)."""

    patient_id: str
    center: str
    vendor_style: str
    seed: int
    role: str = "cohort"

    def __post_init__(self) -> None:
        if self.vendor_style not in VENDOR_STYLES:
            raise ValueError(f"vendor_style {self.vendor_style!r} not in {VENDOR_STYLES}")
        if self.role not in ROLE_PREFIX:
            raise ValueError(f"role {self.role!r} not in {tuple(ROLE_PREFIX)}")


def make_specs(
    n_patients: int, centers: list[tuple[str, str]], seed: int, role: str = "cohort"
) -> list[PatientSpec]:
    """n patients spread round-robin over (center, vendor_style) pairs.

    Seeds come from SeedSequence(seed) with a role-specific spawn key, so the
    train, validation and cohort patients of one cohort seed never share a seed.
    """
    if role not in ROLE_PREFIX:
        raise ValueError(f"role {role!r} not in {tuple(ROLE_PREFIX)}")
    if n_patients < 0:
        raise ValueError("n_patients must be ≥ 0")
    if not centers:
        raise ValueError("at least one center is needed")
    children = np.random.SeedSequence(seed, spawn_key=(_ROLE_SPAWN_KEY[role],)).spawn(n_patients)
    return [
        PatientSpec(
            patient_id=f"{ROLE_PREFIX[role]}{i + 1:04d}",
            center=centers[i % len(centers)][0],
            vendor_style=centers[i % len(centers)][1],
            seed=int(child.generate_state(1, dtype=np.uint64)[0] >> np.uint64(11)),  # 53 bits: exact in JSON
            role=role,
        )
        for i, child in enumerate(children)
    ]


def patient_rng(seed: int, stream: str) -> np.random.Generator:
    """The random stream of one concern of one patient."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STREAMS.index(stream),)))


def uniform(rng: np.random.Generator, r: tuple[float, float]) -> float:
    """One uniform draw from a (min, max) range (a degenerate range returns its value)."""
    return float(rng.uniform(r[0], r[1]))


def randomised_training_phantom() -> PhantomParams:
    """The default phantom with the anatomy, noise, contrast and motion widened to what scanners and patients
    show (issue 18's training distribution, shared by the nets' training data; the default cohort is one
    corner of it).

    Long axis ±25° around the mean; image noise 5–40 HU; tube voltages 70–120 kVp; rigid motion ±6 mm;
    LV size ×0.8–1.25 and wall 6–15 mm (normal adult walls ~6–11 mm, hypertrophy from ~13 mm; dilated
    cavities ~20 % above normal); aortic peaks 250–800 HU (iodine's HU per mg/mL rises ~1.6× from 120 to
    70–80 kVp around typical 300–600 HU first-pass peaks); the RV's septal contact spanning 90–170° (the AHA
    model assumes 120°; a small RV covers less of the septum, a dilated or pressure-loaded RV wraps further
    round the LV), thickest anywhere in the middle 30 % of that span, 10–30 mm deep (a small RV to one dilated
    to ~1.5× the default's)."""
    return PhantomParams(
        lv_axis_tilt_max_deg=25.0,
        noise_sd_hu=(5.0, 40.0),
        kvp_choices=(70.0, 80.0, 100.0, 120.0),
        rigid_shift_max_mm=6.0,
        lv_scale=(0.8, 1.25),
        wall_thickness_mm=(6.0, 15.0),
        aif_peak_hu=(250.0, 800.0),
        rv_half_angle_deg=(45.0, 85.0),
        rv_septum_fraction=(0.35, 0.65),
        rv_thickness_mm=(10.0, 30.0),
    )
