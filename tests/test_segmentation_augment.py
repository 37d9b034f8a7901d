"""Domain randomisation of the segmentation training crops: each transform does what its docstring says."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ctp_steps.segmentation.augment import (
    SOFT_TISSUE_HU,
    augment_gamma,
    augment_hu,
    blur,
    correlated_noise,
    lower_resolution,
    random_affine,
    rotation_matrix,
)
from ctp_steps.segmentation.config import AugmentationConfig
from ctp_steps.segmentation.train import centred_crop

OFF = AugmentationConfig(
    rotation_deg=0, scale=(1.0, 1.0), stretch=0, contrast_gain=(1.0, 1.0), offset_hu=0, gamma_probability=0,
    blur_probability=0, low_resolution_probability=0, noise_sd_hu=(0.0, 0.0), noise_correlation_max_vox=0,
)


def test_disabled_augmentation_is_the_identity():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(40, 100, size=(1, 8, 12, 12)).astype(np.float32))
    torch.testing.assert_close(augment_hu(x, rng, OFF), x)
    assert torch.equal(augment_gamma(x.clamp(-1, 1), rng, OFF), x.clamp(-1, 1))
    np.testing.assert_allclose(random_affine(rng, OFF, np.array([30.0, 40.0, 50.0])), np.eye(3), atol=1e-12)


def test_contrast_gain_pivots_on_soft_tissue():
    aug = OFF.model_copy(update={"contrast_gain": (1.5, 1.5)})
    x = torch.tensor([SOFT_TISSUE_HU, SOFT_TISSUE_HU + 100.0, -100.0]).view(1, 1, 1, 3)
    out = augment_hu(x, np.random.default_rng(1), aug).flatten().tolist()
    assert out == pytest.approx([SOFT_TISSUE_HU, SOFT_TISSUE_HU + 150.0, SOFT_TISSUE_HU - 210.0])


def test_rotation_matrices_are_rotations_and_affine_keeps_physical_angles():
    rot = rotation_matrix(np.radians([20.0, -15.0, 30.0]))
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(rot) == pytest.approx(1.0)
    # a pure rotation about z on an anisotropic crop: in mm it is orthogonal, in normalised units it is not
    aug = OFF.model_copy(update={"rotation_deg": 30.0})
    extent = np.array([100.0, 50.0, 80.0])
    a = random_affine(np.random.default_rng(3), aug, extent)
    physical = np.diag(extent / 2) @ a @ np.diag(2 / extent)
    np.testing.assert_allclose(physical @ physical.T, np.eye(3), atol=1e-12)


def test_scaling_and_stretch_stay_in_their_ranges():
    aug = OFF.model_copy(update={"scale": (0.7, 1.4), "stretch": 0.1})
    rng = np.random.default_rng(4)
    for _ in range(50):
        s = 1 / np.diag(random_affine(rng, aug, np.ones(3)))  # no rotation: the diagonal holds 1/scale
        assert np.all(s >= 0.7 * 0.9 - 1e-9) and np.all(s <= 1.4 * 1.1 + 1e-9)


def test_blur_keeps_the_mean_and_smooths():
    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.normal(0, 1, size=(1, 16, 16, 16)).astype(np.float32))
    y = blur(x, 1.0)
    assert y.shape == x.shape
    assert float(y.mean()) == pytest.approx(float(x.mean()), abs=0.02)
    assert float(y.std()) < 0.4 * float(x.std())  # a σ = 1 voxel 3-D Gaussian keeps ~1/(2√π)^{3/2} of white noise's SD


def test_correlated_noise_has_the_requested_sd_and_correlation():
    rng = np.random.default_rng(6)
    white = correlated_noise(rng, (24, 24, 24), 10.0, 0.0)
    smooth = correlated_noise(rng, (24, 24, 24), 10.0, 1.5)
    assert float(white.std()) == pytest.approx(10.0, rel=0.05) and float(smooth.std()) == pytest.approx(10.0, rel=1e-3)

    def lag1(n: torch.Tensor) -> float:
        a, b = n[..., :-1].flatten(), n[..., 1:].flatten()
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])

    assert abs(lag1(white)) < 0.05 and lag1(smooth) > 0.6


def test_lower_resolution_loses_detail_keeps_shape():
    x = torch.zeros(1, 16, 16, 16)
    x[:, :, :, ::2] = 100.0  # finest stripes: a coarser acquisition cannot keep them
    y = lower_resolution(x, 0.5)
    assert y.shape == x.shape
    assert float((y[..., 1:] - y[..., :-1]).abs().mean()) < 0.5 * float((x[..., 1:] - x[..., :-1]).abs().mean())


def test_gamma_keeps_the_window_ends():
    aug = OFF.model_copy(update={"gamma": (1.5, 1.5), "gamma_probability": 1.0})
    x = torch.tensor([-1.0, 0.0, 1.0])
    out = augment_gamma(x, np.random.default_rng(7), aug)
    assert out.tolist() == pytest.approx([-1.0, 2 * 0.5**1.5 - 1, 1.0])


def test_centred_crop_keeps_the_aim_in_the_middle_even_at_the_border():
    vol = np.arange(10 * 10 * 10).reshape(10, 10, 10)
    crop = centred_crop(vol, (0, 5, 9), (4, 4, 4))
    assert crop.shape == (4, 4, 4)
    assert crop[2, 2, 2] == vol[0, 5, 9]  # the aimed voxel sits at the crop's centre
    assert crop[0, 2, 2] == vol[0, 5, 9]  # outside the volume: edge values
    stacked = centred_crop(np.stack([vol, -vol]), (5, 5, 5), (4, 4, 4))
    assert stacked.shape == (2, 4, 4, 4) and stacked[1, 2, 2, 2] == -vol[5, 5, 5]


@pytest.mark.parametrize("field,bad", [("scale", (1.2, 0.8)), ("noise_sd_hu", (-1.0, 5.0)), ("low_resolution_zoom", (0.0, 1.0))])
def test_config_rejects_bad_ranges(field, bad):
    with pytest.raises(ValueError):
        AugmentationConfig(**{field: bad})


def test_defaults_are_generic_ranges():
    aug = AugmentationConfig()
    assert aug.rotation_deg == 30 and aug.scale == (0.7, 1.4) and aug.gamma == (0.7, 1.5)  # nnU-Net's 3-D defaults
    assert math.isclose(aug.blur_sigma_vox[1], 1.0) and aug.low_resolution_zoom == (0.5, 1.0)
