"""Segmentation stages: VB-Net shapes, training steps, checksums, empty masks, inference, AIF, workflow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY_PHANTOM, run_snakemake, tiny_config
from ctp_steps.cli import run_patient_stage
from ctp_steps.io import read_json, read_series, write_json, write_series, write_volume
from ctp_steps.models import ModelError, read_manifest, register_model
from ctp_steps.segmentation.aif import aif_record, aorta_aif
from ctp_steps.segmentation.config import PUBLISHED_WIDTHS, SegmentationConfig
from ctp_steps.segmentation.infer import load_model, predict
from ctp_steps.segmentation.postprocess import clean_labels, largest_component
from ctp_steps.segmentation import segment_frames, segment_myocardium
from ctp_steps.stages import Context
from ctp_steps.segmentation.vbnet import VBNet, load_checkpoint, parameter_count, save_checkpoint
from ctp_steps.types import Geometry, PatientInputError

torch.set_num_threads(1)
TINY_SPACING = tuple(TINY_PHANTOM["spacing_zyx_mm"])
GEOMETRY = Geometry((0.0, 0.0, 0.0), TINY_SPACING[::-1], (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
NARROW = (2, 4, 4, 8, 8)


# ---------------------------------------------------------------- network


def test_vbnet_published_widths_shapes():
    net = VBNet(1, 3, PUBLISHED_WIDTHS).eval()
    assert net.kwargs["widths"] == [16, 32, 64, 128, 256]
    feats = {}
    for name in ("inp", "down1", "down2", "down3", "down4", "up1", "up2", "up3", "up4"):
        getattr(net, name).register_forward_hook(lambda m, i, o, name=name: feats.__setitem__(name, tuple(o.shape)))
    with torch.no_grad():
        out = net(torch.zeros(1, 1, 32, 32, 32))
    assert out.shape == (1, 3, 32, 32, 32)
    assert feats == {
        "inp": (1, 16, 32, 32, 32),
        "down1": (1, 32, 16, 16, 16),
        "down2": (1, 64, 8, 8, 8),
        "down3": (1, 128, 4, 4, 4),
        "down4": (1, 256, 2, 2, 2),
        "up1": (1, 256, 4, 4, 4),
        "up2": (1, 128, 8, 8, 8),
        "up3": (1, 64, 16, 16, 16),
        "up4": (1, 32, 32, 32, 32),
    }
    # bottleneck blocks in down2-4 and up1-2 (1³ → C/4, 3³, 1³ → C), plain 3³ convolutions elsewhere
    first = net.down3.res.body[0]
    assert [m.kernel_size for m in first.modules() if isinstance(m, torch.nn.Conv3d)] == [(1, 1, 1), (3, 3, 3), (1, 1, 1)]
    assert first[0][0].out_channels == 32
    assert len(net.down3.res.body) == 3 and len(net.up3.res.body) == 2 and len(net.up4.res.body) == 1
    assert parameter_count(net) > parameter_count(VBNet(1, 3, (8, 16, 32, 64, 128)))


def test_vbnet_pads_to_multiple_of_16_and_crops_back():
    net = VBNet(2, 2, NARROW).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 2, 17, 20, 33))
    assert out.shape == (2, 2, 17, 20, 33)


def test_checkpoint_rebuilds_its_network(tmp_path):
    net = VBNet(1, 2, NARROW).eval()
    save_checkpoint(tmp_path / "m.pt", net, {"spacing_zyx_mm": [1, 1, 1]})
    loaded, meta = load_checkpoint(tmp_path / "m.pt")
    assert loaded.kwargs == net.kwargs and meta == {"spacing_zyx_mm": [1, 1, 1]}
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=5e-2)  # fp16 weights


# ---------------------------------------------------------------- training


@pytest.fixture(scope="module")
def tiny_cases(tmp_path_factory) -> list[Path]:
    """Two real phantom training cases on the tiny grid (one train, one validation)."""
    from ctp_steps.phantom import PhantomParams
    from ctp_steps.segmentation.data import make_case, training_specs, write_case

    root = tmp_path_factory.mktemp("seg_cases")
    specs = training_specs(1, 1, seed=7)
    params = PhantomParams(**TINY_PHANTOM, n_frames=(6, 6))
    paths = []
    for spec in (specs["train"][0], specs["validation"][0]):
        paths.append(root / f"{spec.patient_id}.npz")
        write_case(paths[-1], make_case(spec, params))
    return paths


def _tiny_cfg(**training) -> SegmentationConfig:
    return SegmentationConfig.model_validate(
        {
            "network": {"widths": list(NARROW), "spacing_zyx_mm": list(TINY_SPACING)},
            "training": {"threads": 1, "frames": {"crop_zyx": [16, 32, 32], "batch_size": 2, **training},
                         "myocardium": {"crop_zyx": [16, 32, 32], "batch_size": 2, **training}},
        }
    )


def test_case_arrays(tiny_cases):
    from ctp_steps.segmentation.data import read_case

    case = read_case(tiny_cases[0])
    assert case["frames"].shape == case["frame_labels"].shape == case["aligned"].shape == (6, 16, 40, 40)
    assert set(np.unique(case["frame_labels"])) == {0, 1, 2}
    assert case["myocardium"].sum() > 0 and case["frames"].dtype == np.int16


@pytest.mark.parametrize("task", ["frames", "myocardium"])
def test_training_steps_reduce_the_loss(tiny_cases, task):
    from ctp_steps.segmentation.preprocess import in_channels
    from ctp_steps.segmentation.train import TASK_CLASSES, Sampler, dice_ce_loss, load_cases

    cfg = _tiny_cfg()
    context = cfg.network.frames_context if task == "frames" else "none"
    torch.manual_seed(0)
    sampler = Sampler(load_cases(tiny_cases[:1], task, context), task, cfg, getattr(cfg.training, task), TINY_SPACING, 0)
    x, y = sampler.batch()
    assert x.shape == (2, in_channels(context), 16, 32, 32) and y.shape == (2, 16, 32, 32)
    net = VBNet(in_channels(context), len(TASK_CLASSES[task]), NARROW)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = dice_ce_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]


def test_train_model_writes_checkpoint_and_report(tiny_cases, tmp_path):
    from ctp_steps.segmentation.train import train_model

    report = train_model("frames", tiny_cases[:1], tiny_cases[1:], _tiny_cfg(validate_every=2), tmp_path / "m.pt", steps=3, progress=False)
    assert report["steps"] == 3 and report["train_cpu_s"] > 0
    assert set(report["validation"]) >= {"dice_aorta", "dice_lv", "dice_per_patient"}
    assert [h["step"] for h in report["history"] if "val_dice_mean" in h] == [2, 3]
    net, meta = load_checkpoint(tmp_path / "m.pt")
    assert meta["context"] == "temporal_max" and meta["spacing_zyx_mm"] == list(TINY_SPACING)
    assert net.kwargs["in_channels"] == 2


def test_shipped_card_states_the_training_distribution_and_generalisation(tiny_cases, tmp_path):
    """The model card names what the training phantom widens and carries the measured family comparison."""
    from ctp_steps.io import write_json
    from ctp_steps.segmentation.config import widened_phantom
    from ctp_steps.segmentation.ship import ship_model
    from ctp_steps.segmentation.train import train_model

    cfg = _tiny_cfg(validate_every=2)
    report = train_model("myocardium", tiny_cases[:1], tiny_cases[1:], cfg, tmp_path / "m.pt", steps=2, progress=False)
    write_json(tmp_path / "report.json", report)
    models = tmp_path / "models"
    models.mkdir()
    table = "| family | checkpoint | patients | dice myocardium |\n| --- | --- | --- | --- |\n| shifted | new | 4 | 0.910 |\n"
    entry = ship_model("vbnet_myocardium", tmp_path / "m.pt", tmp_path / "report.json", cfg, models, generalisation=table)
    card = (models / "vbnet_myocardium.md").read_text()
    widened = widened_phantom(cfg.training.phantom)
    assert widened["lv_axis_tilt_max_deg"] == 25.0 and widened["noise_sd_hu"] == [5.0, 40.0]
    assert "`lv_axis_tilt_max_deg` 25.0" in card and "| shifted | new | 4 | 0.910 |" in card
    assert "'rotation_deg': 30.0" in card and entry["data"]["phantom_changes"] == widened
    assert read_manifest(models / "manifest.json")["vbnet_myocardium"]["generalisation"] == table


# ---------------------------------------------------------------- inference, checksums, empty masks


def _ship_tiny(models: Path, name: str, net: VBNet, context: str = "none") -> Path:
    path = models / f"{name}.pt"
    meta = {"task": "t", "spacing_zyx_mm": [3.0, 2.5, 2.5], "hu_window": [-200.0, 800.0], "context": context}
    save_checkpoint(path, net, meta)
    register_model(name, path, {"note": "test"}, manifest=models / "manifest.json")
    return path


def _background_only(n_classes: int, in_ch: int = 1) -> VBNet:
    net = VBNet(in_ch, n_classes, NARROW).eval()
    last = net.out[-1]
    torch.nn.init.zeros_(last.weight)
    with torch.no_grad():
        last.bias.copy_(torch.tensor([10.0] + [0.0] * (n_classes - 1)))
    return net


def test_predict_tiny_volume_resamples_and_returns_input_grid(tmp_path):
    path = _ship_tiny(tmp_path, "m", VBNet(2, 3, NARROW), context="temporal_max")
    model = load_model(path, torch.device("cpu"))
    series = np.random.default_rng(0).normal(40, 20, size=(3, 16, 40, 40)).astype(np.float32)
    labels = predict(model, series, TINY_SPACING, batch_size=2)
    assert labels.shape == series.shape and labels.dtype == np.uint8 and labels.max() <= 2


def _tiny_patient(tmp_path: Path) -> tuple[Path, Path]:
    series = np.full((4, 16, 40, 40), 40.0, dtype=np.float32)
    write_series(tmp_path / "series.nii.gz", series, GEOMETRY)
    write_json(tmp_path / "frames.json", {"frame_times_s": [0.0, 2.0, 4.0, 6.0]})
    return tmp_path / "series.nii.gz", tmp_path / "frames.json"


def _frames_outputs(folder):
    return segment_frames.Outputs(frame_masks=folder / "frame_masks.nii.gz", aif=folder / "aif.parquet",
                                  status=folder / "segment_frames.status.json")


def test_checksum_mismatch_and_missing_weights_name_the_file(tmp_path):
    models = tmp_path / "models"
    path = _ship_tiny(models, "vbnet_frames", VBNet(1, 3, NARROW))
    series, frames = _tiny_patient(tmp_path)
    manifest = models / "manifest.json"
    cfg, ctx = SegmentationConfig(), Context("vbnet", "cpu", models_manifest=manifest)
    inputs = segment_frames.Inputs(series=series, frames=frames, weights=path)
    outputs = _frames_outputs(tmp_path)
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(ModelError, match=r"vbnet_frames\.pt has sha256"):
        segment_frames.run(inputs, outputs, cfg, ctx)
    path.unlink()
    with pytest.raises(ModelError, match=r"vbnet_frames\.pt is missing"):
        segment_frames.run(inputs, outputs, cfg, ctx)
    with pytest.raises(ModelError, match="not listed"):
        segment_frames.run(inputs, outputs, SegmentationConfig(frames_model="other"), ctx)
    assert read_manifest(manifest)["vbnet_frames"]["file"] == "vbnet_frames.pt"


def test_empty_masks_exclude_the_patient_with_a_reason(tmp_path):
    models = tmp_path / "models"
    frames_w = _ship_tiny(models, "vbnet_frames", _background_only(3))
    myo_w = _ship_tiny(models, "vbnet_myocardium", _background_only(2))
    series, frames = _tiny_patient(tmp_path)
    upstream = tmp_path / "convert.status.json"
    write_json(upstream, {"stage": "convert", "status": "ok", "reason": None, "record": {}})
    cfg, ctx = SegmentationConfig(), Context("vbnet", "cpu", models_manifest=models / "manifest.json")
    outputs = _frames_outputs(tmp_path)
    status = outputs.status
    inputs = segment_frames.Inputs(upstream=upstream, series=series, frames=frames, weights=frames_w)
    run_patient_stage(
        "segment_frames", status, outputs.files(), [upstream],
        lambda: segment_frames.run(inputs, outputs, cfg, ctx),
    )
    record = read_json(status)
    assert record["status"] == "excluded"
    assert "implausible aorta mask in frame 0: empty" in record["reason"] and "series.nii.gz" in record["reason"]
    write_volume(tmp_path / "average.nii.gz", np.full((16, 40, 40), 40.0, dtype=np.float32), GEOMETRY)
    with pytest.raises(PatientInputError, match="implausible myocardium mask: empty"):
        segment_myocardium.run(
            segment_myocardium.Inputs(average=tmp_path / "average.nii.gz", weights=myo_w),
            segment_myocardium.Outputs(myocardium=tmp_path / "myocardium.nii.gz",
                                       status=tmp_path / "segment_myocardium.status.json"),
            cfg, ctx,
        )


def test_implausible_volume_is_an_input_failure():
    from ctp_steps.segmentation.config import VolumeBounds
    from ctp_steps.segmentation.postprocess import check_volume

    check_volume("LV", np.array([50.0, 60.0]), VolumeBounds(min_ml=10, max_ml=400), "s.nii.gz")
    with pytest.raises(PatientInputError, match=r"s.nii.gz: implausible LV mask in frame 1: 900.0 mL, outside 10-400 mL"):
        check_volume("LV", np.array([50.0, 900.0]), VolumeBounds(min_ml=10, max_ml=400), "s.nii.gz")


# ---------------------------------------------------------------- post-processing, AIF


def test_post_processing_keeps_largest_component_and_fills_holes_but_not_a_cavity():
    labels = np.zeros((12, 12, 12), dtype=np.uint8)
    labels[2:7, 2:7, 2:7] = 1
    labels[4, 4, 4] = 0  # hole
    labels[10, 10, 10] = 1  # speck
    out = clean_labels(labels, (1,))
    assert out[4, 4, 4] == 1 and out[10, 10, 10] == 0
    shell = np.zeros((12, 12, 12), dtype=bool)
    shell[1:11, 1:11, 1:11] = True
    shell[3:9, 3:9, 3:9] = False  # a closed "myocardium" around a 216-voxel "cavity"
    kept = clean_labels(shell.astype(np.uint8), (1,), max_hole_voxels=20)
    assert kept[5, 5, 5] == 0
    assert largest_component(np.zeros((3, 3, 3), bool)).sum() == 0


def test_aif_is_the_eroded_aorta_mean_with_enhancement():
    t = 5
    series = np.zeros((t, 9, 9, 9), dtype=np.float32)
    masks = np.zeros((t, 9, 9, 9), dtype=np.uint8)
    masks[:, 2:7, 2:7, 2:7] = 1
    true = np.array([40.0, 42.0, 240.0, 440.0, 140.0])
    for k in range(t):
        series[k][masks[k] == 1] = 1000.0  # the rim (partial volume) must not count
        series[k, 3:6, 3:6, 3:6] = true[k]
    aif = aorta_aif(series, masks, [0.0, 1.0, 2.0, 3.0, 4.0], erosion_voxels=1, baseline_frames=2)
    assert list(aif.columns) == ["frame", "time_s", "hu", "enhancement_hu"]
    np.testing.assert_allclose(aif["hu"], true)
    np.testing.assert_allclose(aif["enhancement_hu"], true - 41.0)
    assert aif_record(aif) == {"aif_peak_hu": 399.0, "aif_peak_time_s": 3.0, "aif_baseline_hu": 41.0}
    masks[3] = 0
    with pytest.raises(PatientInputError, match="empty aorta mask in frame 3"):
        aorta_aif(series, masks, [0.0, 1.0, 2.0, 3.0, 4.0])


# ---------------------------------------------------------------- workflow


def test_train_target_plans_both_models(tmp_path):
    proc = run_snakemake(tmp_path, tiny_config(tmp_path / "results"), "train", "-n", "--quiet", "rules")
    assert "train_vbnet" in proc.stdout and "segmentation_training_case" in proc.stdout


@pytest.mark.workflow
def test_workflow_runs_vbnet_stages_with_shipped_weights(tmp_path):
    if not {"vbnet_frames", "vbnet_myocardium"} <= set(read_manifest()):
        pytest.fail("models/manifest.json lacks the shipped segmentation weights")
    results = tmp_path / "results"
    cfg = tiny_config(results, n_patients=1, stages={"segment_frames": "vbnet", "segment_myocardium": "vbnet"}, device="cpu")
    cfg["synthetic"]["phantom"] = {**TINY_PHANTOM, "n_frames": [8, 8]}
    pats = [("CTR-A", "S0001")]
    targets = [str(results / f"patients/{c}/{p}/segment_myocardium.status.json") for c, p in pats]
    targets += [str(results / f"validation/patients/{c}/{p}/segment_{s}.parquet") for c, p in pats for s in ("frames", "myocardium")]
    run_snakemake(tmp_path, cfg, *targets)
    for c, p in pats:
        d = results / "patients" / c / p
        status = read_json(d / "segment_frames.status.json")
        if status["status"] == "ok":  # the tiny grid is far coarser than the models' grid: exclusion is allowed
            masks, _ = read_series(d / "frame_masks.nii.gz")
            series, _ = read_series(d / "series.nii.gz")
            assert masks.shape == series.shape and masks.dtype == np.uint8
            aif = pd.read_parquet(d / "aif.parquet")
            assert list(aif.columns[:3]) == ["frame", "time_s", "hu"] and len(aif) == len(series)
            assert {"aorta_ml", "lv_ml", "aif_peak_hu", "segment_frames_model_sha256"} <= set(status["record"])
        else:
            assert status["reason"].startswith("segment_frames: ")
        metrics = pd.read_parquet(results / f"validation/patients/{c}/{p}/segment_frames.parquet")
        assert {"dice", "aif_peak_rel_error"} <= set(metrics["metric"])
    for c, p in pats:
        status = read_json(results / f"patients/{c}/{p}/segment_myocardium.status.json")
        assert status["stage"] == "segment_myocardium"
        if status["status"] == "ok":
            assert status["record"]["segment_myocardium_source"] == "vbnet" and status["record"]["myocardium_ml"] > 0
