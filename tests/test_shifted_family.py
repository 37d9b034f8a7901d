"""The shifted phantom family (ctp_steps/phantom/shifted.py): deterministic, outside the training ranges where it
says so, consistent truth, DICOM that converts, and a `family` column in the validation summary.

Small grids (96² at ~2 mm, anatomy at 2 mm) keep the module well under a minute.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ctp_steps.phantom import PhantomParams, generate_patient, make_specs, write_dicom
from ctp_steps.phantom.params import patient_rng
from ctp_steps.phantom.shifted import (
    DEFAULT_LONG_AXIS,
    ShiftedParams,
    generate_shifted_patient,
    shifted_rng,
)
from ctp_steps.phantom.shifted_kinetics import ParkerAIF, ShiftedKinetics

SMALL = ShiftedParams(matrix=96, pixel_mm=(1.8, 2.2), slice_mm=(2.5, 3.0), anatomy_spacing_mm=2.0, n_frames=(10, 10))
PARAMS = PhantomParams()


@pytest.fixture(scope="module")
def patients():
    specs = make_specs(2, [("CTR-S", "temporal_position"), ("CTR-T", "series_per_frame")], seed=31, role="test")
    return [generate_shifted_patient(s, PARAMS, SMALL) for s in specs]


def test_deterministic(patients):
    again = generate_shifted_patient(patients[0].spec, PARAMS, SMALL)
    np.testing.assert_array_equal(again.frames_hu, patients[0].frames_hu)
    np.testing.assert_array_equal(again.mbf, patients[0].mbf)
    assert json.dumps(again.truth, sort_keys=True) == json.dumps(patients[0].truth, sort_keys=True)
    assert not np.array_equal(patients[0].frames_hu[0][:4], patients[1].frames_hu[0][:4])


def test_own_seed_namespace():
    """No stream of the shifted family equals the default family's stream of the same seed."""
    for stream in ("anatomy", "perfusion", "timing", "kinetics", "motion", "acquisition", "noise"):
        assert shifted_rng(7, stream).random() != patient_rng(7, stream).random()


def test_ranges_lie_outside_the_training_phantom(patients):
    default, shifted = PARAMS, ShiftedParams()
    assert shifted.axis_tilt_deg[0] > default.lv_axis_tilt_max_deg
    assert shifted.cavity_radius_mm[0] >= 20.0 * default.lv_scale[1] - 1e-9  # anatomy.py: 20 mm × lv_scale
    assert shifted.base_height[0] > 0.3  # anatomy.py: base plane at 0.2-0.3 of the half-length
    assert shifted.normal_mbf[1] > default.normal_mbf[1] and shifted.ischemic_mbf[0] < default.ischemic_mbf[0]
    assert shifted.tissue_delay_s[0] >= default.tissue_delay_s[1]
    for p in patients:
        anat, kin = p.truth["anatomy"], p.truth["kinetics"]
        tilt = np.degrees(np.arccos(np.clip(np.asarray(anat["lv_long_axis"]) @ DEFAULT_LONG_AXIS, -1, 1)))
        assert shifted.axis_tilt_deg[0] - 1e-6 <= tilt <= shifted.axis_tilt_deg[1] + 1e-6
        assert tilt > default.lv_axis_tilt_max_deg + 10
        # PS is drawn independently of flow: extraction (Crone-Renkin on plasma flow) falls steeply with flow,
        # where the training phantom's capillary recruitment (PS = 60 + 0.5·MBF) keeps it nearly flat
        ps = kin["permeability_surface"]
        assert shifted.permeability_surface[0] <= ps <= shifted.permeability_surface[1]
        scalars = {f: kin[f] for f in ShiftedKinetics.__dataclass_fields__ if f not in ("aif", "rv_first_pass")}
        k = ShiftedKinetics(aif=None, rv_first_pass=None, **scalars)
        shifted_ratio = k.extraction(350.0) / k.extraction(200.0)

        def default_e(m: float) -> float:
            return 1 - np.exp(-(default.permeability_surface + default.ps_flow_slope * m) / m)

        assert shifted_ratio < 0.75 < 0.85 < default_e(350.0) / default_e(200.0)
        for mbf in p.truth["ischemia"]["normal_mbf"].values():
            assert ps < default.permeability_surface + default.ps_flow_slope * mbf
        spacing = p.truth["rendering"]["native_spacing_zyx_mm"]
        assert spacing[1] < min(default.spacing_zyx_mm[1:]) and p.frames_hu.shape[2:] == (96, 96)


def test_truth_is_consistent(patients):
    default_keys = set(generate_patient(
        make_specs(1, [("c", "series_per_frame")], seed=3, role="test")[0],
        PhantomParams(shape_zyx=(12, 24, 24), spacing_zyx_mm=(6.0, 6.0, 6.0), supersample=1, n_frames=(4, 4)),
    ).truth)
    for p in patients:
        tr = p.truth
        assert default_keys <= set(tr) and tr["family"] == "shifted"
        myo = p.labels == 3
        assert tr["myocardium_ml"] == pytest.approx(myo.sum() * p.geometry.voxel_ml)
        assert 100 < tr["myocardium_ml"] < 260  # an adult LV (the dilated, thick-based shell of this family)
        assert set(np.unique(p.aha17[myo]).tolist()) == set(range(1, 18))
        assert not p.aha17[~myo].any()
        assert (p.labels == 1).any(axis=(1, 2)).all()  # the descending aorta (the AIF) is in every slice
        lo = SMALL.ischemic_mbf[0] * (1 - SMALL.heterogeneity[1])
        hi = SMALL.normal_mbf[1] * (1 + SMALL.heterogeneity[1])
        assert lo <= p.mbf[myo].min() and p.mbf[myo].max() <= hi and not p.mbf[~myo].any()
        for terr, v in tr["ischemia"]["normal_mbf"].items():
            assert SMALL.normal_mbf[0] <= v <= SMALL.normal_mbf[1]
        lm = {k: np.asarray(v) for k, v in tr["landmarks"].items()}
        assert np.linalg.norm(lm["apex"] - lm["base"]) == pytest.approx(tr["anatomy"]["lv_length_mm"])
        assert p.frames_hu.shape == (tr["n_frames"], *p.labels.shape) == p.frame_labels.shape
        times = np.asarray(tr["frame_times_s"])
        assert times[0] == 0 and np.all(np.diff(times) > 0) and times[1] + 1.0 <= tr["bolus_arrival_s"] + 1e-9
        # contrast: LV blood enhances, and the myocardium's peak enhancement is far below the LV's
        lv = p.labels == 2
        gain_lv = max(f[lv].mean() for f in p.frames_hu) - p.frames_hu[0][lv].mean()
        gain_myo = max(f[myo].mean() for f in p.frames_hu) - p.frames_hu[0][myo].mean()
        assert gain_lv > 250 and 20 < gain_myo < 0.5 * gain_lv


def test_two_compartment_exchange_matches_the_ode():
    """The closed-form 2CXM convolution equals a fine explicit integration of its two ODEs."""
    aif = ParkerAIF(arrival_s=5.0, stretch=1.3, peak_hu=500.0, recirculation=1.0, washout=1.0)
    kin = ShiftedKinetics(aif=aif, rv_first_pass=aif, lv_lead_s=1.0, rv_lead_s=3.0, tissue_delay_s=2.5,
                          blood_volume=0.12, interstitial_volume=0.2, permeability_surface=100.0, hematocrit=0.4,
                          dt_s=0.1)
    times = np.array([0.0, 8.0, 15.0, 22.0, 30.0, 45.0])
    mbf = np.array([60.0, 300.0])
    fast = kin.tissue(mbf, times)
    dt = 0.001
    t = np.arange(0.0, 45.0 - 2.5 + dt, dt)
    ca_p = aif(t) / (1 - 0.4)
    for j, m in enumerate(mbf):
        fp, vp, ps, ve = m / 6000 * 0.6, 0.12 * 0.6, 100.0 / 6000, 0.2
        cp = ce = 0.0
        curve = np.zeros_like(t)
        for i in range(1, len(t)):
            cp += dt * (fp * (ca_p[i - 1] - cp) - ps * (cp - ce)) / vp
            ce += dt * ps * (cp - ce) / ve
            curve[i] = vp * cp + ve * ce
        slow = np.interp(np.maximum(times - 2.5, 0), t, curve)
        np.testing.assert_allclose(fast[:, j], slow, atol=0.01 * slow.max())
    assert aif(np.array([4.9]))[0] == 0.0
    fine = np.arange(0, 60, 0.01)
    peak_at = fine[np.argmax(aif(fine))]
    assert aif(fine).max() == pytest.approx(500.0, rel=1e-3)
    assert peak_at == pytest.approx(5.0 + 0.17046 * 60 * 1.3, abs=0.5)  # Parker's first-pass peak, stretched
    assert aif(np.array([59.0]))[0] > 0.15 * 500  # the washout plateau: no return to baseline


@pytest.mark.parametrize("index", [0, 1], ids=["feet-first", "head-first"])
def test_dicom_converts_with_the_right_geometry(tmp_path, patients, index):
    from ctp_steps.convert import convert_dicom_series

    p = patients[index]
    write_dicom(p, tmp_path, p.spec.vendor_style)
    out = convert_dicom_series(tmp_path)
    assert out.hu.shape == p.frames_hu.shape
    assert np.abs(out.hu - p.frames_hu).max() <= max(out.meta["rescale"]["slopes"]) / 2 + 1e-3
    assert out.geometry.allclose(p.geometry, atol=1e-3)
    np.testing.assert_allclose(out.frame_times_s, p.frame_times_s, atol=1e-3)


def test_summary_has_the_family_column(tmp_path):
    from ctp_steps.validation.summary import summarize, summarize_metrics

    metrics = pd.DataFrame({
        "patient_id": ["S1", "S2", "S1"], "center": "C", "stage": ["mbf", "mbf", "imv"],
        "metric": ["mbf_global_bias_pct", "mbf_global_bias_pct", "ischemia_dice"], "target": "all",
        "value": [10.0, -30.0, 0.5],
    })
    default = summarize(metrics)
    assert (default["family"] == "default").all()
    row = default.set_index("metric").loc["mbf_global_bias_pct"]
    assert (row["n"], row["mean"], row["median"]) == (2, -10.0, -10.0)
    assert row["p05"] == pytest.approx(-28.0) and row["p95"] == pytest.approx(8.0)

    path = tmp_path / "m.parquet"
    metrics.to_parquet(path)
    (tmp_path / "cohort").mkdir()
    (tmp_path / "cohort" / "config.json").write_text(json.dumps({"synthetic": {"family": "shifted"}}))
    summarize_metrics([path], tmp_path / "validation")
    shifted = pd.read_parquet(tmp_path / "validation" / "summary.parquet")
    assert (shifted["family"] == "shifted").all()
    pd.testing.assert_frame_equal(shifted.drop(columns="family"), default.drop(columns="family"))


def test_config_switch_and_comparison_table(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    from pydantic import ValidationError

    from ctp_steps.config import SyntheticCohortConfig

    assert SyntheticCohortConfig().family == "default"
    assert SyntheticCohortConfig(family="shifted").family == "shifted"
    with pytest.raises(ValidationError, match="native_grid"):
        SyntheticCohortConfig(family="shifted", native_grid={"shape_zyx": (8, 64, 64), "spacing_zyx_mm": (2, 1, 1)})

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("family_comparison", root / "benchmarks" / "family_comparison.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = {"stage": ["mbf"], "metric": ["mbf_global_bias_pct"], "target": ["all"], "n": [3], "mean": [1.0],
            "median": [1.0], "p05": [-5.0], "p95": [6.0]}
    pd.DataFrame(rows).to_parquet(tmp_path / "a.parquet")  # a summary from before the family column
    pd.DataFrame({**rows, "mean": [-40.0], "family": ["shifted"]}).to_parquet(tmp_path / "b.parquet")
    module.main([str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")])
    out = capsys.readouterr().out
    assert "default mean" in out and "shifted mean" in out and "-40.000" in out and "1.000" in out
