"""The study's segmentation network: VB-Net (a V-Net with bottleneck residual blocks), width configurable.

As published (../shared/seed-architectures.md, "Segmentation: VB-Net"), all 3D,
BatchNorm3d + ReLU after every convolution unless said otherwise; with
widths w = (w0, w1, w2, w3, w4), published (16, 32, 64, 128, 256):

| block  | op                                                     | channels | spatial | convs | bottleneck |
| input  | conv 3³ pad 1                                          | w0       | 1       | –     | –          |
| down1  | conv 2³ stride 2 + residual                            | w1       | 1/2     | 1     | no         |
| down2  | conv 2³ stride 2 + residual                            | w2       | 1/4     | 2     | yes        |
| down3  | conv 2³ stride 2 + residual                            | w3       | 1/8     | 3     | yes        |
| down4  | conv 2³ stride 2 + residual                            | w4       | 1/16    | 3     | yes        |
| up1    | transposed 2³ → w3, concat down3 (w3) + residual       | 2·w3     | 1/8     | 3     | yes        |
| up2    | transposed 2³ → w2, concat down2 (w2) + residual       | 2·w2     | 1/4     | 3     | yes        |
| up3    | transposed 2³ → w1, concat down1 (w1) + residual       | 2·w1     | 1/2     | 2     | no         |
| up4    | transposed 2³ → w0, concat input (w0) + residual       | 2·w0     | 1       | 1     | no         |
| output | conv 3³ → classes, BN, ReLU, conv 1³, softmax          | classes  | 1       | –     | –          |

Residual block: n convolutions, the last without activation, added to the
input, then ReLU. A bottleneck "convolution" is 1³ conv to C/4, 3³ conv at
C/4, 1³ conv back to C. Dropout (listed on the up path in the paper) is a
constructor option, off by default. `forward` returns logits (the softmax is
applied by `predict_proba` and inside the loss, which is numerically better);
any input size works: it is padded to a multiple of 16 and cropped back.

A checkpoint carries its constructor arguments and preprocessing, so it
rebuilds its own network (`load_checkpoint`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PUBLISHED_WIDTHS = (16, 32, 64, 128, 256)
MULTIPLE = 16  # four stride-2 levels


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    pad = kernel // 2 if stride == 1 else 0
    layers: list[nn.Module] = [
        nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=pad, bias=False),
        nn.BatchNorm3d(c_out),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def bottleneck_conv(channels: int, relu: bool) -> nn.Sequential:
    """1³ → C/4, 3³ at C/4, 1³ → C (the last ReLU only if `relu`)."""
    mid = max(channels // 4, 1)
    return nn.Sequential(conv_bn(channels, mid, 1), conv_bn(mid, mid, 3), conv_bn(mid, channels, 1, relu=relu))


class ResidualBlock(nn.Module):
    """n (bottleneck) convolutions, the last without ReLU, added to the input, then ReLU."""

    def __init__(self, channels: int, n_convs: int, bottleneck: bool):
        super().__init__()
        make = bottleneck_conv if bottleneck else (lambda c, relu: conv_bn(c, c, 3, relu=relu))
        self.body = nn.Sequential(*(make(channels, i < n_convs - 1) for i in range(n_convs)))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class DownBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, n_convs: int, bottleneck: bool):
        super().__init__()
        self.down = conv_bn(c_in, c_out, 2, stride=2)
        self.res = ResidualBlock(c_out, n_convs, bottleneck)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res(self.down(x))


class UpBlock(nn.Module):
    """Transposed 2³ conv to c_up, concatenation with the skip (c_skip), residual block on c_up + c_skip."""

    def __init__(self, c_in: int, c_up: int, c_skip: int, n_convs: int, bottleneck: bool, dropout: float):
        super().__init__()
        self.drop = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.Sequential(
            nn.ConvTranspose3d(c_in, c_up, 2, stride=2, bias=False), nn.BatchNorm3d(c_up), nn.ReLU(inplace=True)
        )
        self.res = ResidualBlock(c_up + c_skip, n_convs, bottleneck)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.res(torch.cat([self.up(self.drop(x)), skip], dim=1))


class VBNet(nn.Module):
    """(N, in_channels, D, H, W) → (N, num_classes, D, H, W) logits."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        widths: tuple[int, int, int, int, int] | list[int] = PUBLISHED_WIDTHS,
        dropout: float = 0.0,
    ):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 5 or min(widths) < 1 or in_channels < 1 or num_classes < 2:
            raise ValueError("VBNet needs 5 positive widths, in_channels ≥ 1 and num_classes ≥ 2")
        if not 0 <= dropout < 1:
            raise ValueError("dropout must lie in [0, 1)")
        self.kwargs = {"in_channels": in_channels, "num_classes": num_classes, "widths": list(widths), "dropout": dropout}
        w0, w1, w2, w3, w4 = widths
        self.inp = conv_bn(in_channels, w0, 3)
        self.down1 = DownBlock(w0, w1, 1, bottleneck=False)
        self.down2 = DownBlock(w1, w2, 2, bottleneck=True)
        self.down3 = DownBlock(w2, w3, 3, bottleneck=True)
        self.down4 = DownBlock(w3, w4, 3, bottleneck=True)
        self.up1 = UpBlock(w4, w3, w3, 3, bottleneck=True, dropout=dropout)
        self.up2 = UpBlock(2 * w3, w2, w2, 3, bottleneck=True, dropout=dropout)
        self.up3 = UpBlock(2 * w2, w1, w1, 2, bottleneck=False, dropout=dropout)
        self.up4 = UpBlock(2 * w1, w0, w0, 1, bottleneck=False, dropout=dropout)
        self.out = nn.Sequential(conv_bn(2 * w0, num_classes, 3), nn.Conv3d(num_classes, num_classes, 1))
        for m in self.modules():
            if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        pad = [p for s in reversed(size) for p in (0, (-s) % MULTIPLE)]
        if any(pad):
            x = F.pad(x, pad, mode="replicate")
        x0 = self.inp(x)
        x1 = self.down1(x0)
        x2 = self.down2(x1)
        x3 = self.down3(x2)
        x4 = self.down4(x3)
        y = self.up4(self.up3(self.up2(self.up1(x4, x3), x2), x1), x0)
        y = self.out(y)
        return y[:, :, : size[0], : size[1], : size[2]]

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self(x).float(), dim=1)


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def save_checkpoint(path: str | Path, net: VBNet, meta: dict, half: bool = True) -> None:
    """Weights (fp16 by default, to ship small) + constructor kwargs + preprocessing/training metadata."""
    from ctp_steps.io import atomic_path

    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu() for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"kwargs": dict(net.kwargs), "state_dict": state, "meta": meta}, tmp)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[VBNet, dict]:
    """The network the checkpoint describes (fp32, eval mode, on `device`) and its metadata."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    net = VBNet(**ckpt["kwargs"])
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()})
    return net.to(device).eval(), ckpt["meta"]
