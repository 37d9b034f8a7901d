"""The validation's `<method>_true_extraction` rows: the stage's MBF re-made from the same K1 under the phantom's
own extraction model (ctp_steps/validation/mbf.py), checked against both generators' kinetics."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest

from ctp_steps.mbf.config import MBFConfig
from ctp_steps.mbf.extraction import extraction_model
from ctp_steps.phantom.kinetics import draw_kinetics
from ctp_steps.phantom.params import PhantomParams
from ctp_steps.phantom.shifted import ShiftedParams, draw_kinetics as draw_shifted_kinetics
from ctp_steps.validation.mbf import k1_bias_pct, reconverted, true_extraction

FLOWS = np.array([40.0, 80.0, 150.0, 275.0, 400.0])


def truth_record(kinetics) -> dict:
    """The kinetics as truth.json holds them (a JSON round trip of `record()`)."""
    return json.loads(json.dumps(kinetics.record(), default=lambda o: asdict(o)))


def test_true_extraction_is_the_default_generators_k1():
    kin = draw_kinetics(np.random.default_rng(3), PhantomParams(), np.arange(20.0) * 1.5)
    model = true_extraction(truth_record(kin))
    k1_generator = kin.rate_constants(FLOWS)[0] * 6000.0
    np.testing.assert_allclose(model.k1(FLOWS), k1_generator, rtol=1e-9)


def test_true_extraction_is_the_shifted_generators_plasma_flow_extraction():
    kin = draw_shifted_kinetics(np.random.default_rng(5), ShiftedParams(), 6.0)
    model = true_extraction(truth_record(kin))
    np.testing.assert_allclose(model.k1(FLOWS), kin.extraction(FLOWS) * FLOWS, rtol=1e-9)


def test_on_a_family_made_with_the_configured_model_nothing_changes():
    cfg = MBFConfig()
    used = extraction_model(cfg)
    same = true_extraction({"permeability_surface": cfg.ps_ml_100ml_min, "ps_flow_slope": cfg.ps_flow_slope})
    mbf = np.array([0.0, 35.0, 120.0, 260.0, 480.0])
    np.testing.assert_allclose(reconverted(mbf, used, same, cfg.max_mbf), mbf, rtol=1e-4)


def test_plasma_flow_kinetics_read_with_the_project_model_are_low_and_the_truth_recovers_them():
    """PS 100, Hct 0.4 (the shifted family's kind): K1 = F (1 - exp(-PS / (F (1 - Hct)))). Read back with the
    project's recruitment model (PS 60 + 0.5 F) a 275 flow comes out 14 % low and an ischemic 50 26 % high
    (by hand: K1 125.0 and 48.2; 60 + 0.5 * 62.9 = 91.5, 62.9 * (1 - exp(-91.5 / 62.9)) = 48.2);
    re-made under the true model both come back."""
    cfg = MBFConfig()
    used, true = extraction_model(cfg), true_extraction({"permeability_surface": 100.0, "hematocrit": 0.4})
    flows = np.array([50.0, 275.0])
    k1 = flows * (1.0 - np.exp(-100.0 / (flows * 0.6)))
    stage = used.flow(k1, cfg.max_mbf)
    assert stage[1] == pytest.approx(236.0, abs=0.5)  # 275 read 14 % low
    assert stage[0] == pytest.approx(62.9, abs=0.5)   # 50 read 26 % high
    np.testing.assert_allclose(reconverted(stage, used, true, cfg.max_mbf), flows, rtol=1e-3)


def test_unity_and_zero_voxels():
    true = true_extraction({"permeability_surface": 100.0, "hematocrit": 0.4})
    k1 = np.array([0.0, 30.0, 120.0])
    out = reconverted(k1, None, true, 600.0)
    assert out[0] == 0.0
    np.testing.assert_allclose(true.k1(out[1:]), k1[1:], rtol=1e-4)


def test_k1_bias_reads_the_images_error_not_the_extraction_models():
    """A map whose K1 is 5 % above the truth's reads +5 % in K1, whatever model made its MBF; its MBF under the
    true fixed-PS model (K1 at 0.78 of its ceiling) is far more than 5 % off."""
    cfg = MBFConfig()
    used, true = extraction_model(cfg), true_extraction({"permeability_surface": 100.0, "hematocrit": 0.4})
    true_mbf = np.zeros((4, 4, 4), dtype=np.float32)
    myo = np.zeros(true_mbf.shape, dtype=bool)
    myo[1:3, 1:3, 1:3] = True
    true_mbf[myo] = [150.0, 300.0] * 4
    est = np.zeros_like(true_mbf)
    est[myo] = used.flow(1.05 * true.k1(true_mbf[myo].astype(float)), cfg.max_mbf)
    assert k1_bias_pct(est, myo, used, true_mbf, myo, true) == pytest.approx(5.0, abs=0.01)
    assert k1_bias_pct(est, myo, None, true_mbf, myo, true) != pytest.approx(5.0, abs=1.0)  # K1 is not the MBF
    own = reconverted(est[myo], used, true, cfg.max_mbf)
    assert own.mean() / true_mbf[myo].mean() - 1 > 0.10
