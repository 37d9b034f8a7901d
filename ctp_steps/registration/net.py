"""The study's registration net (VoxelMorph-style U-Net with valid convolutions), width configurable.

Input: 4 channels (fixed image, moving image, fixed LV mask, moving LV mask) on a
cubic grid of N³ voxels; output: a 3-channel displacement field (voxels along
x, y, z of that grid) on its central (N − 40)³ voxels. With the published widths
(128, 256, 512) and N = 100 this is the published 100³ → 60³ network.

Checkpoints rebuild their own network: they hold the constructor kwargs and the
grid the net was trained on (spacing, sizes, intensity scaling).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

MARGIN = 20  # voxels lost on each side by the valid convolutions


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(c_in, c_out, 3), nn.BatchNorm3d(c_out), nn.ReLU(inplace=True))


def _up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose3d(c_in, c_out, 2, stride=2), nn.BatchNorm3d(c_out), nn.ReLU(inplace=True))


def _centre_crop(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    slices = [slice((n - m) // 2, (n - m) // 2 + m) for n, m in zip(x.shape[2:], size)]
    return x[(slice(None), slice(None), *slices)]


def output_size_for(input_size: int) -> int:
    """Edge of the field for an input edge (input must be ≡ 0 mod 4 and ≥ 48)."""
    if input_size % 4 or input_size < 48:
        raise ValueError(f"input size {input_size}: must be a multiple of 4 and at least 48")
    return input_size - 2 * MARGIN


class RegNet(nn.Module):
    """conv1-2 → pool → conv4-5 → pool → conv7-8 → deconv9 ⊕ conv5 → conv10-11 → deconv12 ⊕ conv2 → conv13 → conv14."""

    def __init__(self, widths: tuple[int, int, int] = (8, 16, 32), in_channels: int = 4):
        super().__init__()
        c1, c2, c3 = (int(w) for w in widths)
        self.widths = (c1, c2, c3)
        self.in_channels = in_channels
        self.enc1 = nn.Sequential(_conv(in_channels, c1), _conv(c1, c1))
        self.enc2 = nn.Sequential(_conv(c1, c2), _conv(c2, c2))
        self.enc3 = nn.Sequential(_conv(c2, c3), _conv(c3, c3))
        self.pool = nn.MaxPool3d(2)
        self.up9 = _up(c3, c2)
        self.dec10 = nn.Sequential(_conv(2 * c2, c2), _conv(c2, c2))
        self.up12 = _up(c2, c1)
        self.dec13 = _conv(2 * c1, c1)
        self.flow = nn.Conv3d(c1, 3, 3)
        # start at the identity transform (as VoxelMorph does)
        nn.init.normal_(self.flow.weight, std=1e-5)
        nn.init.zeros_(self.flow.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.enc1(x)
        s2 = self.enc2(self.pool(s1))
        y = self.enc3(self.pool(s2))
        y = self.up9(y)
        y = self.dec10(torch.cat([y, _centre_crop(s2, y.shape[2:])], dim=1))
        y = self.up12(y)
        y = self.dec13(torch.cat([y, _centre_crop(s1, y.shape[2:])], dim=1))
        return self.flow(y)

    def constructor_kwargs(self) -> dict:
        return {"widths": list(self.widths), "in_channels": self.in_channels}


def save_checkpoint(path: Path, net: RegNet, grid: dict, info: dict, fp16: bool = True) -> None:
    """Weights (optionally fp16) + constructor kwargs + the training grid; rebuilds itself with `load_checkpoint`."""
    from ctp_steps.io import atomic_path

    state = {k: (v.half() if fp16 and v.is_floating_point() else v).cpu() for k, v in net.state_dict().items()}
    payload = {"format": "ctp_regnet/1", "kwargs": net.constructor_kwargs(), "grid": grid, "info": info, "state_dict": state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path, device: torch.device) -> tuple[RegNet, dict, dict]:
    """(network in eval mode on `device`, training grid, training info) from a checkpoint."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != "ctp_regnet/1":
        raise ValueError(f"{path}: not a registration-net checkpoint (format {payload.get('format')!r})")
    net = RegNet(**payload["kwargs"])
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()})
    return net.to(device).eval(), payload["grid"], payload.get("info", {})
