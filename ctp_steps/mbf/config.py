"""The MBF stage's configuration (`mbf:` in config.yaml); importing it loads no torch."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Method = Literal["upslope", "one_compartment", "fermi"]
METHODS: tuple[Method, ...] = ("upslope", "one_compartment", "fermi")
# Named K1 -> flow models (ctp_steps/mbf/extraction.py says the source of each).
ExtractionPreset = Literal["project_default", "ct_pet_2023", "sucrose_ps_1984", "unity"]
# How the one-compartment kinetics behind the regularised map are estimated (ctp_steps/mbf/bayes.py).
Estimator = Literal["least_squares", "bayesian"]


class RegularisationConfig(BaseModel):
    """How `mbf.nii.gz` is made from noisy voxel curves (the voxel-wise fit stays in `mbf_raw.nii.gz`).

    Each voxel's curve is replaced by an edge-preserving weighted mean of the
    curves of nearby deep voxels (optionally of its AHA segment), guided by the previous
    pass's map (see ctp_steps/mbf/regularise.py); with `shared_kinetics`, the
    one-compartment delay, ve and vb are fitted once per patient on the mean
    deep-voxel curve and each voxel fits K1 alone.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="Regularise; false makes mbf.nii.gz the voxel-wise fit.")
    radius_mm: float = Field(20.0, gt=0, le=40, description="Neighbourhood radius (mm).")
    spatial_sigma_mm: float = Field(10.0, gt=0, le=40, description="Gaussian width of the distance weight (mm).")
    range_sigma: float = Field(
        20.0,
        gt=0,
        description="Gaussian width of the weight on guide differences, in mL/100mL/min of the fitted rate "
        "(K1 for one_compartment, before the extraction correction).",
    )
    passes: int = Field(2, ge=0, le=5, description="Guided passes after the first, unguided one.")
    same_segment: bool = Field(
        False,
        description="Average only within one AHA segment. Off by default: the landmark stage's segment labels "
        "disagree with the truth on ~10 % of voxels and segments' few deep voxels make noisy averages (8+8 "
        "validation patients, default pipeline: segment ICC 0.66 with, 0.73 without; BENCHMARKS.md).",
    )
    min_depth_mm: float = Field(
        4.0,
        ge=0,
        description="Curves of voxels at least this far inside the myocardium mask are the sources of the "
        "averages and of the shared kinetics (the deepest voxels where the wall is thinner); nearer the "
        "boundary, blood-pool and fat partial volume and residual misregistration bias the curves. 0: every voxel.",
    )
    sources: Literal["depth", "depth_and_blood", "away_from_blood"] = Field(
        "depth",
        description="Which voxels' curves are the sources. `depth`: at least min_depth_mm from any mask "
        "boundary. `depth_and_blood`: also at least min_depth_mm from bright blood (voxels, in or out of the "
        "mask, whose peak enhancement reaches blood_enhancement_fraction of the AIF's: LV, RV, aorta), so "
        "blood the segmentation left inside the mask feeds no source; on the default phantom family it "
        "lowers the IMV% error and global bias, on the shifted family it lowers the IMV% error but biases "
        "global MBF further, hence not the default. `away_from_blood`: at least min_depth_mm from bright blood "
        "but only off the boundary layer facing anything else (fat, lung): a thick wall's outer layer keeps "
        "its own curves, so the map follows a transmural gradient (perfect masks), but it takes in whatever "
        "the segmented mask's outer edge holds (worse on both families through the pipeline). Blood, "
        "+300-500 HU against the wall's +30-60, is the partial volume that biases curves by tens of %. "
        "BENCHMARKS.md, 'Which voxels feed the regularised map'.",
    )
    blood_enhancement_fraction: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Blood-aware `sources`: a working voxel is blood where its mean peak enhancement is at least "
        "this fraction of the AIF's peak enhancement (half maximum: the usual edge of a blurred bright object).",
    )
    shared_kinetics: bool = Field(
        True, description="one_compartment: one delay, ve = K1/k2 and vb per patient (from the mean curve of "
        "the deep voxels); voxels fit K1 alone."
    )
    min_offset_spacing_mm: float = Field(
        2.5,
        ge=0,
        description="Neighbours are taken on a lattice whose step along each axis is the smallest whole number "
        "of voxels spanning at least this many mm (1 voxel where voxels are at least this large, so 2.5-3 mm "
        "grids use every voxel). It bounds the number of offsets, hence the cost, by that of an isotropic grid "
        "of this spacing (~2,100 offsets at radius 20 mm) whatever the voxel size; a dense 0.4 mm grid would "
        "need ~170,000. The weights stay normalised, so it is still a weighted mean: the Gaussian distance "
        "weight (spatial_sigma_mm, 10 mm) sampled every 2.5 mm (sigma/4) weighs any signal that varies on the "
        "weight's scale like the dense sum does; only neighbours' extra noise averaging is given up, and image "
        "noise is correlated over the reconstruction kernel's ~1 mm point spread anyway. 0: every voxel.",
    )


class UncertaintyConfig(BaseModel):
    """The reliability rule on the uncertainty of global MBF (a user policy, not a measured quantity)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reliable_max_ci_half_width_pct: float = Field(
        20.0,
        gt=0,
        description="mbf_reliable is true when the half-width of the 95 % interval of global MBF is below this "
        "percentage of global MBF. A user policy (how precise a patient's MBF must be to be used), not derived "
        "from the synthetic phantom.",
    )


class KineticsPriors(BaseModel):
    """Priors of the `bayesian` estimator on the nuisance kinetics (ctp_steps/mbf/bayes.py), from physiology.

    Gaussian on log ve, log vb and the delay (s). Centres are published physiology, not this project's
    phantoms (the training phantom fixes ve at 0.25 and draws vb in 0.08-0.12 and the delay in 1-2 s;
    the shifted family draws ve 0.15-0.25, vb 0.10-0.15, delay 2-3.5 s); the widths put tens of percent
    of prior mass well outside either. The `segment_*` widths are how far one AHA segment's kinetics may
    stray from its patient's (partial pooling): a scar or an ischemic bed changes ve, vb and arrival.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ve_median: float = Field(
        0.20,
        gt=0,
        lt=1,
        description="Median of ve (extravascular extracellular volume fraction). Normal myocardial ECV is "
        "25.3 +- 3.5 % by T1 mapping (Haaf et al., J Cardiovasc Magn Reson 2016;18:89; CT ECV agrees), and ECV "
        "includes plasma (~0.05 at vb 0.1, haematocrit 0.45), leaving ~0.20 outside the vessels.",
    )
    ve_log_sd: float = Field(
        0.4,
        gt=0,
        description="SD of log ve: 95 % of the prior in 0.09-0.44, from thin normal interstitium to diffuse "
        "fibrosis and infarct ECV (0.4-0.5+, same review).",
    )
    vb_median: float = Field(
        0.10,
        gt=0,
        lt=1,
        description="Median of vb (myocardial blood volume, whole blood, mL/mL): about 0.1 mL/g, most of it "
        "capillary, rising a little at hyperaemia (Kaul & Jayaweera, Circulation 1997;96:719-24).",
    )
    vb_log_sd: float = Field(0.5, gt=0, description="SD of log vb: 95 % of the prior in 0.04-0.27.")
    delay_mean_s: float = Field(
        2.0,
        description="Mean delay from the aortic AIF to myocardial arrival (s): the transit through the epicardial "
        "arteries, seconds at hyperaemia and longer behind a stenosis; the delay between AIF and tissue is a "
        "free parameter of the perfusion-quantification models reviewed by Jerosch-Herold (J Cardiovasc Magn "
        "Reson 2010;12:57). Weakly informative.",
    )
    delay_sd_s: float = Field(2.0, gt=0, description="SD of the delay (s): 95 % of the prior in 0-6 s (truncated at 0).")
    segment_ve_log_sd: float = Field(
        0.25,
        gt=0,
        description="Partial pooling: SD of a segment's log ve about its patient's. ECV of remote and diseased "
        "segments of one heart differ by ~0.05-0.2 (the review above).",
    )
    segment_vb_log_sd: float = Field(
        0.3, gt=0, description="Partial pooling: SD of a segment's log vb about its patient's (ischemic beds recruit "
        "less)."
    )
    segment_delay_sd_s: float = Field(
        1.0, gt=0, description="Partial pooling: SD of a segment's delay about its patient's (s); a stenosis or "
        "collateral supply delays its territory by about a second or more."
    )

    def population(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """(means, SDs) of (log ve, log vb, delay) of the patient-level prior."""
        return (
            (math.log(self.ve_median), math.log(self.vb_median), self.delay_mean_s),
            (self.ve_log_sd, self.vb_log_sd, self.delay_sd_s),
        )

    def segment_sds(self) -> tuple[float, float, float]:
        """SDs of (log ve, log vb, delay) of a segment about its patient's kinetics."""
        return (self.segment_ve_log_sd, self.segment_vb_log_sd, self.segment_delay_sd_s)


class MBFConfig(BaseModel):
    """Myocardial blood flow: curves, fitting method, extraction correction, numerics."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Method = Field(
        "one_compartment",
        description="upslope (max tissue slope / peak AIF), one_compartment (K1, k2, vb, delay) "
        "or fermi (Fermi-constrained deconvolution, MBF = residue amplitude).",
    )
    estimator: Estimator = Field(
        "least_squares",
        description="one_compartment with regularisation.shared_kinetics: least_squares fits one delay, ve and vb "
        "per patient (least squares on the mean deep-voxel curve) and every voxel K1 alone under them; bayesian "
        "(ctp_steps/mbf/bayes.py) fits the patient's kinetics as a posterior mode under `priors`, then each AHA "
        "segment's own kinetics shrunk towards the patient's (partial pooling), and every voxel K1 alone under "
        "its segment's; SEs are Laplace approximations of the posterior. Default least_squares: on 16 validation "
        "patients bayesian has the better segments (RMSE 34.1 vs 37.3) but the worse IMV% (4.9 vs 4.1 points), "
        "and the worse segments on the shifted family (BENCHMARKS.md).",
    )
    priors: KineticsPriors = Field(
        default_factory=KineticsPriors, description="Priors of the bayesian estimator (published physiology)."
    )
    renkin_crone: bool = Field(
        True,
        description="one_compartment: MBF from K1 through the `extraction` model (default K1 = MBF*(1-exp(-PS/MBF)), "
        "PS = ps_ml_100ml_min + ps_flow_slope*MBF); false takes MBF = K1 (extraction 1, as extraction unity).",
    )
    extraction: ExtractionPreset = Field(
        "project_default",
        description="one_compartment with renkin_crone: the K1 -> MBF extraction model (ctp_steps/mbf/extraction.py "
        "cites each). project_default: PS = ps_ml_100ml_min + ps_flow_slope*MBF, the training phantom's own model "
        "(no published source); ct_pet_2023: generalized Renkin-Crone E = 1 - 0.614*exp(-21.8/MBF), fitted between "
        "CT K1 and 82Rb PET (J Cardiovasc Comput Tomogr 2023); sucrose_ps_1984: fixed PS 77 (sucrose, rabbit "
        "heart; K1 saturates at 77, a bound); unity: MBF = K1. Every preset's global MBF is reported anyway "
        "(mbf_global_<preset>, a model interval, not a confidence interval).",
    )
    ps_ml_100ml_min: float = Field(
        60.0,
        gt=0,
        description="Capillary permeability-surface product of iodine at zero flow (mL/100mL/min) in Renkin-Crone "
        "(extraction project_default).",
    )
    ps_flow_slope: float = Field(
        0.5,
        ge=0,
        description="Capillary recruitment: PS grows by this much per mL/100mL/min of flow (0: fixed PS, "
        "whose K1 saturates at PS).",
    )
    max_mbf: float = Field(
        600.0,
        gt=0,
        description="Ceiling of the Renkin-Crone correction (mL/100mL/min); with a fixed PS, K1 tends to PS as "
        "flow grows, so K1 cannot tell higher flows apart.",
    )
    min_aif_peak_hu: float = Field(
        100.0, ge=0, description="AIF peak enhancement below this excludes the patient (missed or weak bolus)."
    )
    aif_model: Literal["gamma_variate", "linear"] = Field(
        "gamma_variate",
        description="AIF between frames: fitted first-pass + recirculation gamma variates, or linear interpolation.",
    )
    aif_baseline: Literal["pre_arrival_mean", "none"] = Field(
        "pre_arrival_mean",
        description="Baseline subtracted from the AIF and, the same frames, from every tissue curve: the mean of the "
        "frames before the bolus foot (CT in HU), or none for series that are enhancement already (baseline-free "
        "curves pass untouched). On a smooth bolus the frames just before the tangent's foot are rising already, "
        "so pre_arrival_mean takes contrast off them (ctp_steps/mbf/tac.py).",
    )
    max_delay_s: float = Field(10.0, ge=0, le=30, description="Upper bound of the AIF-to-tissue delay (s).")
    max_iter: int = Field(60, ge=1, le=500, description="Levenberg-Marquardt iterations at most.")
    chunk_voxels: int = Field(20_000, ge=100, description="Voxels fitted at once; bounds memory.")
    compile_fits: bool = Field(
        False,
        description="Run the Levenberg-Marquardt iterations and the one-compartment grid search as torch.compile'd "
        "kernels: 5-6x the voxel-wise fit's throughput on CPU (BENCHMARKS.md), but each process first compiles "
        "for ~30 s (a few s once torch's on-disk cache holds the kernels), more than a phantom-sized patient's "
        "fits take eagerly. Worth it for large voxel counts per process. Needs a C++ compiler on CPU.",
    )
    working_spacing_mm: float = Field(
        1.5,
        ge=0,
        description="Curves are fitted and regularised on a working grid: along each axis whose voxel is finer "
        "than this, blocks of the whole number of voxels whose span is closest to this many mm are averaged "
        "(myocardium voxels only; a block is myocardium when most of its voxels are), and every native voxel "
        "takes its block's value (or the nearest block's). 1.5 mm keeps 5-8 working voxels across a 8-12 mm "
        "LV wall, so the subendocardial third and the deep voxels of `regularisation.min_depth_mm` stay "
        "resolved, at about the in-plane resolution of a perfusion CT kernel (~1 mm point spread); finer "
        "voxels add only correlated noise and cost: fits and averages grow with the voxel count, 600,000 "
        "myocardium voxels at 0.4x0.4x1.25 mm against ~70,000 working ones. Grids at or above it (the 2.5-3 mm "
        "default cohort) run natively. 0: always the native grid.",
    )
    regularisation: RegularisationConfig = Field(
        default_factory=RegularisationConfig, description="How mbf.nii.gz is made from noisy voxel curves."
    )
    uncertainty: UncertaintyConfig = Field(
        default_factory=UncertaintyConfig,
        description="The reliability rule applied to the SE and 95 % interval of every MBF value (ctp_steps/mbf/uncertainty.py).",
    )

    @property
    def writes_blood_volume(self) -> bool:
        """Only the one-compartment model fits a blood volume: its map is an output of `mbf` exactly then."""
        return self.method == "one_compartment"
