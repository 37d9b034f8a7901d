"""Extraction presets: K1 -> MBF maps are monotone and invertible, the default is today's mapping exactly,
the stage reports MBF under every preset, and a relative IMV threshold moves less than an absolute one."""

from __future__ import annotations

import numpy as np
import pytest

from ctp_steps.cohort import PATIENT_COLUMNS
from ctp_steps.imv import IMVConfig, ischemic_region
from ctp_steps.io import read_status
from ctp_steps.mbf import MBFConfig
from ctp_steps.mbf.extraction import (
    CT_PET_2023,
    PRESETS,
    extraction_model,
    preset_flows,
    preset_model,
    used_preset,
)
from ctp_steps.mbf.fit import RenkinCrone
from test_mbf import aif_hu, ring_patient, run_cli, write_patient

FLOWS = np.linspace(20.0, 500.0, 200)  # mL/100mL/min, rest to hyperaemia


@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "unity"])
def test_each_preset_is_monotone_and_invertible(preset):
    model = preset_model(preset)
    k1 = model.k1(FLOWS)
    assert (np.diff(k1) > 0).all() and (k1 <= FLOWS).all()
    # a fixed PS saturates K1 at PS: the inverse is exact only below k1(max_mbf)'s steep end
    max_flow = 600.0
    ok = FLOWS < (150.0 if preset == "sucrose_ps_1984" else max_flow)
    np.testing.assert_allclose(model.flow(k1[ok], max_flow), FLOWS[ok], rtol=2e-3)
    assert model.flow(np.array([1e6]), max_flow)[0] == max_flow


def test_unity_is_mbf_equals_k1():
    assert preset_model("unity") is None
    assert used_preset(MBFConfig(renkin_crone=False)) == "unity" and extraction_model(MBFConfig(renkin_crone=False)) is None
    np.testing.assert_array_equal(preset_flows(MBFConfig(), FLOWS)["unity"], FLOWS)


def test_default_preset_is_todays_mapping_exactly():
    cfg = MBFConfig()
    assert cfg.extraction == "project_default" and used_preset(cfg) == "project_default"
    assert extraction_model(cfg) == RenkinCrone(60.0, 0.5)
    k1 = RenkinCrone(60.0, 0.5).k1(FLOWS)
    np.testing.assert_array_equal(preset_flows(cfg, k1)["project_default"], RenkinCrone(60.0, 0.5).flow(k1, 600.0))
    # the configured PS still drives project_default
    assert extraction_model(MBFConfig(ps_ml_100ml_min=90.0, ps_flow_slope=0.0)) == RenkinCrone(90.0, 0.0)


def test_published_ct_extraction_values():
    # E = 1 - 0.614 exp(-0.218/F), F in mL/g/min (J Cardiovasc Comput Tomogr 2023): E(1 mL/g/min) ~ 0.506
    assert CT_PET_2023.k1(np.array([100.0]))[0] / 100.0 == pytest.approx(1 - 0.614 * np.exp(-0.218), rel=1e-12)


def test_stage_reports_mbf_under_every_preset(tmp_path):
    inputs, _ = ring_patient(noise_hu=0.0)
    write_patient(tmp_path, inputs, aif_hu())
    run_cli(tmp_path, MBFConfig(regularisation={"radius_mm": 8.0, "same_segment": True}))
    record = read_status(tmp_path / "mbf.status.json").record
    assert record["mbf_extraction"] == "project_default"
    assert record["mbf_global_project_default"] == record["mbf_global"]
    assert record["mbf_extraction_low"] <= record["mbf_global"] <= record["mbf_extraction_high"]
    assert record["mbf_global_unity"] < record["mbf_global"] < record["mbf_global_ct_pet_2023"]
    assert record["mbf_extraction_high"] == pytest.approx(record["mbf_global_ct_pet_2023"])
    columns = {f.name for f in PATIENT_COLUMNS}
    assert {k for k in record if "extraction" in k or k.startswith("mbf_global_")} <= columns


def _imv_pct(flow: np.ndarray, myo: np.ndarray, aha: np.ndarray, cfg: IMVConfig) -> float:
    volume = np.zeros(myo.shape)
    volume[myo] = flow
    return 100.0 * ischemic_region(volume, myo, aha, 0.01875, cfg).ischemia.sum() / myo.sum()


def test_relative_imv_moves_less_than_absolute_between_presets():
    inputs, truth = ring_patient(noise_hu=0.0)
    myo, aha = inputs.myocardium, inputs.aha17
    rng = np.random.default_rng(0)
    flow = truth[myo] * rng.lognormal(0.0, 0.1, myo.sum())  # 70 / 200 with 10 % heterogeneity
    flows = preset_flows(MBFConfig(), RenkinCrone(60.0, 0.5).k1(flow))
    absolute = IMVConfig(mode="absolute", min_cluster_ml=0.0)
    relative = IMVConfig(mode="relative", min_cluster_ml=0.0)
    a = [_imv_pct(flows[p], myo, aha, absolute) for p in ("project_default", "ct_pet_2023")]
    r = [_imv_pct(flows[p], myo, aha, relative) for p in ("project_default", "ct_pet_2023")]
    assert a[0] == pytest.approx(100 / 3, abs=1.0)  # the truth: 4 of 12 segments
    assert abs(a[1] - a[0]) > 15.0  # ct_pet_2023 lifts most ischemic voxels over 100
    assert abs(r[1] - r[0]) < 2.0 and abs(r[0] - 100 / 3) < 2.0


def test_config_rejects_unknown_preset():
    with pytest.raises(ValueError):
        MBFConfig(extraction="made_up")
