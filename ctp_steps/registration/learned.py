"""Learned registration: the net aligns each moving frame's LV box to the reference frame's, in batches."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from ctp_steps.registration.crop import BoxField, box_geometries, crop_frames
from ctp_steps.devices import for_inference
from ctp_steps.devices import resolve_device  # noqa: F401 (re-exported: the stage and the benchmark use it)
from ctp_steps.registration.net import MARGIN, RegNet, load_checkpoint
from ctp_steps.types import Geometry


def normalise(hu: torch.Tensor, grid: dict) -> torch.Tensor:
    """Network intensities: HU / scale, clipped."""
    return (hu / grid["intensity_scale_hu"]).clamp(-grid["intensity_clip"], grid["intensity_clip"])


class LearnedRegistrar:
    """Holds the net (loaded once per job) and registers the frames of one patient at a time."""

    def __init__(self, net: RegNet, grid: dict, device: torch.device, batch: int = 4):
        self.net, self.grid, self.device, self.batch = for_inference(net, device), grid, device, batch

    @classmethod
    def from_checkpoint(cls, path: Path, device: torch.device, batch: int = 4) -> "LearnedRegistrar":
        net, grid, _ = load_checkpoint(path, device)
        check_grid(grid, path)
        return cls(net, grid, device, batch)

    @torch.no_grad()
    def register(
        self,
        frames: np.ndarray,
        lv_masks: np.ndarray,
        geometry: Geometry,
        reference: int,
        centroids: np.ndarray,
    ) -> list[BoxField | None]:
        """One BoxField per frame (None for the reference), frames (t, z, y, x) HU, LV masks bool."""
        n_in, n_out, s = self.grid["input_size"], self.grid["output_size"], self.grid["spacing_mm"]
        box_in, box_out = box_geometries(centroids[reference], n_in, n_out, s)
        fixed = crop_frames(frames[reference : reference + 1], geometry, box_in, n_in, np.zeros((1, 3)), self.device)
        fixed_mask = crop_frames(lv_masks[reference : reference + 1], geometry, box_in, n_in, np.zeros((1, 3)), self.device)
        fixed = normalise(fixed, self.grid)
        moving_idx = [k for k in range(len(frames)) if k != reference]
        out: list[BoxField | None] = [None] * len(frames)
        amp = torch.autocast("cuda", dtype=torch.float16) if self.device.type == "cuda" else nullcontext()
        for start in range(0, len(moving_idx), self.batch):
            ks = moving_idx[start : start + self.batch]
            shifts = centroids[ks] - centroids[reference]
            moving = normalise(crop_frames(frames[ks], geometry, box_in, n_in, shifts, self.device), self.grid)
            moving_mask = crop_frames(lv_masks[ks], geometry, box_in, n_in, shifts, self.device)
            b = len(ks)
            x = torch.cat(
                [fixed.expand(b, -1, -1, -1, -1), moving, fixed_mask.expand(b, -1, -1, -1, -1), moving_mask], dim=1
            )
            with amp:
                v = self.net(x).float()  # (b, 3, M, M, M) voxels along x, y, z of the LPS-aligned box
            field = (v * s).permute(0, 2, 3, 4, 1).cpu().numpy()
            for j, k in enumerate(ks):
                out[k] = BoxField(shifts[j], field[j] + shifts[j].astype(np.float32), box_out)
        return out


def check_grid(grid: dict, path: Path) -> None:
    if grid["input_size"] - grid["output_size"] != 2 * MARGIN:
        raise ValueError(f"{path}: checkpoint grid {grid}: input and output sizes must differ by {2 * MARGIN}")
