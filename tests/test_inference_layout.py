"""The shipped nets give the same answers in the channels-last layout their inference now uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ctp_steps.devices import for_inference
from ctp_steps.registration.net import load_checkpoint as load_regnet
from ctp_steps.segmentation.infer import load_model, predict

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def phantom_frames():
    """Six frames of one phantom patient on the default grid, with their geometry."""
    from ctp_steps.phantom import PhantomParams, generate_patient, make_specs

    (spec,) = make_specs(1, [("c1", "series_per_frame")], seed=5, role="test")
    patient = generate_patient(spec, PhantomParams(n_frames=(6, 6)))
    return patient.frames_hu, tuple(patient.geometry.spacing[::-1])


def test_for_inference_puts_weights_channels_last_in_eval_mode():
    net = load_model(REPO / "models" / "vbnet_frames.pt", torch.device("cpu")).net
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv3d))
    assert not net.training
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert not conv.weight.is_contiguous()


def test_frames_net_labels_identical_in_both_layouts(phantom_frames):
    model = load_model(REPO / "models" / "vbnet_frames.pt", torch.device("cpu"))
    series, spacing = phantom_frames
    fast = predict(model, series, spacing)
    model.net.to(memory_format=torch.contiguous_format)  # the layout before this change
    reference = predict(model, series, spacing)
    assert fast.shape == reference.shape == series.shape
    assert (reference == 1).sum() > 100 and (reference == 2).sum() > 1000  # aorta and LV found: a real comparison
    assert np.array_equal(fast, reference)


def test_registration_net_field_same_to_float_rounding():
    net, grid, _ = load_regnet(REPO / "models" / "regnet.pt", torch.device("cpu"))
    n = grid["input_size"]
    x = torch.randn(2, 4, n, n, n, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = net(x)
        fast = for_inference(net, torch.device("cpu"))(x)
    scale = reference.abs().max().item()
    assert scale > 0
    assert (fast - reference).abs().max().item() <= 1e-5 * max(scale, 1.0)
