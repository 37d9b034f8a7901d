"""Unsupervised training of the registration net on LV-box crops of training phantoms.

Loss = w_sim·(1 − local NCC²) + w_dice·(1 − Dice of the warped moving LV mask)
+ w_smooth·mean |∇u|². Pairs are two random frames of one patient (any
enhancement phase against any other). The phantom's true motion is never read.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from ctp_steps.registration.config import RegistrationConfig
from ctp_steps.registration.losses import registration_loss
from ctp_steps.registration.net import MARGIN, RegNet, save_checkpoint
from ctp_steps.registration.warp import SpatialTransformer, sample_index

log = logging.getLogger(__name__)


def grid_of(cfg: RegistrationConfig) -> dict:
    n = cfg.network
    return {
        "spacing_mm": n.spacing_mm,
        "input_size": n.input_size,
        "output_size": n.output_size,
        "intensity_scale_hu": n.intensity_scale_hu,
        "intensity_clip": n.intensity_clip,
    }


def to_inputs(images: np.ndarray, masks: np.ndarray, grid: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Stored crops (float16 HU, uint8 masks) → normalised (B, 1, N, N, N) image and [0, 1] mask tensors."""
    img = torch.as_tensor(images.astype(np.float32), device=device)[:, None]
    img = (img / grid["intensity_scale_hu"]).clamp(-grid["intensity_clip"], grid["intensity_clip"])
    msk = torch.as_tensor(masks.astype(np.float32) / 255.0, device=device)[:, None]
    return img, msk


def jitter(volumes: list[torch.Tensor], shift_vox: torch.Tensor) -> list[torch.Tensor]:
    """Shift (B, C, N, N, N) crops by (B, 3) voxels (x, y, z), border-replicated."""
    n = volumes[0].shape[2:]
    axes = [torch.arange(m, device=shift_vox.device, dtype=torch.float32) for m in n]
    z, y, x = torch.meshgrid(*axes, indexing="ij")
    idx = torch.stack([x, y, z], dim=-1)[None] + shift_vox[:, None, None, None, :]
    return [sample_index(v, idx) for v in volumes]


def pair_loss(
    net: RegNet,
    fixed: torch.Tensor,
    moving: torch.Tensor,
    fixed_mask: torch.Tensor,
    moving_mask: torch.Tensor,
    cfg: RegistrationConfig,
    input_masks: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict]:
    """Forward a batch of pairs and return the training loss and its parts.

    `input_masks`: (fixed, moving) masks the net sees when they differ from the clean masks of the loss.
    """
    t = cfg.training
    seen_fixed, seen_moving = input_masks if input_masks is not None else (fixed_mask, moving_mask)
    field = net(torch.cat([fixed, moving, seen_fixed, seen_moving], dim=1))
    st = SpatialTransformer(MARGIN)
    m = field.shape[2]
    centre = (slice(None), slice(None), *(slice(MARGIN, MARGIN + m),) * 3)
    warped = st(moving, field.float())
    warped_mask = st(moving_mask, field.float())
    return registration_loss(
        warped, fixed[centre], warped_mask, fixed_mask[centre], field.float(),
        (t.weight_similarity, t.weight_dice, t.weight_smoothness), t.ncc_window,
    )


def perturb_masks(masks: torch.Tensor, shift_vox: float, rng: np.random.Generator) -> torch.Tensor:
    """Segmentation-like errors: a random shift (± shift_vox per axis) and a random ~1-voxel erosion or dilation."""
    b = masks.shape[0]
    shift = torch.as_tensor(rng.uniform(-shift_vox, shift_vox, size=(b, 3)), dtype=torch.float32, device=masks.device)
    moved = jitter([masks], shift)[0]
    smooth = torch.nn.functional.avg_pool3d(moved, 3, stride=1, padding=1, count_include_pad=False)
    level = torch.as_tensor(rng.uniform(0.2, 0.8, size=(b, 1, 1, 1, 1)), dtype=torch.float32, device=masks.device)
    return (smooth > level).float()


def random_patch(volumes: list[torch.Tensor], size: int, rng: np.random.Generator) -> list[torch.Tensor]:
    """The same random size³ window of each (B, C, N, N, N) crop."""
    n = volumes[0].shape[-1]
    z, y, x = (int(o) for o in rng.integers(0, n - size + 1, size=3))
    return [v[..., z : z + size, y : y + size, x : x + size] for v in volumes]


def sample_batch(images, masks, rng: np.random.Generator, batch: int):
    """Random (patient, fixed frame, moving frame ≠ fixed) pairs → stacked crops."""
    p = rng.integers(0, images.shape[0], size=batch)
    a = rng.integers(0, images.shape[1], size=batch)
    b = (a + rng.integers(1, images.shape[1], size=batch)) % images.shape[1]
    return images[p, a], images[p, b], masks[p, a], masks[p, b]


def train_net(
    cfg: RegistrationConfig,
    images: np.ndarray,
    masks: np.ndarray,
    device: torch.device,
    steps: int | None = None,
    log_every: int = 50,
) -> tuple[RegNet, list[dict]]:
    """Train a fresh net on (patients, frames, N, N, N) crops; returns it and the loss history."""
    t = cfg.training
    steps = t.steps if steps is None else steps
    torch.manual_seed(t.seed)
    rng = np.random.default_rng(t.seed)
    grid = grid_of(cfg)
    if images.shape[-1] != grid["input_size"]:
        raise ValueError(f"training crops are {images.shape[-1]}³, the network config expects {grid['input_size']}³")
    net = RegNet(cfg.network.widths).to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=t.learning_rate)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * i / max(steps, 1))))
    cuda = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    jitter_vox = t.jitter_mm / grid["spacing_mm"]
    history, running, t0 = [], [], time.perf_counter()
    for step in range(1, steps + 1):
        ia, ib, ma, mb = sample_batch(images, masks, rng, t.batch_size)
        fixed, fixed_mask = to_inputs(ia, ma, grid, device)
        moving, moving_mask = to_inputs(ib, mb, grid, device)
        if jitter_vox > 0:
            shift = (torch.rand(len(ia), 3, device=device) * 2 - 1) * jitter_vox
            moving, moving_mask = jitter([moving, moving_mask], shift)
        seen = None
        if t.mask_noise_mm > 0:  # the net sees imperfect masks; the loss keeps the clean ones
            shift = t.mask_noise_mm / grid["spacing_mm"]
            seen = [perturb_masks(fixed_mask, shift, rng), perturb_masks(moving_mask, shift, rng)]
            fixed, moving, fixed_mask, moving_mask, *seen = random_patch(
                [fixed, moving, fixed_mask, moving_mask, *seen], t.patch_size, rng
            )
        else:
            fixed, moving, fixed_mask, moving_mask = random_patch([fixed, moving, fixed_mask, moving_mask], t.patch_size, rng)
        with torch.autocast("cuda", dtype=torch.float16) if cuda else nullcontext():
            loss, parts = pair_loss(net, fixed, moving, fixed_mask, moving_mask, cfg, seen)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        running.append(parts)
        if step % log_every == 0 or step == steps:
            mean = {k: float(np.mean([r[k] for r in running])) for k in running[0]}
            mean.update(step=step, seconds=time.perf_counter() - t0)
            history.append(mean)
            running = []
            log.info("step %d: %s", step, json.dumps({k: round(v, 4) for k, v in mean.items()}))
    return net.eval(), history


@torch.no_grad()
def evaluate_pairs(net: RegNet, images: np.ndarray, masks: np.ndarray, cfg: RegistrationConfig, device: torch.device) -> dict:
    """Mask Dice before/after on held-out crops: each patient's middle frame fixed, every other frame moving."""
    grid = grid_of(cfg)
    st = SpatialTransformer(MARGIN)
    before, after = [], []
    net.eval()
    for p in range(images.shape[0]):
        ref = images.shape[1] // 2
        for k in range(images.shape[1]):
            if k == ref:
                continue
            fixed, fixed_mask = to_inputs(images[p, ref : ref + 1], masks[p, ref : ref + 1], grid, device)
            moving, moving_mask = to_inputs(images[p, k : k + 1], masks[p, k : k + 1], grid, device)
            field = net(torch.cat([fixed, moving, fixed_mask, moving_mask], dim=1)).float()
            m = field.shape[2]
            c = (slice(None), slice(None), *(slice(MARGIN, MARGIN + m),) * 3)
            f = fixed_mask[c] > 0.5
            mv = moving_mask[c] > 0.5
            w = st(moving_mask, field) > 0.5
            before.append(float(2 * (f & mv).sum() / (f.sum() + mv.sum())))
            after.append(float(2 * (f & w).sum() / (f.sum() + w.sum())))
    return {"pair_lv_dice_before": float(np.mean(before)), "pair_lv_dice_after": float(np.mean(after)), "n_pairs": len(before)}


def train_command(
    cfg: RegistrationConfig, train_npz: Path, val_npz: Path | None, out: Path, report: Path, device: torch.device
) -> dict:
    """Train, evaluate on validation crops, save the checkpoint and a JSON training report."""
    from ctp_steps.io import write_json
    from ctp_steps.registration.data import load_dataset

    torch.set_num_threads(cfg.training.threads)
    images, masks, data_spec = load_dataset(train_npz)
    t0, c0 = time.perf_counter(), time.process_time()
    net, history = train_net(cfg, images, masks, device)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    evaluation = {}
    if val_npz is not None:
        v_images, v_masks, v_spec = load_dataset(val_npz)
        evaluation = {**evaluate_pairs(net, v_images, v_masks, cfg, device), "validation_patients": v_spec["patient_ids"]}
    info = {
        "training_seconds": seconds,
        "training_cpu_seconds": cpu_seconds,
        "device": str(device),
        "threads": cfg.training.threads,
        "config": cfg.model_dump(mode="json"),
        "data": {k: v for k, v in data_spec.items() if k != "phantom"},
        "final": history[-1] if history else {},
        "validation": evaluation,
    }
    save_checkpoint(out, net, grid_of(cfg), info, fp16=cfg.training.fp16_weights)
    write_json(report, {**info, "history": history, "phantom": data_spec["phantom"]})
    return info
