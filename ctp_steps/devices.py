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
