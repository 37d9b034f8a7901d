"""Diagnostics on failure (issue 18, item 5): a stage that excludes a patient still writes its QC figure.

Each stage runs through `ctp-steps run`'s path (`commands.stage.run_stage`: the rule's named files, the
per-patient failure contract) on tiny inputs made to fail its checks; the status must say `excluded` with the
stage's reason, and the QC PNG must be a real figure, not the empty placeholder of the other outputs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ctp_steps.cli import run_patient_stage
from ctp_steps.commands.stage import run_stage
from ctp_steps.io import read_json, write_json, write_volume
from ctp_steps.stages import Context
from ctp_steps.types import PatientInputError, UpstreamExcluded

from test_landmarks import TINY_TRAINING, tiny_cases  # noqa: F401 - fixture
from test_registration import _masks, _write_inputs, tiny_patient, tiny_weights  # noqa: F401 - fixtures
from test_segmentation import _background_only, _ship_tiny, _tiny_patient

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def assert_figure(path: Path, min_bytes: int = 5_000) -> np.ndarray:
    """A valid, non-trivial PNG: signature, size, and pixels that are not one flat colour."""
    import matplotlib.image as mpimg

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG ({len(data)} bytes)"
    assert len(data) > min_bytes, f"{path.name}: only {len(data)} bytes"
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and min(pixels.shape[:2]) > 100 and float(pixels[..., :3].std()) > 0.02
    return pixels


def upstream_ok(folder: Path, stage: str) -> Path:
    path = folder / f"{stage}.status.json"
    write_json(path, {"stage": stage, "status": "ok", "reason": None, "record": {}})
    return path


def _run(stage: str, implementation: str, inputs: dict, outputs: dict, config: str, manifest: Path | None) -> dict:
    files = {"input": {k: str(v) for k, v in inputs.items()}, "output": {k: str(v) for k, v in outputs.items()}}
    run_stage(stage, files, config, Context(implementation, "cpu", title="CTR-T/P001", models_manifest=manifest))
    return read_json(Path(outputs["status"]))


# ---------------------------------------------------------------- the contract (cli.py)


def test_the_diagnostic_replaces_only_the_figure_placeholder(tmp_path):
    outputs = [tmp_path / "a.nii.gz", tmp_path / "fig.png"]
    drawn = []

    def work():
        raise PatientInputError(f"{tmp_path}/x.nii.gz: nothing there",
                                diagnostic=lambda png, reason: (drawn.append(reason), png.write_bytes(b"figure")))

    run_patient_stage("landmarks", tmp_path / "landmarks.status.json", outputs, [], work)
    status = read_json(tmp_path / "landmarks.status.json")
    assert status["status"] == "excluded" and drawn == [status["reason"]]  # titled with the stored reason
    assert str(tmp_path) not in drawn[0] and "x.nii.gz: nothing there" in drawn[0]  # scrubbed: no absolute path
    assert (tmp_path / "fig.png").read_bytes() == b"figure" and (tmp_path / "a.nii.gz").stat().st_size == 0


def test_a_broken_diagnostic_keeps_the_exclusion_and_the_placeholder(tmp_path):
    png = tmp_path / "fig.png"

    def broken(out, reason):
        out.write_bytes(b"half")
        raise RuntimeError("no display")

    run_patient_stage("landmarks", tmp_path / "s.status.json", [png], [],
                      lambda: (_ for _ in ()).throw(PatientInputError("bad mask", diagnostic=broken)))
    assert read_json(tmp_path / "s.status.json")["status"] == "excluded" and png.stat().st_size == 0
    # an upstream exclusion saw nothing: no figure, whatever the error carries
    run_patient_stage("landmarks", tmp_path / "u.status.json", [png], [],
                      lambda: (_ for _ in ()).throw(UpstreamExcluded("earlier", "excluded")))
    assert png.stat().st_size == 0


# ---------------------------------------------------------------- registration


def _register_files(folder: Path) -> dict:
    return {name: folder / file for name, file in (
        ("registered", "registered.nii.gz"), ("average", "average.nii.gz"), ("fields", "displacement_mm.nii.gz"),
        ("masks", "registered_masks.nii.gz"), ("qc", "registration_qc.json"), ("png", "registration.png"),
        ("status", "register.status.json"))}


def test_registration_failing_its_qc_keeps_the_frames_and_their_dice(tiny_patient, tiny_weights, tmp_path):
    series, masks = _write_inputs(tiny_patient, tmp_path)
    shutil.copyfile(tiny_weights, tmp_path / "regnet.pt")
    from ctp_steps.models import register_model

    register_model("regnet", tmp_path / "regnet.pt", {}, tmp_path / "manifest.json")
    inputs = {"upstream": tmp_path / "segment_frames.status.json", "series": series, "frame_masks": masks,
              "weights": tmp_path / "regnet.pt"}
    outputs = _register_files(tmp_path)
    config = json.dumps({"min_lv_dice_after": 0.999, "fallback": "none", "reference_frame": "first"})
    status = _run("register", "learned", inputs, outputs, config, tmp_path / "manifest.json")
    assert status["status"] == "excluded", status
    assert status["reason"].startswith("register: frame(s) [") and "after learned registration" in status["reason"]
    assert (tmp_path / "registered.nii.gz").stat().st_size == 0  # the other outputs stay placeholders
    excluded = assert_figure(outputs["png"])
    # before and after rows: taller than the one-row figure of a patient excluded before registering
    masks_arr = _masks(tiny_patient)
    masks_arr[3][masks_arr[3] == 2] = 0
    _write_inputs(tiny_patient, tmp_path / "nolv", masks_arr)
    inputs = {"upstream": tmp_path / "nolv" / "segment_frames.status.json", "series": tmp_path / "nolv" / "series.nii.gz",
              "frame_masks": tmp_path / "nolv" / "frame_masks.nii.gz"}
    status = _run("register", "none", inputs, _register_files(tmp_path / "nolv"), "{}", None)
    assert status["status"] == "excluded" and "no LV blood pool in frame(s) [3]" in status["reason"]
    before_only = assert_figure(tmp_path / "nolv" / "registration.png")
    assert excluded.shape[0] > 1.5 * before_only.shape[0]


def test_registered_patient_gets_the_figure_too(tiny_patient, tmp_path):
    series, masks = _write_inputs(tiny_patient, tmp_path)
    inputs = {"upstream": tmp_path / "segment_frames.status.json", "series": series, "frame_masks": masks}
    status = _run("register", "none", inputs, _register_files(tmp_path), "{}", None)
    assert status["status"] == "ok", status
    assert_figure(tmp_path / "registration.png")


# ---------------------------------------------------------------- landmarks


@pytest.fixture(scope="module")
def untrained_landmark_net(tmp_path_factory) -> Path:
    """A fresh, untrained landmark net: its heatmaps are flat, so every landmark is unsure."""
    from ctp_steps.landmarks.net import LandmarkNet, save_checkpoint
    from ctp_steps.landmarks.train import checkpoint_meta
    from ctp_steps.models import register_model

    models = tmp_path_factory.mktemp("lm")
    torch.manual_seed(0)
    cfg = TINY_TRAINING
    net = LandmarkNet(in_channels=2, n_landmarks=3, width=cfg.width, head_channels=cfg.head_channels).eval()
    save_checkpoint(models / "lm.pt", net, checkpoint_meta(cfg))
    register_model("lm", models / "lm.pt", {"test": True}, manifest=models / "manifest.json")
    return models


def test_landmarks_exclusion_shows_heatmaps_candidates_and_the_fallback(tiny_cases, untrained_landmark_net, tmp_path):
    from ctp_steps.landmarks.config import LandmarkConfig

    case, models = tiny_cases[0], untrained_landmark_net
    write_volume(tmp_path / "average.nii.gz", case.image, case.geometry)
    write_volume(tmp_path / "myocardium.nii.gz", case.mask, case.geometry)
    write_volume(tmp_path / "empty.nii.gz", np.zeros_like(case.mask), case.geometry)

    def run(cfg: LandmarkConfig, myocardium: str, out: Path) -> dict:
        inputs = {"upstream": upstream_ok(tmp_path, "segment_myocardium"), "average": tmp_path / "average.nii.gz",
                  "myocardium": tmp_path / myocardium, "weights": models / "lm.pt"}
        outputs = {"landmarks": out / "landmarks.json", "aha": out / "aha17.nii.gz", "png": out / "landmarks.png",
                   "status": out / "landmarks.status.json"}
        config = cfg.model_copy(update={"model": "lm"}).model_dump_json(exclude={"training"})
        return _run("landmarks", "heatmap", inputs, outputs, config, models / "manifest.json")

    # the net unsure and the geometric fallback's landmarks implausible: both attempts are in the figure
    status = run(LandmarkConfig(min_confidence=1.0, min_long_axis_mm=500.0), "myocardium.nii.gz", tmp_path / "a")
    assert status["status"] == "excluded"
    assert status["reason"].startswith("landmarks: average.nii.gz: heatmap: landmark apex not found (confidence ")
    assert "; geometric: " in status["reason"]
    assert (tmp_path / "a" / "aha17.nii.gz").stat().st_size == 0
    heatmaps = assert_figure(tmp_path / "a" / "landmarks.png", min_bytes=20_000)
    # no fallback: the heatmaps and the candidates alone
    status = run(LandmarkConfig(min_confidence=1.0, fallback="none"), "myocardium.nii.gz", tmp_path / "b")
    assert status["status"] == "excluded" and "< 1.00" in status["reason"] and "geometric" not in status["reason"]
    assert_figure(tmp_path / "b" / "landmarks.png", min_bytes=20_000)
    # an empty myocardium: no detection, the average with the (empty) mask, one row of slices
    status = run(LandmarkConfig(), "empty.nii.gz", tmp_path / "c")
    assert status["status"] == "excluded" and "myocardium mask has 0 voxels" in status["reason"]
    slices = assert_figure(tmp_path / "c" / "landmarks.png")
    assert heatmaps.shape[0] > 2 * slices.shape[0]  # one row per landmark vs one row of slices


# ---------------------------------------------------------------- segmentation


def test_segmentation_exclusions_keep_the_overlays(tmp_path):
    from ctp_steps.segmentation import segment_frames, segment_myocardium
    from ctp_steps.segmentation.config import SegmentationConfig

    models = tmp_path / "models"
    frames_w = _ship_tiny(models, "vbnet_frames", _background_only(3))
    myo_w = _ship_tiny(models, "vbnet_myocardium", _background_only(2))
    series, frames = _tiny_patient(tmp_path)
    config = SegmentationConfig().model_dump_json(exclude={"network", "training"})
    assert {"png"} <= {f for f in segment_frames.Outputs.__dataclass_fields__}

    inputs = {"upstream": upstream_ok(tmp_path, "convert"), "series": series, "frames": frames, "weights": frames_w}
    outputs = {"frame_masks": tmp_path / "frame_masks.nii.gz", "aif": tmp_path / "aif.parquet",
               "png": tmp_path / "segment_frames.png", "status": tmp_path / "segment_frames.status.json"}
    status = _run("segment_frames", "vbnet", inputs, outputs, config, models / "manifest.json")
    assert status["status"] == "excluded" and "implausible aorta mask in frame 0: empty" in status["reason"]
    assert (tmp_path / "frame_masks.nii.gz").stat().st_size == 0
    assert_figure(tmp_path / "segment_frames.png")

    write_volume(tmp_path / "average.nii.gz", np.full((16, 40, 40), 40.0, dtype=np.float32), _tiny_geometry(series))
    inputs = {"upstream": upstream_ok(tmp_path, "register"), "average": tmp_path / "average.nii.gz", "weights": myo_w}
    outputs = {"myocardium": tmp_path / "myocardium.nii.gz", "png": tmp_path / "segment_myocardium.png",
               "status": tmp_path / "segment_myocardium.status.json"}
    status = _run("segment_myocardium", "vbnet", inputs, outputs, config, models / "manifest.json")
    assert status["status"] == "excluded" and "implausible myocardium mask: empty" in status["reason"]
    assert_figure(tmp_path / "segment_myocardium.png", min_bytes=3_000)
    assert segment_myocardium.Outputs.__dataclass_fields__["png"].default is None  # rules may leave it out


def _tiny_geometry(series: Path):
    from ctp_steps.io import read_series

    return read_series(series)[1]
