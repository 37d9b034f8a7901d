"""Inference: a checkpoint's VB-Net on a whole series or volume, on CPU or CUDA from one code path.

Frames are batched, weights are loaded once per job (`load_model`), the input
is resampled to the network's spacing and the class probabilities back to the
input grid before the arg-max, so any scanner grid works. Mixed precision
(float16 autocast) is used on CUDA only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ctp_steps.devices import for_inference
from ctp_steps.segmentation.preprocess import (
    in_channels,
    needs_resampling,
    normalize_hu,
    resample,
    resampled_size,
)
from ctp_steps.segmentation.vbnet import VBNet, load_checkpoint
from ctp_steps.tensors import channel_argmax


@dataclass
class LoadedModel:
    net: VBNet
    meta: dict
    device: torch.device

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return tuple(self.meta["spacing_zyx_mm"])

    @property
    def window(self) -> tuple[float, float]:
        return tuple(self.meta["hu_window"])

    @property
    def context(self) -> str:
        return self.meta.get("context", "none")


def load_model(path: str | Path, device: torch.device) -> LoadedModel:
    net, meta = load_checkpoint(path, device)
    expected = in_channels(meta.get("context", "none"))
    if net.kwargs["in_channels"] != expected:
        raise ValueError(f"{path}: network has {net.kwargs['in_channels']} input channels, its context needs {expected}")
    return LoadedModel(for_inference(net, device), meta, device)


def _autocast(device: torch.device, amp: bool):
    return torch.autocast("cuda", dtype=torch.float16, enabled=amp and device.type == "cuda")


def predict(
    model: LoadedModel,
    volumes_hu: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    batch_size: int = 4,
    amp: bool = True,
) -> np.ndarray:
    """(t, z, y, x) HU (one or more volumes of one patient) → (t, z, y, x) uint8 arg-max labels.

    With context `temporal_max` the volumes are the frames of one series and
    each frame also sees the series' voxelwise maximum.
    """
    device, net = model.device, model.net
    t, *shape = volumes_hu.shape
    resize = needs_resampling(spacing_zyx, model.spacing_zyx)
    net_size = resampled_size(shape, spacing_zyx, model.spacing_zyx) if resize else tuple(shape)
    batches = [range(i, min(i + batch_size, t)) for i in range(0, t, batch_size)]

    def net_grid(idx: range) -> torch.Tensor:
        hu = torch.from_numpy(np.ascontiguousarray(volumes_hu[idx.start : idx.stop])).to(device)
        return resample(normalize_hu(hu, model.window)[:, None], net_size)

    inputs = [net_grid(b) for b in batches]  # small: the network grid
    context = None
    if model.context == "temporal_max":
        context = torch.stack([x.amax(dim=0) for x in inputs]).amax(dim=0, keepdim=True)
    out = np.empty((t, *shape), dtype=np.uint8)
    with torch.inference_mode():
        for b, x in zip(batches, inputs):
            if context is not None:
                x = torch.cat([x, context.expand_as(x)], dim=1)
            with _autocast(device, amp):
                logits = net(x)
            proba = torch.softmax(logits.float(), dim=1)
            proba = resample(proba, tuple(shape))
            out[b.start : b.stop] = channel_argmax(proba).to(torch.uint8).cpu().numpy()
    return out
