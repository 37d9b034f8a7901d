"""Landmark detection on one patient: LV crop → heatmaps → landmarks in world mm with confidences.

The detector is built once per job from a checkpoint that carries its own
preprocessing (crop size, margin, input channels, decoding radius), so the
stage's config never has to repeat training-time choices. One code path for
CPU and CUDA (autocast only on CUDA).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ctp_steps.devices import for_inference
from ctp_steps.landmarks.crop import crop_channels, crop_zyx_to_world, lv_crop_geometry
from ctp_steps.landmarks.heatmaps import decode
from ctp_steps.landmarks.net import LandmarkNet, load_checkpoint
from ctp_steps.types import Geometry


@dataclass(frozen=True)
class Detection:
    names: tuple[str, ...]
    world_mm: np.ndarray  # (K, 3)
    confidence: np.ndarray  # (K,)
    crop: Geometry

    def as_json(self) -> dict:
        return {
            name: {"world_mm": [float(v) for v in self.world_mm[i]], "confidence": float(self.confidence[i])}
            for i, name in enumerate(self.names)
        }


class LandmarkDetector:
    def __init__(self, net: LandmarkNet, meta: dict, device: torch.device):
        self.net, self.meta, self.device = for_inference(net, device), meta, device
        self.names = tuple(meta["landmarks"])
        self.size = int(meta["crop_size"])

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: torch.device) -> "LandmarkDetector":
        net, meta = load_checkpoint(path, device)
        return cls(net, meta, device)

    def crop_of(self, mask_zyx: np.ndarray, geometry: Geometry) -> Geometry:
        return lv_crop_geometry(mask_zyx, geometry, self.size, float(self.meta["crop_margin_mm"]))

    @torch.no_grad()
    def detect(
        self, image_zyx: np.ndarray, mask_zyx: np.ndarray, geometry: Geometry, crop: Geometry | None = None
    ) -> Detection:
        crop = crop or self.crop_of(mask_zyx, geometry)
        x = crop_channels(image_zyx, mask_zyx, geometry, crop, self.size, bool(self.meta["input_mask"]))
        inp = torch.from_numpy(x)[None].to(self.device)
        amp = torch.autocast("cuda", dtype=torch.float16) if self.device.type == "cuda" else nullcontext()
        with amp:
            logits = self.net(inp)[0]
        points, conf = decode(logits.float(), float(self.meta["decode_radius_vox"]))
        return Detection(self.names, crop_zyx_to_world(points, crop), conf, crop)
