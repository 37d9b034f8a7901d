"""MBF uncertainty: the SE from the fit's own model against the scatter of replicate fits, interval
coverage of the truth, 1/sqrt(n) shrinkage of averaged curves, the delta method through Renkin-Crone."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ctp_steps.mbf.fit import DTYPE, RenkinCrone, SharedKinetics, fit_curves
from ctp_steps.mbf.kinetics import GridAIF, one_compartment
from ctp_steps.mbf.uncertainty import (
    MBFUncertainty,
    UncertaintyConfig,
    confidence_interval,
    curve_model,
    fit_uncertainty,
    flow_slope,
    is_reliable,
    numerical_jacobian,
    parameter_covariance,
    patient_uncertainty,
    region_selections,
)
from test_mbf import TIMES, tissue_curves

CPU = torch.device("cpu")
THETA = [0.02, 0.08, 0.1, 1.3]  # K1 (1/s) = 120 mL/100mL/min, k2 (1/s), vb, delay (s)
RC = RenkinCrone(60.0, 0.5)
SHARED = SharedKinetics(delay_s=1.3, ve=0.25, vb=0.1)
N_REPLICATES = 400


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fit(y, aif, rc, shared):
    return fit_curves(y, aif, "one_compartment", max_delay_s=10.0, max_iter=200, chunk=1000, device=CPU,
                      renkin_crone=rc, max_mbf=600.0, shared=shared)


def replicates(sigma_hu: float, n: int = N_REPLICATES, average: int = 1, seed: int = 0):
    """n noisy copies of the model curve at THETA; each the mean of `average` independent noisy curves."""
    aif, curve = tissue_curves(np.array([THETA]))
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, sigma_hu, (n, average, curve.shape[1])).mean(axis=1)
    return aif, curve + noise


@pytest.mark.parametrize(
    "sigma_hu, rc, shared",
    [(1.0, None, None), (3.0, None, None), (1.0, RC, None), (3.0, RC, SHARED), (10.0, RC, SHARED)],
    ids=["4p_1hu", "4p_3hu", "4p_rc_1hu", "k1_rc_3hu", "k1_rc_10hu"],
)
def test_se_matches_replicate_scatter_and_interval_covers_truth(sigma_hu, rc, shared):
    aif, y = replicates(sigma_hu)
    result = fit(y, aif, rc, shared)
    unc = fit_uncertainty(result, aif, "one_compartment", max_delay_s=10.0, shared=shared, device=CPU)
    assert unc.dof == len(TIMES) - (1 if shared else 4)
    # the fit's sigma estimate recovers the simulated noise
    assert np.sqrt(np.mean(unc.sigma_hu**2)) == pytest.approx(sigma_hu, rel=0.05)
    se = unc.mbf_se(result.mbf, rc)
    empirical_sd = result.mbf.std(ddof=1)
    assert np.sqrt(np.mean(se**2)) == pytest.approx(empirical_sd, rel=0.15)
    truth = THETA[0] * 6000 if rc is None else float(rc.flow(THETA[0] * 6000, 600.0))
    low, high = unc.interval(result.mbf, rc, 600.0)
    assert (low <= result.mbf).all() and (result.mbf <= high).all() and (low >= 0).all()
    coverage = np.mean((low <= truth) & (truth <= high))
    assert 0.90 <= coverage <= 0.98


@pytest.mark.parametrize("shared", [None, SHARED], ids=["4p", "k1"])
def test_se_of_averaged_curves_shrinks_as_one_over_sqrt_n(shared):
    """Curves averaged over n independent noisy curves: their own residuals give SE ~ SE(1)/sqrt(n)."""
    se = {}
    for n in (1, 4, 16):
        aif, y = replicates(3.0, n=200, average=n, seed=n)
        result = fit(y, aif, RC, shared)
        unc = fit_uncertainty(result, aif, "one_compartment", max_delay_s=10.0, shared=shared, device=CPU)
        se[n] = np.sqrt(np.mean(unc.mbf_se(result.mbf, RC) ** 2))
    assert se[4] / se[1] == pytest.approx(0.5, rel=0.15)
    assert se[16] / se[1] == pytest.approx(0.25, rel=0.15)


def test_nuisance_parameters_cost_precision_and_the_jacobian_is_the_models():
    """Numerical Jacobian = the model's analytic one; the full-covariance SE of K1 far exceeds its diagonal-only SE."""
    aif, _ = tissue_curves(np.array([THETA]))
    model, lower, upper = curve_model(aif, "one_compartment", 10.0, None, CPU)
    theta = torch.tensor([THETA, [0.005, 0.03, 0.0, 0.0]], dtype=DTYPE)  # the second at the vb and delay bounds
    jac = numerical_jacobian(model, theta, upper - lower)
    grid = GridAIF.from_values(aif.grid_dt_s, aif.grid_hu, CPU, DTYPE)
    _, analytic = one_compartment(grid, torch.as_tensor(TIMES, dtype=DTYPE), theta)
    scale = analytic.abs().amax(dim=1, keepdim=True)
    # the delay derivative of a piecewise-linear AIF is one-sided at its kinks; elsewhere they agree tightly
    assert float(((jac - analytic).abs() / scale)[..., :3].max()) < 1e-5
    assert float(((jac - analytic).abs() / scale)[..., 3].median()) < 1e-5
    cov = parameter_covariance(jac, torch.ones(2, dtype=DTYPE))
    full = cov[:, 0, 0].sqrt()
    diagonal_only = 1.0 / (jac[:, :, 0] ** 2).sum(-1).sqrt()
    assert (full > 3.0 * diagonal_only).all()
    k1_only = parameter_covariance(jac[:, :, :1], torch.ones(2, dtype=DTYPE))[:, 0, 0].sqrt()
    torch.testing.assert_close(k1_only, diagonal_only)


def test_delta_method_slope_is_the_derivative_of_the_renkin_crone_inverse():
    rate = np.array([20.0, 60.0, 100.0, 150.0])
    mbf = RC.flow(rate, 600.0)
    numeric = (RC.flow(rate + 0.5, 600.0) - RC.flow(rate - 0.5, 600.0)) / 1.0
    np.testing.assert_allclose(flow_slope(mbf, RC), numeric, rtol=0.01)
    assert (flow_slope(mbf, RC) > 1.0).all() and (np.diff(flow_slope(mbf, RC)) > 0).all()  # convex: grows with flow
    np.testing.assert_array_equal(flow_slope(mbf, None), 1.0)
    assert flow_slope(np.array([1e4]), RenkinCrone(60.0, 0.0))[0] > 50  # fixed PS: K1 saturates


def test_interval_is_clipped_at_zero_capped_at_the_ceiling_and_asymmetric_at_high_flow():
    dof = 15
    low, high = confidence_interval(np.array([10.0]), np.array([40.0]), dof, None, 600.0)
    assert low[0] == 0.0 and high[0] == pytest.approx(10.0 + 2.131 * 40.0, rel=1e-3)
    low, high = confidence_interval(np.array([300.0]), np.array([10.0]), dof, RC, 600.0)
    assert high[0] - 300.0 > 300.0 - low[0] > 0  # convex inverse: longer upper arm
    se = flow_slope(np.array([300.0]), RC)[0] * 10.0
    assert (high[0] - low[0]) / 2 == pytest.approx(2.131 * se, rel=0.1)
    low, high = confidence_interval(np.array([580.0]), np.array([200.0]), dof, RC, 600.0)
    assert high[0] == 600.0
    low, high = confidence_interval(np.array([100.0]), np.array([np.nan]), dof, RC, 600.0)
    assert np.isnan(low[0]) and np.isnan(high[0])


def test_upslope_has_no_se():
    aif, y = replicates(1.0, n=3)
    result = fit_curves(y, aif, "upslope", max_delay_s=10.0, max_iter=10, chunk=10, device=CPU,
                        renkin_crone=None, max_mbf=600.0)
    unc = fit_uncertainty(result, aif, "upslope", max_delay_s=10.0, shared=None, device=CPU)
    assert np.isnan(unc.rate_se).all()


def test_noise_free_curves_have_zero_se():
    aif, y = replicates(0.0, n=2)
    result = fit(y, aif, RC, None)
    unc = fit_uncertainty(result, aif, "one_compartment", max_delay_s=10.0, shared=None, device=CPU)
    assert (unc.mbf_se(result.mbf, RC) < 1e-3).all()


def test_reliability_rule_is_the_configured_half_width():
    cfg = UncertaintyConfig(reliable_max_ci_half_width_pct=10.0)
    assert is_reliable(100.0, 91.0, 109.0, cfg) is True
    assert is_reliable(100.0, 85.0, 111.0, cfg) is False  # half-width 13 %
    assert is_reliable(None, 1.0, 2.0, cfg) is None and is_reliable(100.0, np.nan, 1.0, cfg) is None
    assert "policy" in UncertaintyConfig.model_json_schema()["properties"]["reliable_max_ci_half_width_pct"][
        "description"]
    with pytest.raises(ValueError):
        UncertaintyConfig(reliable_max_ci_half_width_pct=0.0)


def test_regions_are_global_territories_and_segments():
    segments = np.array([1, 1, 3, 5, 0, 17])  # LAD, LAD, RCA, LCX, none, LAD
    names, sel = region_selections(segments)
    assert names == ["global", "lad", "rca", "lcx", "1", "3", "5", "17"]
    assert sel[0].all() and sel[1].tolist() == [True, True, False, False, False, True]
    assert sel[names.index("17")].tolist() == [False] * 5 + [True]


def test_patient_uncertainty_on_the_ring():
    """Keys, intervals around the reported values, SE growing with noise, kinetics error included."""
    from test_mbf import ring_patient

    from ctp_steps.mbf import MBFConfig
    from ctp_steps.mbf.estimate import estimate_mbf

    # the least-squares estimator's SE model (shared kinetics + their covariance); bayesian: test_mbf_bayes.py
    cfg = MBFConfig(regularisation={"radius_mm": 8.0, "spatial_sigma_mm": 5.0}, estimator="least_squares")
    out = {}
    for noise in (4.0, 12.0):
        inputs, _ = ring_patient(noise_hu=noise)
        est = estimate_mbf(inputs, cfg, CPU)
        out[noise] = (est, patient_uncertainty(est, cfg, CPU, UncertaintyConfig()))
    est, pu = out[12.0]
    r = pu.record
    assert set(r) == {f"mbf_{g}_{k}" for g in ("global", "lad", "rca", "lcx") for k in ("se", "ci_low", "ci_high")} | {
        "mbf_reliable"}
    assert r["mbf_global_ci_low"] < est.regularised.mbf.mean() < r["mbf_global_ci_high"]
    assert sorted(pu.segments) == list(range(1, 13)) and pu.voxel_se.shape == est.regularised.mbf.shape
    for s, v in pu.segments.items():
        assert v["mbf_ci_low"] < est.regularised.mbf[est.segments == s].mean() < v["mbf_ci_high"] and v["mbf_se"] > 0
    # 3x the noise, about 3x the SE (the kinetics' share scales with it too)
    assert r["mbf_global_se"] / out[4.0][1].record["mbf_global_se"] == pytest.approx(3.0, rel=0.25)
    # measured over 12 noise draws of this ring (session report): SD of global mean 2.9 / 8.7 at 4 / 12 HU
    assert 5.0 < r["mbf_global_se"] < 15.0
    without = fit_uncertainty(est.regularised, est.aif, "one_compartment", max_delay_s=cfg.max_delay_s,
                              shared=est.shared, device=CPU)
    assert np.median(pu.voxel_se) > np.median(without.mbf_se(est.regularised.mbf, RC))
    assert r["mbf_reliable"] is True
    assert patient_uncertainty(est, cfg, CPU, UncertaintyConfig(reliable_max_ci_half_width_pct=1.0)
                               ).record["mbf_reliable"] is False


def test_mbf_uncertainty_container():
    unc = MBFUncertainty(rate_se=np.array([5.0]), sigma_hu=np.array([1.0]), dof=12)
    assert unc.mbf_se(np.array([100.0]), None)[0] == 5.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    aif, y = replicates(3.0, n=50)
    result = fit(y, aif, RC, None)
    cpu = fit_uncertainty(result, aif, "one_compartment", max_delay_s=10.0, shared=None, device=CPU)
    gpu = fit_uncertainty(result, aif, "one_compartment", max_delay_s=10.0, shared=None, device=torch.device("cuda"))
    np.testing.assert_allclose(gpu.rate_se, cpu.rate_se, rtol=1e-6)


def test_stage_writes_the_se_map_segment_columns_and_patient_columns(tmp_path):
    """The MBF stage with its mbf_se output: the SE map, the segment columns and the patient record's."""
    import json

    from ctp_steps.cli import main
    from ctp_steps.io import read_status, read_volume
    from ctp_steps.mbf import MBFConfig
    from test_mbf import aif_hu, ring_patient, write_patient

    inputs, _ = ring_patient(noise_hu=8.0)
    write_patient(tmp_path, inputs, aif_hu())
    cfg = MBFConfig(regularisation={"radius_mm": 8.0, "spatial_sigma_mm": 5.0})
    names = {"mbf": "mbf.nii.gz", "mbf_raw": "mbf_raw.nii.gz", "mbf_se": "mbf_se.nii.gz", "tac": "tac.parquet",
             "segments": "segments_mbf.parquet", "qc": "mbf_qc.png", "status": "mbf.status.json",
             "blood_volume": "blood_volume.nii.gz"}
    files = {"input": {"upstream": "landmarks.status.json", "frames": "frames.json", "series": "registered.nii.gz",
                       "myocardium": "myocardium.nii.gz", "aha": "aha17.nii.gz", "aif": "aif.parquet"},
             "output": names}
    files = {side: {k: str(tmp_path / v) for k, v in named.items()} for side, named in files.items()}
    main(["run", "mbf", "--implementation", "fit", "--files", json.dumps(files), "--config-json",
          cfg.model_dump_json(), "--device", "cpu"])
    status = read_status(tmp_path / "mbf.status.json")
    assert status.status == "ok"
    se, _ = read_volume(tmp_path / "mbf_se.nii.gz")
    myo = inputs.myocardium
    assert (se[myo] > 0).all() and (se[~myo] == 0).all()
    table = pd.read_parquet(tmp_path / "segments_mbf.parquet").set_index("segment")
    filled = table.loc[1:12]
    assert (filled.mbf_ci_low < filled.mbf_mean).all() and (filled.mbf_mean < filled.mbf_ci_high).all()
    assert (filled.mbf_se > 0).all() and table.loc[13:, "mbf_se"].isna().all()
    record = status.record
    assert record["mbf_global_ci_low"] < record["mbf_global"] < record["mbf_global_ci_high"]
    assert record["mbf_global_se"] > 0 and record["mbf_reliable"] is True


def test_flow_slope_follows_the_extraction_preset():
    """The delta method uses the configured preset's dK1/dF: analytic for Renkin-Crone, numerical otherwise."""
    from ctp_steps.mbf import MBFConfig
    from ctp_steps.mbf.extraction import CT_PET_2023
    from ctp_steps.mbf.uncertainty import flow_slope, renkin_crone_of

    flows = np.array([50.0, 150.0, 300.0])
    assert renkin_crone_of(MBFConfig(extraction="ct_pet_2023"), "one_compartment") is CT_PET_2023
    a, b = CT_PET_2023.a, CT_PET_2023.b
    exact = 1.0 / (1.0 - a * np.exp(-b / flows) * (1.0 + b / flows))
    np.testing.assert_allclose(flow_slope(flows, CT_PET_2023), exact, rtol=1e-6)
    default = renkin_crone_of(MBFConfig(), "one_compartment")
    assert not np.allclose(flow_slope(flows, default), exact, rtol=0.01)
    assert renkin_crone_of(MBFConfig(), "fermi") is None
