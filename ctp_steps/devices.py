"""The torch device of the numeric stages, from the pipeline-wide `device` key."""

from __future__ import annotations

import torch


def resolve_device(device: str) -> torch.device:
    """`auto` → CUDA when available, else CPU; `cuda` without a GPU is an error, never a silent fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config device is `cuda` but torch sees no CUDA device")
    return torch.device(device)


def for_inference(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`net` in eval mode on `device`, its weights in channels-last 3D layout.

    oneDNN's 3D convolutions run ~1.4× faster on CPU when the weights are channels-last (the activations follow
    the weights' layout); the sums are the same up to float rounding (BENCHMARKS.md, "Main job").
    Inference only: training keeps the default layout.
    """
    return net.to(device=device, memory_format=torch.channels_last_3d).eval()
