"""Training of the landmark net on phantom cases (the `train` target; never part of a normal run).

Each step draws `batch_size` random training cases and crops them with random
augmentation: the crop cube is shifted (±8 mm), scaled (`size_jitter`) and
rotated (up to `rotation_deg` about a random axis) about the myocardium box, the
myocardium mask is sometimes eroded or dilated by one voxel (segmentation
error), HU get a contrast gain about soft tissue (`contrast_gain`), an offset,
blur and noise. Targets are Gaussian kernels at the true landmarks in crop
voxels (`heatmaps`). Every `val_every` steps the validation cases are detected
exactly as the stage does (`infer.LandmarkDetector`); the weights with the
lowest mean landmark error are kept.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ctp_steps.aha import aha_segment_map
from ctp_steps.landmarks.config import LandmarkTrainingConfig
from ctp_steps.landmarks.crop import crop_channels, crop_geometry, mask_box_mm, world_to_crop_zyx
from ctp_steps.landmarks.data import LANDMARKS, Case
from ctp_steps.landmarks.heatmaps import gaussian_targets, heatmap_loss
from ctp_steps.landmarks.infer import LandmarkDetector
from ctp_steps.landmarks.net import LandmarkNet

log = logging.getLogger(__name__)

SHIFT_MM = 8.0
SOFT_TISSUE_HU = 40.0  # pivot of the contrast gain: unenhanced blood and muscle sit near it


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    a = np.radians(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)


def training_sample(
    case: Case, cfg: LandmarkTrainingConfig, rng: np.random.Generator, augment: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Network input (C, S, S, S) and landmark crop indices (K, 3) of one (augmented) crop."""
    size = cfg.crop_size
    center, extent = mask_box_mm(case.mask, case.geometry)
    side = float(extent.max()) + 2.0 * cfg.crop_margin_mm
    direction = case.geometry.direction_matrix
    image, mask = case.image, case.mask
    if augment:
        center = center + rng.uniform(-SHIFT_MM, SHIFT_MM, size=3)
        side *= rng.uniform(1 - cfg.size_jitter, 1 + cfg.size_jitter)
        direction = _rotation(rng, cfg.rotation_deg) @ direction
        op = rng.choice(["none", "erode", "dilate"], p=[0.6, 0.2, 0.2])
        if op == "erode":
            eroded = ndimage.binary_erosion(mask)
            mask = eroded.astype(np.uint8) if eroded.any() else mask
        elif op == "dilate":
            mask = ndimage.binary_dilation(mask).astype(np.uint8)
        image = SOFT_TISSUE_HU + rng.uniform(*cfg.contrast_gain) * (image - SOFT_TISSUE_HU) + rng.uniform(-20.0, 20.0)
    crop = crop_geometry(center, side, size, direction)
    x = crop_channels(image, mask, case.geometry, crop, size, cfg.input_mask)
    if augment:
        if rng.random() < 0.5:
            x[0] = ndimage.gaussian_filter(x[0], rng.uniform(0.3, 1.0))
        x[0] += rng.normal(0.0, rng.uniform(0.0, 0.05), size=x[0].shape).astype(np.float32)
    return x, world_to_crop_zyx(case.landmarks, crop)


@dataclass
class Evaluation:
    errors_mm: np.ndarray  # (cases, K)
    confidence: np.ndarray  # (cases, K)
    segment_agreement: np.ndarray  # (cases,) fraction of true myocardium voxels with the true segment

    def summary(self) -> dict:
        out = {f"landmark_error_mm_{n}": float(self.errors_mm[:, i].mean()) for i, n in enumerate(LANDMARKS)}
        out.update({f"landmark_error_mm_{n}_p95": float(np.percentile(self.errors_mm[:, i], 95)) for i, n in enumerate(LANDMARKS)})
        out["landmark_error_mm_mean"] = float(self.errors_mm.mean())
        out["confidence_min"] = float(self.confidence.min())
        out["segment_label_agreement"] = float(self.segment_agreement.mean())
        out["segment_label_agreement_min"] = float(self.segment_agreement.min())
        out["n_cases"] = int(len(self.errors_mm))
        return out


def evaluate(
    detector: LandmarkDetector, cases: list[Case], apex_cap_fraction: float = 0.1, segments: bool = True
) -> Evaluation:
    errors, conf, agree = [], [], []
    for c in cases:
        det = detector.detect(c.image, c.mask, c.geometry)
        errors.append(np.linalg.norm(det.world_mm - c.landmarks, axis=1))
        conf.append(det.confidence)
        if segments:
            lm = dict(zip(det.names, det.world_mm))
            aha = aha_segment_map(c.mask, c.geometry, lm["apex"], lm["base"], lm["rv_insertion"], apex_cap_fraction)
            truth = c.aha17 > 0
            agree.append(float((aha[truth] == c.aha17[truth]).mean()))
        else:
            agree.append(np.nan)
    return Evaluation(np.array(errors), np.array(conf), np.array(agree))


def checkpoint_meta(cfg: LandmarkTrainingConfig) -> dict:
    return {
        "landmarks": list(LANDMARKS),
        "crop_size": cfg.crop_size,
        "crop_margin_mm": cfg.crop_margin_mm,
        "input_mask": cfg.input_mask,
        "heatmap_sigma_vox": cfg.heatmap_sigma_vox,
        "decode_radius_vox": 3.0 * cfg.heatmap_sigma_vox,
        "input_channels": ["average HU: clip((HU - 100) / 200, -3, 3)"] + (["myocardium mask 0/1"] if cfg.input_mask else []),
    }


def train(
    cfg: LandmarkTrainingConfig,
    train_cases: list[Case],
    val_cases: list[Case],
    device: torch.device,
    steps: int | None = None,
    log_every: int = 25,
    init: LandmarkNet | None = None,
) -> tuple[LandmarkNet, dict]:
    """Train; return the best network (by validation mean landmark error) and the training record.

    `init`: start from these weights (same architecture) instead of random ones."""
    steps = steps or cfg.steps
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    net = LandmarkNet(in_channels=1 + int(cfg.input_mask), n_landmarks=len(LANDMARKS), width=cfg.width,
                       head_channels=cfg.head_channels)
    if init is not None:
        net.load_state_dict(init.state_dict())
    net = net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.learning_rate, total_steps=steps, pct_start=0.15)
    meta = checkpoint_meta(cfg)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    best: dict = {"landmark_error_mm_mean": np.inf}
    best_state = None
    losses: list[float] = []
    history = []
    t0, cpu0 = time.perf_counter(), time.process_time()
    for step in range(1, steps + 1):
        net.train()
        batch = [training_sample(train_cases[i], cfg, rng) for i in rng.integers(len(train_cases), size=cfg.batch_size)]
        x = torch.from_numpy(np.stack([b[0] for b in batch])).to(device)
        pts = torch.from_numpy(np.stack([b[1] for b in batch]).astype(np.float32)).to(device)
        target = gaussian_targets(pts, cfg.crop_size, cfg.heatmap_sigma_vox)
        with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
            logits = net(x)
        loss = heatmap_loss(logits, target)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        losses.append(loss.item())
        if step % log_every == 0:
            log.info("step %d/%d loss %.4f (%.0f s)", step, steps, np.mean(losses[-log_every:]), time.perf_counter() - t0)
        if step % cfg.val_every == 0 or step == steps:
            detector = LandmarkDetector(net, meta, device)
            ev = evaluate(detector, val_cases, segments=False).summary()
            ev.update(step=step, loss=float(np.mean(losses[-cfg.val_every:])), seconds=time.perf_counter() - t0)
            history.append(ev)
            log.info("validation at step %d: %s", step, {k: round(v, 3) for k, v in ev.items()})
            if ev["landmark_error_mm_mean"] < best["landmark_error_mm_mean"]:
                best = ev
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    net.eval()
    record = {
        "train_seconds": time.perf_counter() - t0,
        "train_cpu_seconds": time.process_time() - cpu0,
        "threads": torch.get_num_threads(),
        "steps": steps,
        "best_step": best["step"],
        "loss_first": float(np.mean(losses[: min(20, len(losses))])),
        "loss_last": float(np.mean(losses[-min(20, len(losses)):])),
        "device": str(device),
        "history": history,
    }
    return net, {**meta, "training": record}
