"""Landmark stage: net shapes, heatmap decoding, crops, a few training steps, per-patient exclusions,
bull's-eye layout, validation metrics, and the stage in the real workflow with the shipped weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO, run_snakemake, tiny_config
from ctp_steps.aha import aha_segment_map
from ctp_steps.io import read_json, read_volume, write_volume
from ctp_steps.landmarks.config import LandmarkConfig, LandmarkTrainingConfig
from ctp_steps.landmarks.crop import crop_zyx_to_world, lv_crop_geometry, world_to_crop_zyx
from ctp_steps.landmarks.heatmaps import decode, gaussian_targets, heatmap_loss
from ctp_steps.landmarks.net import LandmarkNet, load_checkpoint, save_checkpoint
from ctp_steps.types import Geometry, PatientInputError

TINY_GRID = {"shape_zyx": (16, 40, 40), "spacing_zyx_mm": (6.0, 5.0, 5.0)}
TINY_TRAINING = LandmarkTrainingConfig(
    width=4, crop_size=24, heatmap_sigma_vox=1.5, train_patients=2, val_patients=1, grids=[TINY_GRID],
    steps=4, batch_size=2, val_every=4, threads=1,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_cases():
    from ctp_steps.landmarks.data import make_cases

    cfg = TINY_TRAINING
    return make_cases(2, "test", cfg.seed, cfg.grids)


def test_net_shapes_and_checkpoint_rebuilds_itself(tmp_path):
    net = LandmarkNet(in_channels=2, n_landmarks=3, width=4).eval()
    x = torch.randn(1, 2, 16, 12, 8)
    assert net(x).shape == (1, 3, 16, 12, 8)
    with pytest.raises(ValueError, match="multiple of 4"):
        net(torch.randn(1, 2, 10, 12, 8))
    save_checkpoint(tmp_path / "w.pt", net, {"crop_size": 16}, half=False)
    again, meta = load_checkpoint(tmp_path / "w.pt")
    assert again.kwargs == {"in_channels": 2, "n_landmarks": 3, "width": 4, "head_channels": 3} and meta == {"crop_size": 16}
    torch.testing.assert_close(again(x), net(x))
    published = LandmarkNet(in_channels=1, n_landmarks=2, width=16)  # the published widths: 16-32-64
    assert published.down2.down[0].out_channels == 64 and published.up2.res.body[0][0].in_channels == 32


def test_decode_is_subvoxel_and_confidence_tracks_sharpness():
    point = torch.tensor([[[9.3, 12.6, 7.8], [3.0, 4.0, 20.0]]])
    target = gaussian_targets(point, 24, 1.5)[0]
    assert torch.allclose(target.sum(dim=(1, 2, 3)), torch.ones(2))
    found, conf = decode(torch.log(target + 1e-12), radius=4.5)
    np.testing.assert_allclose(found, point[0].numpy(), atol=0.05)  # ball-window bias < 0.05 voxel
    assert (conf > 0.95).all()
    _, flat = decode(torch.zeros(2, 24, 24, 24), radius=4.5)
    assert (flat < 0.05).all()
    # the loss is smallest at the target itself
    logits = torch.log(target + 1e-12)[None]
    assert heatmap_loss(logits, target[None]) < heatmap_loss(torch.zeros_like(logits), target[None])


def test_crop_covers_the_mask_and_maps_back_to_world():
    geometry = Geometry((10.0, -20.0, -150.0), (2.5, 2.5, 3.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    mask = np.zeros((20, 40, 40), np.uint8)
    mask[5:15, 10:30, 12:25] = 1
    crop = lv_crop_geometry(mask, geometry, 32, margin_mm=10.0)
    assert np.allclose(crop.spacing, (50.0 + 20.0) / 32)  # largest extent 20 voxels × 2.5 mm + 2 margins
    corners = geometry.index_to_world(np.array([[12, 10, 5], [24, 29, 14]], float))
    inside = world_to_crop_zyx(corners, crop)
    assert (inside > 0).all() and (inside < 31).all()
    np.testing.assert_allclose(crop_zyx_to_world(inside, crop), corners, atol=1e-9)


def test_a_few_training_steps_reduce_the_loss(tiny_cases):
    from ctp_steps.landmarks.train import training_sample

    cfg = TINY_TRAINING
    rng = np.random.default_rng(0)
    batch = [training_sample(c, cfg, rng, augment=True) for c in tiny_cases]
    x = torch.from_numpy(np.stack([b[0] for b in batch]))
    target = gaussian_targets(torch.from_numpy(np.stack([b[1] for b in batch]).astype(np.float32)), cfg.crop_size, 1.5)
    assert x.shape == (2, 2, 24, 24, 24) and torch.isfinite(x).all()
    torch.manual_seed(0)
    net = LandmarkNet(2, 3, width=4)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = heatmap_loss(net(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses


def test_train_loop_checkpoint_and_stage_outputs(tiny_cases, tmp_path):
    """train() end to end (4 steps), a shipped-style checkpoint, and the stage command on it."""
    from ctp_steps.cli import main
    from ctp_steps.landmarks.net import save_checkpoint
    from ctp_steps.landmarks.train import train
    from ctp_steps.models import register_model

    net, meta = train(TINY_TRAINING, tiny_cases[:1], tiny_cases[1:], torch.device("cpu"), log_every=2)
    assert meta["training"]["steps"] == 4 and len(meta["training"]["history"]) == 1
    models = tmp_path / "models"
    models.mkdir()
    save_checkpoint(models / "lm.pt", net, meta)
    register_model("lm", models / "lm.pt", {"test": True}, manifest=models / "manifest.json")

    case = tiny_cases[0]
    patient = tmp_path / "patient"
    write_volume(patient / "average.nii.gz", case.image, case.geometry)
    write_volume(patient / "myocardium.nii.gz", case.mask, case.geometry)
    (patient / "segment_myocardium.status.json").write_text(
        json.dumps({"stage": "segment_myocardium", "status": "ok", "reason": None, "record": {}})
    )

    def run(config: LandmarkConfig, myocardium: str = "myocardium.nii.gz") -> dict:
        files = {
            "input": {"upstream": patient / "segment_myocardium.status.json", "average": patient / "average.nii.gz",
                      "myocardium": patient / myocardium, "weights": models / "lm.pt"},
            "output": {"landmarks": patient / "landmarks.json", "aha": patient / "aha17.nii.gz",
                       "png": patient / "landmarks.png", "status": patient / "landmarks.status.json"},
        }
        main([
            "run", "landmarks", "--implementation", "heatmap", "--device", "cpu",
            "--files", json.dumps({side: {k: str(v) for k, v in named.items()} for side, named in files.items()}),
            "--models-manifest", str(models / "manifest.json"),
            "--config-json", config.model_copy(update={"model": "lm"}).model_dump_json(exclude={"training"}),
        ])
        return read_json(patient / "landmarks.status.json")

    # an under-trained net detects something; with no confidence floor and no distance check the stage writes
    # every output from the net alone
    status = run(LandmarkConfig(min_confidence=0.0, min_long_axis_mm=0.0, max_off_myocardium_mm=1e4,
                                apex="net", rv_insertion="net"))
    assert status["status"] == "ok", status
    assert set(status["record"]) == {
        "landmarks_source", "landmark_conf_min", "landmark_conf_apex", "landmark_conf_base",
        "landmark_conf_rv_insertion", "lv_long_axis_mm", "landmarks_model_sha256", "landmarks_attempts",
        "landmark_rv_net_vs_contact_deg",
    }
    assert status["record"]["landmarks_source"] == "heatmap" and status["record"]["landmarks_attempts"] is None
    assert status["record"]["landmark_rv_net_vs_contact_deg"] is None
    found = read_json(patient / "landmarks.json")
    assert set(found) == {"apex", "base", "rv_insertion"}
    assert all(len(v["world_mm"]) == 3 and 0 <= v["confidence"] <= 1 for v in found.values())
    aha, geometry = read_volume(patient / "aha17.nii.gz")
    assert aha.dtype == np.uint8 and geometry.allclose(case.geometry)
    assert ((aha > 0) == (case.mask > 0)).all() and aha.max() <= 17
    expected = aha_segment_map(case.mask, case.geometry, *(found[n]["world_mm"] for n in ("apex", "base", "rv_insertion")))
    assert (aha == expected).all()
    assert (patient / "landmarks.png").stat().st_size > 1000

    # the net unsure: the geometric fallback finds the landmarks, the patient is usable and the row says how
    status = run(LandmarkConfig(min_confidence=0.999))
    assert status["status"] == "ok", status
    rec = status["record"]
    assert rec["landmarks_source"] == "geometric"
    assert rec["landmarks_attempts"].startswith("heatmap: landmark apex not found (confidence ")
    assert rec["landmark_conf_min"] >= LandmarkConfig().min_geometric_quality
    found = read_json(patient / "landmarks.json")
    assert {v["method"] for v in found.values()} == {"geometric"}
    for name, point in zip(("apex", "base", "rv_insertion"), case.landmarks):  # within a voxel or two of the truth
        assert np.linalg.norm(np.asarray(found[name]["world_mm"]) - point) < 2 * max(case.geometry.spacing), name

    # no fallback configured: excluded with a reason naming the stage and the landmark
    status = run(LandmarkConfig(min_confidence=0.999, fallback="none"))
    assert status["status"] == "excluded"
    assert status["reason"].startswith("landmarks: average.nii.gz: landmark apex not found"), status["reason"]
    assert (patient / "aha17.nii.gz").stat().st_size == 0

    # every method fails: the reason lists each attempt
    status = run(LandmarkConfig(min_confidence=0.999, min_long_axis_mm=500.0))
    assert status["status"] == "excluded"
    assert status["reason"].startswith("landmarks: average.nii.gz: heatmap: landmark apex not found")
    assert "; geometric: landmarks apex and base only" in status["reason"]

    # an empty myocardium mask
    write_volume(patient / "empty.nii.gz", np.zeros_like(case.mask), case.geometry)
    status = run(LandmarkConfig(), myocardium="empty.nii.gz")
    assert status["status"] == "excluded" and status["reason"].startswith("landmarks: empty.nii.gz: myocardium mask")


def test_a_confident_landmark_off_the_myocardium_is_replaced_by_a_fallback(tiny_cases):
    """The net sure of an apex 30 mm outside the heart: that landmark comes from a fallback, the others stay —
    the far end of the myocardium from the net's base while that base passes, else the geometric method."""
    from types import SimpleNamespace

    from ctp_steps.landmarks.stage import choose_landmarks, distance_to_mask_mm

    case = tiny_cases[0]
    truth = np.asarray(case.landmarks, float)
    myocardium_world = case.geometry.zyx_to_world(np.argwhere(case.mask > 0))
    on_epicardium = distance_to_mask_mm(truth[[0, 2]], myocardium_world)  # (the base is the valve centre)
    assert on_epicardium.max() < 2 * max(case.geometry.spacing)
    away = truth[0] + 30.0 * (truth[0] - truth[1]) / np.linalg.norm(truth[0] - truth[1])  # beyond the apex
    det = SimpleNamespace(names=("apex", "base", "rv_insertion"), world_mm=np.array([away, truth[1], truth[2]]),
                          confidence=np.array([0.95, 0.9, 0.9]))
    cfg = LandmarkConfig()
    chosen = choose_landmarks(det, case.image, case.mask > 0, case.geometry, cfg)
    assert chosen.methods == ("apex_from_base", "heatmap", "heatmap") and chosen.source == "heatmap+apex_from_base"
    assert chosen.failed_attempts[0].startswith("heatmap: landmark apex 3") and "from the myocardium" in chosen.failed_attempts[0]
    assert np.linalg.norm(chosen.world_mm[0] - truth[0]) < 2 * max(case.geometry.spacing)
    np.testing.assert_array_equal(chosen.world_mm[1:], truth[1:])
    # the base unsure too: both from the geometric method, the RV insertion still the net's
    det.confidence = np.array([0.95, 0.1, 0.9])
    chosen = choose_landmarks(det, case.image, case.mask > 0, case.geometry, cfg)
    assert chosen.methods == ("geometric", "geometric", "heatmap") and chosen.source == "heatmap+geometric"
    assert np.linalg.norm(chosen.world_mm[0] - truth[0]) < 2 * max(case.geometry.spacing)
    # the same point on the epicardium passes; without a fallback the misplaced apex excludes the patient
    det.world_mm, det.confidence = truth.copy(), np.array([0.95, 0.9, 0.9])
    assert choose_landmarks(det, case.image, case.mask > 0, case.geometry, cfg).source == "heatmap"
    det.world_mm = np.array([away, truth[1], truth[2]])
    with pytest.raises(PatientInputError, match="^landmark apex .* mm from the myocardium"):
        choose_landmarks(det, case.image, case.mask > 0, case.geometry, cfg.model_copy(update={"fallback": "none"}))


@pytest.mark.parametrize("tilt_deg", [0.0, 35.0, 80.0])
def test_apex_from_base_is_the_far_end_of_a_tilted_shell(tilt_deg):
    """A truncated ellipsoidal LV shell (cavity 22×45 mm, wall 10 mm) at any tilt, on 1.5 mm voxels: the apex
    estimate lies within the 4 mm cap of the true epicardial apex; a sphere-like shell has no single apex."""
    from ctp_steps.landmarks.geometric import apex_from_base

    geometry = Geometry(origin=(-90.0, -90.0, -90.0), spacing=(1.5, 1.5, 1.5), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    zyx = np.indices((120, 120, 120)).reshape(3, -1).T
    world = geometry.index_to_world(zyx[:, ::-1].astype(float))
    t = np.radians(tilt_deg)
    u = np.array([np.sin(t), 0.3 * np.cos(t), np.cos(t)])
    u /= np.linalg.norm(u)
    base = np.array([5.0, -8.0, -30.0])
    centre = base + 15.0 * u  # the base plane 15 mm beyond the ellipsoid's equator
    a = (world - centre) @ u
    rho = np.linalg.norm(world - centre - a[:, None] * u, axis=1)

    def inside(long, short):
        return (a / long) ** 2 + (rho / short) ** 2 < 1

    shell = inside(55.0, 32.0) & ~inside(45.0, 22.0) & ((world - base) @ u > 0)
    apex_true = centre + 55.0 * u
    apex, quality = apex_from_base(base, shell.reshape(120, 120, 120), geometry)
    assert quality == 1.0
    assert np.linalg.norm(apex - apex_true) < 4.0, np.linalg.norm(apex - apex_true)
    ball = (np.linalg.norm(world - base, axis=1) < 40) & (np.linalg.norm(world - base, axis=1) > 30)
    _, quality = apex_from_base(base, ball.reshape(120, 120, 120), geometry)
    assert quality == 0.0


def test_detection_problem_names_only_the_failing_landmark():
    from ctp_steps.landmarks.stage import detection_problem

    names = ("apex", "base", "rv_insertion")
    pts = np.array([[50.0, -50.0, -50.0], [0.0, 0.0, 0.0], [-20.0, -25.0, 10.0]])
    cfg = LandmarkConfig()

    def problem(points, confidence):
        return detection_problem(names, points, np.asarray(confidence, float), cfg, cfg.min_confidence)

    assert problem(pts, [0.9, 0.8, 0.7]) is None
    low = problem(pts, [0.9, 0.8, 0.2])
    assert low == "landmark rv_insertion not found (confidence 0.20 < 0.50)"
    assert "landmark base not found" in problem(pts, [0.9, np.nan, 0.9])
    assert "apex and base only" in problem(np.array([[1.0, 0, 0], [0, 0, 0], [0, 5.0, 0]]), np.ones(3))
    assert "rv_insertion unusable" in problem(np.array([[0, 0, 60.0], [0, 0, 0], [0, 0, 20.0]]), np.ones(3))


def test_config_validates_territories():
    assert sorted(sum(LandmarkConfig().territories.values(), [])) == list(range(1, 18))
    with pytest.raises(ValueError, match="every AHA segment"):
        LandmarkConfig(territories={"LAD": [1, 2], "RCA": [3]})
    with pytest.raises(ValueError, match="multiple of 4"):
        LandmarkTrainingConfig(crop_size=30)


def test_bullseye_layout_and_plot(tmp_path):
    from ctp_steps.bullseye import plot_bullseye, segment_wedges

    wedges = segment_wedges()
    assert sorted(wedges) == list(range(1, 18))

    def mid_angle(seg: int) -> float:
        return ((wedges[seg][2] + wedges[seg][3]) / 2) % 360

    # AHA layout: anterior at the top, septum left, inferior bottom, lateral right
    assert mid_angle(1) == 90 and mid_angle(7) == 90 and mid_angle(13) == 90
    assert mid_angle(14) == 180 and mid_angle(15) == 270 and mid_angle(16) == 0
    assert 90 < mid_angle(2) < 180 and 180 < mid_angle(3) < 270 and mid_angle(4) == 270
    assert 270 < mid_angle(5) < 360 and 0 < mid_angle(6) < 90
    assert wedges[17][:2] == (0.0, 0.25) and wedges[1][:2] == (0.75, 1.0)
    out = tmp_path / "bull.png"
    plot_bullseye({s: 100.0 + 5 * s for s in range(1, 17)}, "MBF", out, cmap="inferno", vmin=0, vmax=300)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="1..17"):
        plot_bullseye({18: 1.0}, "x", out)


def test_validation_metrics_are_zero_for_exact_landmarks():
    from ctp_steps.validation.landmarks import landmark_metric_values

    truth = {"apex": [50.0, -50.0, -50.0], "base": [0.0, 0.0, 0.0], "rv_insertion": [-20.0, -25.0, 10.0]}
    seg = np.array([0, 1, 2, 17, 5], np.uint8)
    rows = {(m, t): v for m, t, v in landmark_metric_values(truth, truth, seg, seg)}
    assert rows[("landmark_error_mm", "apex")] == 0 and rows[("segment_label_agreement", "all")] == 1
    assert rows[("rv_angle_error_deg", "rv_insertion")] == pytest.approx(0, abs=1e-5)
    shifted = {**truth, "base": [3.0, 4.0, 0.0]}
    rows = {(m, t): v for m, t, v in landmark_metric_values(truth, shifted, seg, np.array([0, 1, 3, 17, 0], np.uint8))}
    assert rows[("landmark_error_mm", "base")] == pytest.approx(5.0)
    assert rows[("segment_label_agreement", "all")] == pytest.approx(0.5)
    assert rows[("segment_label_agreement", "same_mask")] == pytest.approx(2 / 3)


@pytest.mark.workflow
def test_stage_in_the_workflow_with_shipped_weights(tmp_path):
    """`stages.landmarks: heatmap` on the tiny cohort: outputs, record and validation rows for every patient."""
    from ctp_steps.models import read_manifest

    if "landmark_net" not in read_manifest():
        pytest.skip("models/manifest.json has no landmark_net yet")
    results = tmp_path / "results"
    cfg = tiny_config(results, n_patients=2, stages={"landmarks": "heatmap"})
    targets = [
        str(results / "validation" / "patients" / c / p / "landmarks.parquet")
        for c, p in (("CTR-A", "S0001"), ("CTR-B", "S0002"))
    ]
    run_snakemake(tmp_path / "work", cfg, *targets)
    for target in targets:
        patient = Path(target.replace("/validation/patients/", "/patients/")).parent
        status = read_json(patient / "landmarks.status.json")
        assert status["status"] == "ok", status
        assert status["record"]["landmarks_source"] in ("heatmap", "heatmap+rv_contact", "heatmap+lv_axis+rv_contact")
        rv = read_json(patient / "landmarks.json")["rv_insertion"]
        assert rv["placed"] == "aha_definition" and rv["direction"] in ("net", "mean_of_net_and_contact")
        assert (patient / "landmarks.png").stat().st_size > 1000
        metrics = pd.read_parquet(target)
        assert set(metrics["metric"]) >= {"landmark_error_mm", "segment_label_agreement"}
        assert metrics["value"].notna().all()
        err = metrics[metrics["metric"] == "landmark_error_mm"].set_index("target")["value"]
        assert set(err.index) == {"apex", "base", "rv_insertion"}
        assert (err < 15.0).all(), err  # the tiny grid has 5-6 mm voxels


def test_randomised_training_anatomy_is_the_wider_phantom():
    """Landmark training cases come from the shared wider training phantom unless `anatomy: default`."""
    from ctp_steps.landmarks.config import LandmarkGridConfig, LandmarkTrainingConfig
    from ctp_steps.landmarks.data import make_cases
    from ctp_steps.phantom.params import PhantomParams, randomised_training_phantom

    assert LandmarkTrainingConfig().anatomy == "randomised"
    wide, narrow = randomised_training_phantom(), PhantomParams()
    assert wide.lv_axis_tilt_max_deg > narrow.lv_axis_tilt_max_deg and wide.wall_thickness_mm[1] > narrow.wall_thickness_mm[1]
    assert wide.rv_half_angle_deg[0] < narrow.rv_half_angle_deg[0] == narrow.rv_half_angle_deg[1] < wide.rv_half_angle_deg[1]
    grid = [LandmarkGridConfig(shape_zyx=(24, 48, 48), spacing_zyx_mm=(5.0, 4.0, 4.0))]
    (a,), (b,) = make_cases(1, "test", 3, grid, anatomy="randomised"), make_cases(1, "test", 3, grid, anatomy="default")
    assert a.image.shape == b.image.shape == (24, 48, 48) and not np.array_equal(a.image, b.image)
    for case in (a, b):  # landmarks inside the field of view, the mask non-empty
        idx = np.array([case.geometry.world_to_index(p) for p in case.landmarks])
        assert np.all(idx > -0.5) and np.all(idx < np.array([48, 48, 24]) - 0.5) and case.mask.sum() > 0
