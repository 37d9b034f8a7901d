"""Registration stage: physical-space warps, the net, training, the stage's files and QC, exclusions, validation."""

from __future__ import annotations

import re

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ctp_steps.registration import warp as W
from ctp_steps.registration.config import NetworkConfig, RegistrationConfig, TrainingConfig
from ctp_steps.registration.net import RegNet, load_checkpoint, output_size_for, save_checkpoint
from ctp_steps.types import Geometry, PatientInputError

from conftest import TINY_PHANTOM, run_snakemake, tiny_config

# An oblique grid: anisotropic spacing, rotated axes (a permutation with a flip is exact in float).
OBLIQUE = Geometry((10.0, -20.0, 5.0), (2.0, 3.0, 4.0), (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
TINY_NET = {"widths": [2, 4, 4], "output_size": 8}


@pytest.fixture(scope="module")
def tiny_patient():
    from ctp_steps.phantom import PhantomParams, generate_patient, make_specs

    spec = make_specs(1, [("T", "series_per_frame")], 5, role="test")[0]
    params = PhantomParams(shape_zyx=tuple(TINY_PHANTOM["shape_zyx"]), spacing_zyx_mm=tuple(TINY_PHANTOM["spacing_zyx_mm"]), n_frames=(8, 8))
    return generate_patient(spec, params)


def _masks(patient) -> np.ndarray:
    return np.where(np.isin(patient.frame_labels, (1, 2)), patient.frame_labels, 0).astype(np.uint8)


# --- spatial transformer ---------------------------------------------------------------------------------


def test_identity_warp_is_exact():
    vol = torch.rand(1, 2, 5, 6, 7, dtype=torch.float64)
    zero = torch.zeros(1, 5, 6, 7, 3, dtype=torch.float64)
    assert torch.allclose(W.warp(vol, zero, OBLIQUE), vol, atol=1e-12, rtol=0)
    labels = torch.randint(0, 3, (1, 5, 6, 7))
    assert torch.equal(W.warp_labels(labels, zero, OBLIQUE, 3), labels)


def test_known_shift_in_world_space_is_exact():
    """One voxel along the grid's x axis is a world shift along its direction column, times its spacing."""
    vol = torch.rand(1, 1, 4, 5, 6, dtype=torch.float64)
    x_axis_world = torch.tensor(OBLIQUE.direction_matrix[:, 0] * OBLIQUE.spacing[0], dtype=torch.float64)
    field = x_axis_world.expand(1, 4, 5, 6, 3)
    out = W.warp(vol, field, OBLIQUE)
    assert torch.allclose(out[..., :-1], vol[..., 1:], atol=1e-12, rtol=0)
    assert torch.allclose(out[..., -1], vol[..., -1], atol=1e-12, rtol=0)  # border replicated
    # and two slices along z
    z_world = torch.tensor(OBLIQUE.direction_matrix[:, 2] * 2 * OBLIQUE.spacing[2], dtype=torch.float64)
    out = W.warp(vol, z_world.expand(1, 4, 5, 6, 3), OBLIQUE)
    assert torch.allclose(out[:, :, :-2], vol[:, :, 2:], atol=1e-12, rtol=0)


def test_resample_onto_own_grid_and_shifted_crop():
    vol = torch.rand(1, 1, 6, 6, 6, dtype=torch.float64)
    assert torch.allclose(W.resample(vol, OBLIQUE, OBLIQUE, (6, 6, 6)), vol, atol=1e-12, rtol=0)
    iso = Geometry((0.0, 0.0, 0.0), (2.0, 2.0, 2.0), W.IDENTITY_DIRECTION)
    shifted = W.resample(vol, iso, iso, (6, 6, 6), shift_mm=torch.tensor([0.0, 2.0, 0.0], dtype=torch.float64))
    assert torch.allclose(shifted[:, :, :, :-1], vol[:, :, :, 1:], atol=1e-12, rtol=0)


def test_spatial_transformer_on_the_network_grid():
    moving = torch.rand(1, 1, 12, 12, 12, dtype=torch.float64)
    st = W.SpatialTransformer(offset=2)
    field = torch.zeros(1, 3, 8, 8, 8, dtype=torch.float64)
    assert torch.allclose(st(moving, field), moving[:, :, 2:10, 2:10, 2:10], atol=1e-12, rtol=0)
    field[:, 0] = 1.0  # one voxel along x
    assert torch.allclose(st(moving, field), moving[:, :, 2:10, 2:10, 3:11], atol=1e-12, rtol=0)


def test_jacobian_of_known_fields():
    shape = (5, 6, 7)
    assert np.allclose(W.jacobian_determinant(np.zeros((*shape, 3)), OBLIQUE), 1.0)
    a = np.array([[0.1, 0.02, 0.0], [0.0, -0.2, 0.05], [0.03, 0.0, 0.3]])
    points = W.world_points(OBLIQUE, shape, dtype=torch.float64).numpy()
    det = W.jacobian_determinant(points @ a.T, OBLIQUE)
    assert np.allclose(det, np.linalg.det(np.eye(3) + a))
    assert np.all(W.jacobian_determinant(points @ (-2 * np.eye(3)).T, OBLIQUE) < 0)  # a folding field


# --- network and training ----------------------------------------------------------------------------------


def test_net_valid_convolutions_and_published_shape():
    assert output_size_for(100) == 60  # the published 100³ → 60³
    net = RegNet(TINY_NET["widths"])
    assert net(torch.zeros(2, 4, 48, 48, 48)).shape == (2, 3, 8, 8, 8)
    published = RegNet((128, 256, 512))
    assert published.enc1[0][0].out_channels == 128 and published.enc3[1][0].out_channels == 512
    assert published.flow.out_channels == 3
    with pytest.raises(ValueError, match="multiple of 4"):
        NetworkConfig(output_size=50)


def test_checkpoint_rebuilds_its_network(tmp_path):
    net = RegNet(TINY_NET["widths"]).eval()
    grid = {"spacing_mm": 2.5, "input_size": 48, "output_size": 8, "intensity_scale_hu": 500.0, "intensity_clip": 2.0}
    save_checkpoint(tmp_path / "n.pt", net, grid, {"note": "test"}, fp16=True)
    loaded, loaded_grid, info = load_checkpoint(tmp_path / "n.pt", torch.device("cpu"))
    assert loaded.widths == net.widths and loaded_grid == grid and info == {"note": "test"}
    x = torch.randn(1, 4, 48, 48, 48)
    assert torch.allclose(loaded(x), net(x), atol=1e-3)


def test_a_few_training_steps_reduce_the_loss():
    from ctp_steps.registration.train import pair_loss

    torch.manual_seed(0)
    n = 48
    z, y, x = torch.meshgrid(*(torch.arange(n, dtype=torch.float32),) * 3, indexing="ij")
    blob = lambda cx: ((x - cx) ** 2 + (y - 24) ** 2 + (z - 24) ** 2 < 36).float()[None, None]
    fixed_mask, moving_mask = blob(24.0), blob(25.5)
    fixed, moving = fixed_mask * 1.5 - 0.5, moving_mask * 0.8 - 0.1  # other contrast
    cfg = RegistrationConfig(network=NetworkConfig(**TINY_NET), training=TrainingConfig(patch_size=48))
    net = RegNet(TINY_NET["widths"]).train()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss, _ = pair_loss(net, fixed, moving, fixed_mask, moving_mask, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-3:]) < losses[0] - 0.01


# --- the stage ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """A tiny untrained checkpoint (the output layer starts at the identity: it refines nothing)."""
    path = tmp_path_factory.mktemp("w") / "regnet_tiny.pt"
    grid = {"spacing_mm": 5.0, "input_size": 48, "output_size": 8, "intensity_scale_hu": 500.0, "intensity_clip": 2.0}
    torch.manual_seed(0)
    save_checkpoint(path, RegNet(TINY_NET["widths"]).eval(), grid, {})
    return path


def _write_inputs(patient, folder: Path, masks: np.ndarray | None = None) -> tuple[Path, Path]:
    from ctp_steps.io import write_series

    folder.mkdir(parents=True, exist_ok=True)
    write_series(folder / "series.nii.gz", patient.frames_hu, patient.geometry)
    write_series(folder / "frame_masks.nii.gz", _masks(patient) if masks is None else masks, patient.geometry)
    (folder / "segment_frames.status.json").write_text(json.dumps({"stage": "segment_frames", "status": "ok", "reason": None, "record": {}}))
    return folder / "series.nii.gz", folder / "frame_masks.nii.gz"


def _run_cli(folder: Path, method: str, weights: Path | None = None, config: dict | None = None) -> dict:
    from ctp_steps.cli import main

    files = {
        "input": {"upstream": folder / "segment_frames.status.json", "series": folder / "series.nii.gz",
                  "frame_masks": folder / "frame_masks.nii.gz"},
        "output": {"registered": folder / "registered.nii.gz", "average": folder / "average.nii.gz",
                   "fields": folder / "displacement_mm.nii.gz", "masks": folder / "registered_masks.nii.gz",
                   "qc": folder / "registration_qc.json", "status": folder / "register.status.json"},
    }
    argv = ["run", "register", "--implementation", method, "--device", "cpu", "--config-json", json.dumps(config or {}),
            "--files", json.dumps({side: {k: str(v) for k, v in named.items()} for side, named in files.items()})]
    if weights is not None:
        import shutil

        from ctp_steps.models import register_model

        manifest = folder / "manifest.json"
        shutil.copyfile(weights, folder / "regnet.pt")
        register_model("regnet", folder / "regnet.pt", {}, manifest)
        argv += ["--models-manifest", str(manifest)]
    main(argv)
    return json.loads((folder / "register.status.json").read_text())


def test_learned_stage_files_and_qc(tiny_patient, tiny_weights, tmp_path):
    from ctp_steps.io import read_json, read_series, read_volume
    from ctp_steps.registration.fields import read_fields

    _write_inputs(tiny_patient, tmp_path)
    status = _run_cli(tmp_path, "learned", tiny_weights)
    assert status["status"] == "ok", status
    rec = status["record"]
    assert rec["register_source"] == "learned"
    assert set(rec) == {"register_source", "register_model_sha256", "registration_reference_frame",
                        "registration_lv_dice_before", "registration_lv_dice_after", "registration_lv_dice_after_min",
                        "registration_jacobian_nonpos_frac", "registration_max_displacement_mm", "register_attempts"}
    assert rec["register_attempts"] is None  # the learned result passed its QC: no fallback
    registered, g = read_series(tmp_path / "registered.nii.gz")
    assert registered.shape == tiny_patient.frames_hu.shape and registered.dtype == np.float32
    assert g.allclose(tiny_patient.geometry)
    average, _ = read_volume(tmp_path / "average.nii.gz")
    assert np.allclose(average, registered.mean(axis=0), atol=1e-3)
    fields, fg = read_fields(tmp_path / "displacement_mm.nii.gz")
    assert fields.shape == (*registered.shape, 3) and fg.allclose(g)
    ref = rec["registration_reference_frame"]
    assert np.all(fields[ref] == 0) and np.array_equal(registered[ref], tiny_patient.frames_hu[ref])
    masks, _ = read_series(tmp_path / "registered_masks.nii.gz")
    assert masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1, 2}
    qc = read_json(tmp_path / "registration_qc.json")
    assert qc["method"] == "learned" and qc["reference_frame"] == ref and len(qc["frames"]) == len(registered)
    assert {"lv_dice_before", "lv_dice_after", "jacobian_nonpos_frac", "max_displacement_mm", "lv_shift_mm"} <= set(qc["frames"][0])
    assert qc["summary"]["lv_dice_after"] == pytest.approx(rec["registration_lv_dice_after"])
    before, after = rec["registration_lv_dice_before"], rec["registration_lv_dice_after"]
    assert 0 <= before <= 1 and 0 <= after <= 1 and rec["registration_jacobian_nonpos_frac"] == 0
    assert len(qc["weights_sha256"]) == 64 and rec["register_model_sha256"] == qc["weights_sha256"]
    # the untrained net starts at the identity, so the frames move by the LV centroid shift: better than nothing
    assert after >= before
    # every record column is a patients.parquet column (declared in ctp_steps/cohort.py)
    from ctp_steps.cohort import patients_schema

    assert set(rec) <= set(patients_schema([]).names)


def test_reference_frame_choices(tiny_patient):
    from ctp_steps.registration.reference import choose_reference

    frames, lv, g = tiny_patient.frames_hu, tiny_patient.frame_labels == 2, tiny_patient.geometry
    peak, curves = choose_reference(frames, lv, g, "peak_myocardium")
    assert peak == int(np.argmax(curves["lv_shell_hu"])) and 0 < peak < len(frames)
    assert choose_reference(frames, lv, g, "first")[0] == 0
    assert choose_reference(frames, lv, g, -1)[0] == len(frames) - 1
    with pytest.raises(PatientInputError, match="reference frame 99"):
        choose_reference(frames, lv, g, 99)


def test_frame_without_lv_excludes_the_patient_with_a_reason(tiny_patient, tmp_path):
    masks = _masks(tiny_patient)
    masks[3][masks[3] == 2] = 0
    _write_inputs(tiny_patient, tmp_path, masks)
    status = _run_cli(tmp_path, "none")
    assert status["status"] == "excluded"
    assert "frame_masks.nii.gz" in status["reason"] and "frame(s) [3]" in status["reason"] and "cannot be registered" in status["reason"]
    assert (tmp_path / "registered.nii.gz").stat().st_size == 0  # placeholders, the cohort goes on


def test_frame_left_misaligned_excludes_the_patient(tiny_patient):
    from ctp_steps.registration.stage import qc_failure, register_arrays

    cfg = RegistrationConfig(min_lv_dice_after=0.999)
    res = register_arrays(tiny_patient.frames_hu, _masks(tiny_patient), tiny_patient.geometry, "translation", cfg, torch.device("cpu"))
    assert re.match(r"frame\(s\) \[.*\] could not be registered: LV Dice to reference frame \d+",
                    qc_failure(res["report"], "translation", cfg))
    assert qc_failure(res["report"], "none", cfg) is None  # `none` never excludes


def test_lv_boundary_contrast_in_noise_sds():
    """~0 where blood and wall hold the same HU (before the bolus); the wall's median ignores lung in the shell."""
    from ctp_steps.registration.reference import boundary_contrast_sd

    rng = np.random.default_rng(0)
    unenhanced = boundary_contrast_sd(rng.normal(40, 20, 5000), rng.normal(40, 20, 2000))
    shell = np.concatenate([rng.normal(100, 20, 1600), rng.normal(-800, 20, 400)])  # a fifth of it lung
    enhanced = boundary_contrast_sd(rng.normal(300, 20, 5000), shell)
    assert abs(unenhanced) < 0.1 and enhanced == pytest.approx(10.0, abs=0.3)
    assert boundary_contrast_sd(np.array([]), shell) == 0.0


def test_lv_dice_is_checked_only_where_the_lv_boundary_is_visible(tiny_patient):
    """Frames before the bolus and late in the washout (LV ≈ wall) are not judged by their LV mask's overlap."""
    from ctp_steps.registration.qc import lv_dice_checked
    from ctp_steps.registration.stage import qc_failure, register_arrays

    cfg = RegistrationConfig(min_lv_dice_after=0.999)  # every moving frame's translation-only overlap is below
    res = register_arrays(tiny_patient.frames_hu, _masks(tiny_patient), tiny_patient.geometry, "translation", cfg,
                          torch.device("cpu"))
    report = res["report"]
    contrast = np.array(report["enhancement_curves"]["lv_contrast_sd"])
    assert [f["lv_contrast_sd"] for f in report["frames"]] == contrast.tolist()
    unseen = np.flatnonzero(contrast < 1.0)
    seen = [int(k) for k in np.flatnonzero(contrast >= 1.0) if k != report["reference_frame"]]
    assert unseen.size >= 2 and 0 in unseen and len(seen) >= 2  # the phantom's first frame precedes the bolus
    checked = lv_dice_checked(report, cfg.min_lv_contrast_sd)
    assert [k for k, c in enumerate(checked) if c] == seen
    assert qc_failure(report, "translation", cfg).startswith(f"frame(s) {seen} could not be registered")
    every = RegistrationConfig(min_lv_dice_after=0.999, min_lv_contrast_sd=0.0)
    moving = [k for k in range(len(contrast)) if k != report["reference_frame"]]
    assert qc_failure(report, "translation", every).startswith(f"frame(s) {moving} could not be registered")


class _DisplacingRegistrar:
    """A learned registrar gone wrong on an unfamiliar study: every moving frame pushed 20 mm off."""

    def __init__(self, registrar):
        self.grid = registrar.grid

    def register(self, frames, lv, geometry, reference, centroids):
        from ctp_steps.registration.crop import BoxField
        from ctp_steps.registration.warp import crop_geometry

        n, s = self.grid["output_size"], self.grid["spacing_mm"]
        box = crop_geometry(centroids[reference], n, s)
        shift = np.array([20.0, 0.0, 0.0])
        return [None if k == reference else BoxField(shift, np.broadcast_to(shift.astype(np.float32), (n, n, n, 3)), box)
                for k in range(len(frames))]


def _fast_simpleitk(**kw) -> RegistrationConfig:
    from ctp_steps.registration.config import SimpleITKConfig

    simple = SimpleITKConfig(affine_iterations=5, bspline_iterations=3, bspline_mesh=2)
    return RegistrationConfig(reference_frame="first", simpleitk=simple, **kw)


def test_failed_learned_registration_falls_back_to_simpleitk(tiny_patient, tiny_weights):
    """The net's QC fails; the classical path registers the frames; the attempt is recorded, not hidden."""
    from ctp_steps.registration.learned import LearnedRegistrar
    from ctp_steps.registration.stage import register_with_fallback

    cpu = torch.device("cpu")
    broken = _DisplacingRegistrar(LearnedRegistrar.from_checkpoint(tiny_weights, cpu))
    frames, masks = tiny_patient.frames_hu[:3], _masks(tiny_patient)[:3]
    cfg = _fast_simpleitk(min_lv_dice_after=0.5)
    result, attempts = register_with_fallback(frames, masks, tiny_patient.geometry, "learned", cfg, cpu, registrar=broken)
    assert result["report"]["method"] == "simpleitk" and result["report"]["summary"]["lv_dice_after_min"] >= 0.5
    # frame 1 precedes the bolus (LV ≈ wall): its Dice is not judged, frame 2's is
    assert result["report"]["enhancement_curves"]["lv_contrast_sd"][1] < 1.0
    assert len(attempts) == 1 and attempts[0].startswith("learned: frame(s) [2] could not be registered")
    with pytest.raises(PatientInputError) as err:  # no fallback configured: excluded with the net's reason
        register_with_fallback(frames, masks, tiny_patient.geometry, "learned", _fast_simpleitk(min_lv_dice_after=0.5,
                               fallback="none"), cpu, registrar=broken)
    assert str(err.value).startswith("frame(s) [2] could not be registered") and "simpleitk" not in str(err.value)
    with pytest.raises(PatientInputError) as err:  # every method fails: the reason lists each attempt
        register_with_fallback(frames, masks, tiny_patient.geometry, "learned", _fast_simpleitk(min_lv_dice_after=0.999),
                               cpu, registrar=broken)
    assert str(err.value).startswith("learned: frame(s)") and "; simpleitk: frame(s)" in str(err.value)


def test_simpleitk_baseline_runs_on_the_box(tiny_patient):
    from ctp_steps.registration.config import SimpleITKConfig
    from ctp_steps.registration.stage import register_arrays

    frames = tiny_patient.frames_hu[:3]
    cfg = RegistrationConfig(
        reference_frame="first", simpleitk=SimpleITKConfig(affine_iterations=5, bspline_iterations=3, bspline_mesh=2)
    )
    res = register_arrays(frames, _masks(tiny_patient)[:3], tiny_patient.geometry, "simpleitk", cfg, torch.device("cpu"))
    s = res["report"]["summary"]
    assert res["fields"].shape == (*frames.shape, 3) and np.isfinite(res["fields"]).all()
    assert s["lv_dice_after"] > 0.5 and s["max_displacement_mm"] < 30


# --- validation against the true motion --------------------------------------------------------------------


def test_motion_closed_form_matches_the_phantom(tiny_patient):
    from ctp_steps.phantom import displacement_field_mm
    from ctp_steps.validation.truth import motion_at, where_seen

    g = tiny_patient.geometry
    m = tiny_patient.truth["motion"]["frames"][2]
    points = W.world_points(g, tiny_patient.labels.shape, dtype=torch.float64).numpy()
    assert np.allclose(motion_at(m, points), displacement_field_mm(m, g, tiny_patient.labels.shape), atol=1e-4)
    q = points[::3, ::7, ::7].reshape(-1, 3)
    p = where_seen(m, q)
    assert np.allclose(p + motion_at(m, p), q, atol=1e-6)


def test_validation_metrics_exact_field_and_translation(tiny_patient):
    from ctp_steps.registration.stage import register_arrays
    from ctp_steps.validation.registration import metrics_from_arrays
    from ctp_steps.validation.truth import true_field

    g, labels = tiny_patient.geometry, tiny_patient.frame_labels
    motion, landmarks = tiny_patient.truth["motion"]["frames"], tiny_patient.truth["landmarks"]
    ref = 4
    points = W.world_points(g, labels.shape[1:], dtype=torch.float64).numpy()
    exact = np.stack([true_field(motion[ref], m, points) for m in motion]).astype(np.float32)
    region = np.ones(labels.shape[1:], dtype=bool)
    rows = {(m, t): v for m, t, v in metrics_from_arrays(exact, g, ref, labels, motion, landmarks, region)}
    assert rows[("tre_mm", "landmarks")] < 0.01 and rows[("field_error_mm", "myocardium")] < 0.05
    assert rows[("lv_dice_after", "lv")] == pytest.approx(rows[("lv_dice_exact_field", "lv")])
    assert rows[("jacobian_nonpos_frac", "lv_box")] == 0
    cfg = RegistrationConfig(reference_frame=ref)
    res = register_arrays(tiny_patient.frames_hu, _masks(tiny_patient), g, "translation", cfg, torch.device("cpu"))
    rows = {(m, t): v for m, t, v in metrics_from_arrays(res["fields"], g, ref, labels, motion, landmarks, region)}
    assert rows[("tre_mm", "landmarks")] < rows[("tre_before_mm", "landmarks")]
    assert rows[("lv_dice_after", "lv")] >= rows[("lv_dice_before", "lv")]


def test_exact_field_near_the_lv_moves_the_lv_like_the_whole_grid_field(tiny_patient):
    """The validation's exact-field ceiling is computed only within reach of the LV: the same LV, every frame."""
    from ctp_steps.validation.registration import displacement_bound_mm, exact_field_near
    from ctp_steps.validation.truth import LV_BLOOD, N_TRUTH_LABELS, motion_at, true_field

    g, labels = tiny_patient.geometry, tiny_patient.frame_labels
    motion = tiny_patient.truth["motion"]["frames"]
    points = W.world_points(g, labels.shape[1:], dtype=torch.float64).numpy()
    assert np.linalg.norm(motion_at(motion[2], points), axis=-1).max() <= displacement_bound_mm(motion[2]) + 1e-9
    ref, lv_ref = 4, labels[4] == LV_BLOOD
    for k in (0, 2, 7):
        lk = torch.as_tensor(labels[k].astype(np.int64))[None]
        whole = true_field(motion[ref], motion[k], points).astype(np.float32)
        near = exact_field_near((labels[k] == LV_BLOOD) | lv_ref, motion[ref], motion[k], points, g.spacing[::-1])
        assert np.any(near == 0) or labels.shape[1] < 8  # zero somewhere unless the box covers the grid
        lv = [W.warp_labels(lk, torch.as_tensor(f)[None], g, N_TRUTH_LABELS)[0].numpy() == LV_BLOOD for f in (whole, near)]
        np.testing.assert_array_equal(lv[0], lv[1])


def test_truth_in_reference_frame_matches_the_phantom_frame_labels(tiny_patient):
    from ctp_steps.validation.truth import truth_in_reference_frame

    k = 5
    moved = truth_in_reference_frame(tiny_patient.labels, tiny_patient.geometry, tiny_patient.truth["motion"]["frames"][k])
    # the phantom moves labels on its fine grid, then takes a block majority: equal but for boundary voxels
    assert np.mean(moved == tiny_patient.frame_labels[k]) > 0.97
    assert truth_in_reference_frame(tiny_patient.labels, tiny_patient.geometry, None) is tiny_patient.labels


# --- the workflow ---------------------------------------------------------------------------------------------


@pytest.mark.workflow
def test_register_stage_in_the_workflow(tmp_path, repo):
    """Shipped weights, oracle frame masks, one tiny patient: the stage's files and its validation table."""
    import pandas as pd

    from ctp_steps.models import read_manifest

    if "regnet" not in read_manifest():
        pytest.skip("no shipped regnet weights")
    cfg = tiny_config(tmp_path / "results", n_patients=1, stages={"registration": "learned"})
    patient = tmp_path / "results" / "patients" / "CTR-A" / "S0001"
    metrics = tmp_path / "results" / "validation" / "patients" / "CTR-A" / "S0001" / "registration.parquet"
    run_snakemake(tmp_path, cfg, str(patient / "register.status.json"), str(metrics))
    status = json.loads((patient / "register.status.json").read_text())
    assert status["status"] == "ok" and status["record"]["register_source"] == "learned"
    table = pd.read_parquet(metrics)
    assert set(table["stage"]) == {"registration"}
    assert {"lv_dice_before", "lv_dice_after", "tre_mm", "jacobian_nonpos_frac"} <= set(table["metric"])


def test_training_data_never_uses_cohort_patients(tmp_path):
    from ctp_steps.phantom import PhantomParams
    from ctp_steps.registration.data import make_dataset

    with pytest.raises(ValueError, match="train or validation role only"):
        make_dataset(RegistrationConfig(), PhantomParams().model_dump_json(), "cohort", 1, tmp_path / "x.npz")


def test_truth_helpers_for_downstream_validation(tiny_patient, tmp_path):
    from ctp_steps.io import write_json, write_status
    from ctp_steps.validation.truth import landmarks_in_reference_frame, motion_at, reference_motion
    from ctp_steps.types import StageStatus

    truth_dir, patient_dir = tmp_path / "truth", tmp_path / "patient"
    write_json(truth_dir / "truth.json", tiny_patient.truth)
    write_status(patient_dir / "register.status.json", StageStatus("register", "ok", record={"registration_reference_frame": 2}))
    m = reference_motion(truth_dir, patient_dir)
    assert m == tiny_patient.truth["motion"]["frames"][2]
    moved = landmarks_in_reference_frame(tiny_patient.truth["landmarks"], m)
    for name, q in tiny_patient.truth["landmarks"].items():
        p = np.asarray(moved[name])
        assert np.allclose(p + motion_at(m, p), q, atol=1e-6)
    write_status(patient_dir / "register.status.json", StageStatus("register", "ok", record={"register_source": "oracle"}))
    assert reference_motion(truth_dir, patient_dir) is None


def test_downstream_validation_takes_the_truth_into_the_reference_frame(tiny_patient, tmp_path):
    """Myocardium Dice and landmark errors of perfect answers in a moved reference frame: right only after the transform.

    Frame k's true motion is replaced by a whole-voxel translation, so the perfect answers are plain array shifts.
    """
    import copy

    import pandas as pd

    from ctp_steps.io import read_volume, write_json, write_status, write_volume
    from ctp_steps.validation.landmarks import landmark_metrics
    from ctp_steps.phantom import write_truth
    from ctp_steps.validation.truth import truth_in_reference_frame, truth_map_in_reference_frame
    from ctp_steps.validation.segmentation import myocardium_metrics
    from ctp_steps.types import StageStatus

    p, g, k = tiny_patient, tiny_patient.geometry, 3
    assert np.allclose(g.direction, np.eye(3).ravel())
    u = np.array([2 * g.spacing[0], -g.spacing[1], 0.0])  # frame k at p shows the anatomy at p + u
    truth = copy.deepcopy(p.truth)
    truth["motion"]["frames"][k] = {"translation_mm": u.tolist(), "modes": []}
    truth_dir, patient_dir = tmp_path / "truth" / "CTR-A" / "S0001", tmp_path / "patient"
    write_truth(p, truth_dir)
    write_json(truth_dir / "truth.json", truth)
    moved = patient_dir / "register.status.json"
    write_status(moved, StageStatus("register", "ok", record={"registration_reference_frame": k}))
    oracle = tmp_path / "oracle" / "register.status.json"
    write_status(oracle, StageStatus("register", "ok", record={"register_source": "oracle"}))
    ok = patient_dir / "stage.status.json"
    write_status(ok, StageStatus("x", "ok"))

    def shift(volume: np.ndarray) -> np.ndarray:  # out[z, y, x] = volume[z, y - 1, x + 2]
        return np.roll(volume, (1, -2), axis=(1, 2))

    def value(table: pd.DataFrame, metric: str, target: str) -> float:
        return float(table.loc[(table["metric"] == metric) & (table["target"] == target), "value"].iloc[0])

    # a perfect myocardium of the series registered to frame k
    write_volume(patient_dir / "myocardium.nii.gz", shift(p.labels == 3).astype(np.uint8), g)
    right = value(myocardium_metrics(truth_dir, patient_dir / "myocardium.nii.gz", ok, moved), "dice", "myocardium")
    wrong = value(myocardium_metrics(truth_dir, patient_dir / "myocardium.nii.gz", ok, oracle), "dice", "myocardium")
    assert right == 1.0 and wrong < 0.8
    # the oracle path is unchanged: the un-moved truth, whether or not a status is given
    write_volume(patient_dir / "myo0.nii.gz", (p.labels == 3).astype(np.uint8), g)
    for status in (oracle, None):
        assert value(myocardium_metrics(truth_dir, patient_dir / "myo0.nii.gz", ok, status), "dice", "myocardium") == 1.0

    # perfect landmarks and AHA map in frame k
    found = {n: {"world_mm": (np.asarray(v) - u).tolist()} for n, v in p.truth["landmarks"].items()}
    write_json(patient_dir / "landmarks.json", found)
    write_volume(patient_dir / "aha17.nii.gz", shift(p.aha17), g)
    args = (truth_dir, patient_dir / "landmarks.json", patient_dir / "aha17.nii.gz", ok)
    right, wrong = landmark_metrics(*args, moved), landmark_metrics(*args, oracle)
    for n in ("apex", "base", "rv_insertion"):
        assert value(right, "landmark_error_mm", n) < 1e-6
        assert value(wrong, "landmark_error_mm", n) == pytest.approx(np.linalg.norm(u))
    assert value(right, "segment_label_agreement", "all") == 1.0 > value(wrong, "segment_label_agreement", "all")

    # the true MBF map in the reference frame, unchanged for the oracle
    mbf, mg = truth_map_in_reference_frame(truth_dir, "mbf", moved)
    assert mg.allclose(g) and mbf.dtype == np.float32
    inner = (slice(None), slice(2, -2), slice(2, -2))
    assert np.allclose(mbf[inner], shift(p.mbf)[inner], atol=1e-4)
    assert np.allclose(mbf, truth_in_reference_frame(p.mbf, g, truth["motion"]["frames"][k]))
    assert np.array_equal(truth_map_in_reference_frame(truth_dir, "mbf", oracle)[0], read_volume(truth_dir / "mbf.nii.gz")[0])
    # moved by a fraction of a voxel, MBF and labels still come from the same anatomy voxel: no myocardium
    # voxel takes an MBF blended with the zero outside it (which made the rim of the truth falsely ischemic)
    half = {"translation_mm": [0.4 * g.spacing[0], 0.5 * g.spacing[1], 0.0], "modes": []}
    labels_moved = truth_in_reference_frame(p.labels, g, half)
    mbf_moved = truth_in_reference_frame(p.mbf, g, half)
    myo_moved = labels_moved == 3
    assert np.isin(mbf_moved[myo_moved], p.mbf[p.labels == 3]).all()
    assert mbf_moved[myo_moved].min() == p.mbf[p.labels == 3].min()


def test_fields_file_grid_is_coarse_where_voxels_are_fine(tiny_patient):
    """At voxels finer than field_spacing_mm the fields file holds the field at block centres (a field varies
    over centimetres); frames are still warped at full resolution."""
    from ctp_steps.registration.config import SimpleITKConfig
    from ctp_steps.registration.stage import field_grid, register_arrays
    from ctp_steps.types import Geometry

    g = tiny_patient.geometry
    assert field_grid(g, tiny_patient.frames_hu.shape[1:], 2.5) == (g, tiny_patient.frames_hu.shape[1:])
    fine = Geometry(g.origin, (0.8, 0.9, 1.2), g.direction)
    coarse, shape = field_grid(fine, (30, 40, 50), 2.5)
    assert shape == (15, 13, 16) and coarse.spacing == pytest.approx((2.4, 2.7, 2.4))  # blocks 2, 3, 3

    frames = tiny_patient.frames_hu[:3]
    cfg = RegistrationConfig(
        reference_frame="first", field_spacing_mm=2.0 * max(g.spacing),
        simpleitk=SimpleITKConfig(affine_iterations=5, bspline_iterations=3, bspline_mesh=2),
    )
    res = register_arrays(frames, _masks(tiny_patient)[:3], g, "simpleitk", cfg, torch.device("cpu"))
    blocks = tuple(int(np.floor(cfg.field_spacing_mm / s + 0.5)) for s in g.spacing[::-1])
    assert res["fields"].shape == (3, *(n // b for n, b in zip(frames.shape[1:], blocks)), 3)
    assert res["field_geometry"].allclose(g.blocks(blocks))
    assert res["registered"].shape == frames.shape and not np.array_equal(res["registered"][1], frames[1])
    assert np.abs(res["fields"][1]).max() > 0.1


def test_field_at_block_centres_interpolates_onto_the_image_grid():
    """A field given at block centres comes back on every voxel by trilinear interpolation: exact for a
    linear field inside the hull of the centres, edge values beyond it."""
    from ctp_steps.registration.stage import block_centres_to_grid, field_grid
    from ctp_steps.registration.warp import world_points
    from ctp_steps.types import Geometry

    g = Geometry((3.0, -2.0, 10.0), (0.7, 0.7, 1.25), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    shape = (13, 22, 23)
    coarse_geometry, coarse_shape = field_grid(g, shape, 2.5)
    assert coarse_shape == (6, 5, 5)  # blocks 2, 4, 4
    a = np.array([[0.01, 0.02, -0.01], [0.0, 0.03, 0.01], [0.02, 0.0, 0.01]])
    coarse = (world_points(coarse_geometry, coarse_shape, None, torch.float64).numpy() @ a.T + 1.0).astype(np.float32)
    full = block_centres_to_grid(coarse, (2, 4, 4), shape, torch.device("cpu"))
    exact = world_points(g, shape, None, torch.float64).numpy() @ a.T + 1.0
    inner = (slice(1, 11), slice(2, 18), slice(2, 18))
    assert full.shape == (*shape, 3) and np.abs(full[inner] - exact[inner]).max() < 1e-5
    np.testing.assert_array_equal(full[12], full[11])  # past the last whole block: the edge value


def test_validation_takes_coarse_fields_onto_the_truth_grid():
    """Fields written at block centres are sampled at the truth's voxel centres: a linear field exactly."""
    from ctp_steps.registration.stage import field_grid
    from ctp_steps.registration.warp import world_points
    from ctp_steps.types import Geometry
    from ctp_steps.validation.registration import fields_on_grid

    g = Geometry((3.0, -2.0, 10.0), (0.7, 0.7, 1.25), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    shape = (13, 22, 23)
    coarse_geometry, coarse_shape = field_grid(g, shape, 2.5)
    a = np.array([[0.01, 0.02, -0.01], [0.0, 0.03, 0.01], [0.02, 0.0, 0.01]])
    coarse = world_points(coarse_geometry, coarse_shape, None, torch.float64).numpy() @ a.T + 1.0
    fine = fields_on_grid(np.stack([coarse, 2 * coarse]).astype(np.float32), coarse_geometry, g, shape)
    exact = world_points(g, shape, None, torch.float64).numpy() @ a.T + 1.0
    inner = (slice(1, 11), slice(2, 18), slice(2, 18))
    assert fine.shape == (2, *shape, 3)
    assert np.abs(fine[0][inner] - exact[inner]).max() < 1e-4 and np.abs(fine[1][inner] - 2 * exact[inner]).max() < 1e-4


def test_classical_registration_of_fine_grids_runs_on_the_box_grid():
    """Sub-millimetre studies are registered on the box's own grid: a linear ramp resampled onto the box keeps its
    values (anti-aliasing does not bias a linear function), masks stay binary, coarse grids are left as they are."""
    import SimpleITK as sitk

    from ctp_steps.registration.baseline import _image, finer_than_box, onto_box

    box = Geometry((-20.0, -20.0, -20.0), (2.5, 2.5, 2.5), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    fine = Geometry((-30.0, -30.0, -30.0), (0.7, 0.7, 2.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    assert finer_than_box(fine, box) and not finer_than_box(Geometry(fine.origin, (2.5, 2.5, 3.0), fine.direction), box)
    shape = (30, 86, 86)  # z, y, x: 60 mm along each axis
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, fine.spacing[::-1])), indexing="ij")
    ramp = (3.0 * x - 2.0 * y + 1.0 * z).astype(np.float32)
    out = onto_box(_image(ramp, fine, sitk.sitkFloat32), box, 16)
    assert out.GetSize() == (16, 16, 16) and out.GetSpacing() == pytest.approx((2.5, 2.5, 2.5))
    values = sitk.GetArrayFromImage(out)
    bz, by, bx = np.meshgrid(*(np.arange(16) * 2.5 + 10.0 for _ in range(3)), indexing="ij")  # box centres in `fine` mm
    inner = (slice(2, -2),) * 3
    np.testing.assert_allclose(values[inner], (3.0 * bx - 2.0 * by + 1.0 * bz)[inner], atol=0.05)
    mask = onto_box(_image((ramp > 50).astype(np.uint8), fine), box, 16, labels=True)
    assert set(np.unique(sitk.GetArrayFromImage(mask))) == {0, 1}
