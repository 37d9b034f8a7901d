"""The study's landmark detection net (heatmap regression), with a width option.

As published (../shared/seed-architectures.md, "Landmark detection net"), all
3D, BatchNorm3d + ReLU after every convolution unless said otherwise:

| block  | op                                                             | channels | spatial |
| input  | conv 3³ pad 1                                                  | w        | 1       |
| down1  | conv 2³ stride 2, + residual block (1 conv)                    | 2w       | 1/2     |
| down2  | conv 2³ stride 2, + residual block (2 convs)                   | 4w       | 1/4     |
| up1    | transposed 2³ → 2w, concat down1 (2w) → residual (2 convs)     | 4w       | 1/2     |
| up2    | transposed 2³ → w, concat input (w) → residual (1 conv)        | 2w       | 1       |
| output | conv 3³ → H, BN, ReLU, conv 1³ → K                             | K        | 1       |

w = 16 is the published width; `width` selects a narrower (CPU) variant.
H = K as published (`head_channels=None`); a wider H lets the last 1³
convolution mix more than K rectified maps.
The published output ends in a softmax over background + landmark classes
trained with a focal loss; here the K outputs are Gaussian heatmaps regressed
directly (the equivalent modern formulation the architecture notes allow), so
the last 1³ convolution stays linear. Residual block: n 3³ convolutions, the
last without activation, added to the input, then ReLU. Input sizes must be
multiples of 4.

A checkpoint carries its constructor arguments and preprocessing, so it
rebuilds its own network (`load_checkpoint`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, relu: bool = True) -> nn.Sequential:
    pad = kernel // 2 if stride == 1 else 0
    layers: list[nn.Module] = [nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=pad, bias=False), nn.BatchNorm3d(c_out)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """n 3³ conv-BN(-ReLU) layers, the last without ReLU, added to the input, then ReLU."""

    def __init__(self, channels: int, n_convs: int):
        super().__init__()
        self.body = nn.Sequential(
            *(conv_bn_relu(channels, channels, relu=i < n_convs - 1) for i in range(n_convs))
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class DownBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, n_convs: int):
        super().__init__()
        self.down = conv_bn_relu(c_in, c_out, kernel=2, stride=2)
        self.res = ResidualBlock(c_out, n_convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res(self.down(x))


class UpBlock(nn.Module):
    """Transposed 2³ conv to c_up, concatenation with the skip (c_skip), residual block."""

    def __init__(self, c_in: int, c_up: int, c_skip: int, n_convs: int):
        super().__init__()
        self.up = nn.Sequential(
            nn.ConvTranspose3d(c_in, c_up, 2, stride=2, bias=False), nn.BatchNorm3d(c_up), nn.ReLU(inplace=True)
        )
        self.res = ResidualBlock(c_up + c_skip, n_convs)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.res(torch.cat([self.up(x), skip], dim=1))


class LandmarkNet(nn.Module):
    """(N, in_channels, D, H, W) → (N, n_landmarks, D, H, W) heatmaps."""

    def __init__(self, in_channels: int = 1, n_landmarks: int = 3, width: int = 16, head_channels: int | None = None):
        super().__init__()
        if width < 1 or in_channels < 1 or n_landmarks < 1:
            raise ValueError("in_channels, n_landmarks and width must be positive")
        head = head_channels or n_landmarks
        self.kwargs = {"in_channels": in_channels, "n_landmarks": n_landmarks, "width": width, "head_channels": head}
        w = width
        self.inp = conv_bn_relu(in_channels, w)
        self.down1 = DownBlock(w, 2 * w, 1)
        self.down2 = DownBlock(2 * w, 4 * w, 2)
        self.up1 = UpBlock(4 * w, 2 * w, 2 * w, 2)
        self.up2 = UpBlock(4 * w, w, w, 1)
        self.out = nn.Sequential(
            conv_bn_relu(2 * w, head), nn.Conv3d(head, n_landmarks, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(s % 4 for s in x.shape[2:]):
            raise ValueError(f"input size {tuple(x.shape[2:])} must be a multiple of 4 per axis")
        x0 = self.inp(x)
        x1 = self.down1(x0)
        x2 = self.down2(x1)
        return self.out(self.up2(self.up1(x2, x1), x0))


def save_checkpoint(path: str | Path, net: LandmarkNet, meta: dict, half: bool = True) -> None:
    """Weights (fp16 by default, to ship small) + constructor kwargs + preprocessing/training metadata."""
    from ctp_steps.io import atomic_path

    state = {k: (v.half() if half and v.is_floating_point() else v).cpu() for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"kwargs": dict(net.kwargs), "state_dict": state, "meta": meta}, tmp)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[LandmarkNet, dict]:
    """The network the checkpoint describes (fp32, eval mode, on `device`) and its metadata."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    net = LandmarkNet(**ckpt["kwargs"])
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()})
    return net.to(device).eval(), ckpt["meta"]
