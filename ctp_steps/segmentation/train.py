"""Training of the two VB-Nets on phantom patients made for training only.

Tasks:
- `frames`: classes background / aorta / LV blood pool on single frames of the
  unaligned series (every contrast phase), optionally with the series'
  temporal maximum as a second channel (`network.frames_context`);
- `myocardium`: background / myocardium on the average of aligned frames. The
  training averages use the phantom's TRUE alignment (see `data.py`); each
  sample averages a random subset of the frames (at least 60 %), so the model
  sees a range of noise and enhancement levels.

Random crops (mostly centred on a foreground voxel), domain-randomised
(`augment.py`: pose and size, contrast, sharpness, noise);
loss = cross-entropy + soft Dice of the foreground classes; AdamW with a
one-cycle schedule. Deterministic given the seed (CPU). The checkpoint kept is
the one with the best validation Dice (evaluated on whole volumes of the
validation patients, with the stage's post-processing).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ctp_steps.segmentation.augment import augment_gamma, augment_hu, random_affine
from ctp_steps.segmentation.config import SegmentationConfig, TaskTraining
from ctp_steps.segmentation.data import read_case
from ctp_steps.segmentation.infer import LoadedModel, predict
from ctp_steps.segmentation.postprocess import clean_series, myocardium_hole_voxels
from ctp_steps.segmentation.preprocess import in_channels, normalize_hu
from ctp_steps.segmentation.vbnet import VBNet, load_checkpoint, parameter_count, save_checkpoint

log = logging.getLogger(__name__)

TASK_CLASSES = {"frames": ("background", "aorta", "lv"), "myocardium": ("background", "myocardium")}
MIN_SUBSET = 0.6  # smallest share of frames in a myocardium training average


# ---------------------------------------------------------------- samples


@dataclass
class Case:
    """One patient's training arrays: volumes (n, channels...) are built per sample by the task."""

    name: str
    images: np.ndarray  # frames: (t, z, y, x) HU; myocardium: aligned (t, z, y, x) HU
    labels: np.ndarray  # frames: (t, z, y, x); myocardium: (1, z, y, x)
    context: np.ndarray | None = None  # frames with temporal_max: (z, y, x) HU
    foreground: list[np.ndarray] = field(default_factory=list)  # per label volume: flat indices of foreground


def load_cases(paths: list[Path], task: str, context: str) -> list[Case]:
    cases = []
    for p in paths:
        d = read_case(Path(p))
        if task == "frames":
            images, labels = d["frames"], d["frame_labels"]
            ctx = images.max(axis=0).astype(np.float32) if context == "temporal_max" else None
        else:
            images, labels, ctx = d["aligned"], d["myocardium"][None], None
        case = Case(Path(p).stem, images, labels, ctx)
        case.foreground = [np.flatnonzero(lab) for lab in labels]
        cases.append(case)
    return cases


def draw_sample(case: Case, task: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """(channels, z, y, x) HU and (z, y, x) labels of one random sample, and its label index."""
    if task == "frames":
        k = int(rng.integers(len(case.images)))
        image = case.images[k][None].astype(np.float32)
        if case.context is not None:
            image = np.concatenate([image, case.context[None]])
        return image, case.labels[k], k
    n = len(case.images)
    if rng.random() < 0.5:
        subset = np.arange(n)
    else:
        subset = rng.choice(n, size=max(1, int(math.ceil(rng.uniform(MIN_SUBSET, 1.0) * n))), replace=False)
    return case.images[subset].mean(axis=0, dtype=np.float32)[None], case.labels[0], 0


def centred_crop(volume: np.ndarray, centre, size) -> np.ndarray:
    """The last three axes cropped to `size` around `centre`, edge values where the crop leaves the volume.

    Centred (not shifted back inside the volume): the affine that follows rotates and zooms about the crop's
    centre, which must stay where the sample was aimed."""
    starts = [int(c) - s // 2 for c, s in zip(centre, size)]
    shape = volume.shape[-3:]
    inner = tuple(slice(max(a, 0), min(a + s, n)) for a, s, n in zip(starts, size, shape))
    pad = [(max(-a, 0), max(a + s - n, 0)) for a, s, n in zip(starts, size, shape)]
    out = volume[(...,) + inner]
    if any(lo or hi for lo, hi in pad):
        out = np.pad(out, [(0, 0)] * (out.ndim - 3) + pad, mode="edge")
    return out


class Sampler:
    """Batches of augmented crops: (N, C, z, y, x) normalised inputs and (N, z, y, x) class indices."""

    def __init__(self, cases: list[Case], task: str, cfg: SegmentationConfig, tcfg: TaskTraining, spacing_zyx, seed: int):
        self.cases, self.task, self.cfg, self.tcfg = cases, task, cfg, tcfg
        self.spacing = np.asarray(spacing_zyx, dtype=float)
        self.rng = np.random.default_rng(seed)
        self.size = np.asarray(tcfg.crop_zyx)
        # room for rotation and zooming out without borders: the largest reach of the affine, rounded to even
        aug = cfg.training.augmentation
        reach = (1 + math.sin(math.radians(min(aug.rotation_deg, 45.0)))) / (aug.scale[0] * (1 - aug.stretch))
        self.big = (np.ceil(self.size * float(np.clip(reach, 1.3, 2.5)) / 2) * 2).astype(int)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        aug = self.cfg.training.augmentation
        images, labels, thetas = [], [], []
        for _ in range(self.tcfg.batch_size):
            case = self.cases[int(self.rng.integers(len(self.cases)))]
            image, label, k = draw_sample(case, self.task, self.rng)
            fg = case.foreground[k]
            if fg.size and self.rng.random() < self.tcfg.foreground_fraction:
                centre = np.array(np.unravel_index(int(fg[self.rng.integers(fg.size)]), label.shape))
                centre = centre + self.rng.integers(-self.size // 4, self.size // 4 + 1)
            else:
                centre = np.array([self.rng.integers(n) for n in label.shape])
            images.append(centred_crop(image, centre, self.big).astype(np.float32))
            labels.append(centred_crop(label, centre, self.big))
            a = random_affine(self.rng, aug, (self.size * self.spacing)[::-1])
            thetas.append(np.diag((self.size / self.big)[::-1]) @ a)
        y = torch.from_numpy(np.stack(labels)[:, None].astype(np.float32))
        theta = torch.from_numpy(np.stack([np.hstack([t, np.zeros((3, 1))]) for t in thetas]).astype(np.float32))
        grid = F.affine_grid(theta, [len(thetas), 1, *self.size.tolist()], align_corners=False)
        # pose first (on HU, edges replicated), then what the scanner does to the posed anatomy
        x = F.grid_sample(torch.from_numpy(np.stack(images)), grid, mode="bilinear", padding_mode="border", align_corners=False)
        x = torch.stack([augment_hu(v, self.rng, aug) for v in x])
        x = torch.stack([augment_gamma(v, self.rng, aug) for v in normalize_hu(x, self.cfg.network.hu_window)])
        y = F.grid_sample(y, grid, mode="nearest", padding_mode="border", align_corners=False)
        return x, y[:, 0].round().long()


# ---------------------------------------------------------------- loss, metrics


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy + (1 − mean soft Dice of the foreground classes), Dice pooled over the batch."""
    n_classes = logits.shape[1]
    ce = F.cross_entropy(logits, target)
    proba = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target, n_classes).permute(0, 4, 1, 2, 3).to(proba.dtype)
    dims = (0, 2, 3, 4)
    inter = (proba * onehot).sum(dims)
    denom = proba.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return ce + (1 - dice[1:].mean())


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean arrays (1.0 when both are empty)."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    denom = pred.sum() + truth.sum()
    return 1.0 if denom == 0 else float(2 * np.logical_and(pred, truth).sum() / denom)


def evaluate(model: LoadedModel, cases: list[Case], task: str, spacing_zyx, frame_step: int = 1) -> dict:
    """Dice per class (pooled over a patient's frames), mean over patients, after post-processing."""
    n_classes = len(TASK_CLASSES[task])
    per_case = []
    for case in cases:
        if task == "frames":
            idx = np.arange(0, len(case.images), frame_step)
            volumes, truth = case.images[idx], case.labels[idx]
        else:
            volumes, truth = case.images.mean(axis=0, dtype=np.float32)[None], case.labels
        pred = predict(model, volumes.astype(np.float32), tuple(spacing_zyx), batch_size=4)
        holes = None if task == "frames" else myocardium_hole_voxels(spacing_zyx)
        pred = clean_series(pred, tuple(range(1, n_classes)), holes)
        per_case.append([dice(pred == c, truth == c) for c in range(1, n_classes)])
    arr = np.asarray(per_case)
    names = TASK_CLASSES[task][1:]
    out = {f"dice_{n}": float(arr[:, i].mean()) for i, n in enumerate(names)}
    out["dice_per_patient"] = {c.name: dict(zip(names, map(float, r))) for c, r in zip(cases, arr)}
    out["dice_mean"] = float(arr.mean())
    return out


# ---------------------------------------------------------------- training


def train_model(
    task: str,
    train_paths: list[Path],
    val_paths: list[Path],
    cfg: SegmentationConfig,
    out: Path,
    steps: int | None = None,
    progress: bool = True,
    device: str = "cpu",
    init: Path | None = None,
) -> dict:
    """Train one model, keep the best validation checkpoint at `out`; returns the training report."""
    from tqdm import tqdm

    from ctp_steps.devices import resolve_device

    if task not in TASK_CLASSES:
        raise ValueError(f"unknown task {task!r}")
    tr, net_cfg = cfg.training, cfg.network
    tcfg: TaskTraining = getattr(tr, task)
    steps = steps or tcfg.steps
    torch.set_num_threads(tr.threads)
    torch.manual_seed(tr.seed)
    context = net_cfg.frames_context if task == "frames" else "none"
    cases = load_cases(train_paths, task, context)
    val_cases = load_cases(val_paths, task, context)
    spacing = tuple(float(s) for s in read_case(Path(train_paths[0]))["spacing_zyx_mm"])
    if any(abs(a - b) > 1e-3 for a, b in zip(spacing, net_cfg.spacing_zyx_mm)):
        raise ValueError(f"training data spacing {spacing} differs from network.spacing_zyx_mm {net_cfg.spacing_zyx_mm}")

    dev = resolve_device(device)
    net = VBNet(in_channels(context), len(TASK_CLASSES[task]), net_cfg.widths, net_cfg.dropout)
    if init is not None:  # continue from an earlier checkpoint of the same architecture (recorded in the report)
        start, start_meta = load_checkpoint(init)
        if start.kwargs != net.kwargs or start_meta.get("context") != context:
            raise ValueError(f"{init}: {start.kwargs} / context {start_meta.get('context')} differs from the configured network")
        net.load_state_dict(start.state_dict())
    net = net.to(dev)
    meta = {
        "task": task,
        "classes": list(TASK_CLASSES[task]),
        "spacing_zyx_mm": list(spacing),
        "hu_window": list(net_cfg.hu_window),
        "context": context,
    }
    opt = torch.optim.AdamW(net.parameters(), lr=tcfg.learning_rate, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tcfg.learning_rate, total_steps=steps, pct_start=0.1)
    sampler = Sampler(cases, task, cfg, tcfg, spacing, tr.seed)
    model = LoadedModel(net, meta, dev)
    amp = dev.type == "cuda"  # mixed precision on GPU only; CPU trains in float32
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    history, best, best_state = [], -1.0, None
    cpu0, wall0 = time.process_time(), time.perf_counter()
    bar = tqdm(range(1, steps + 1), desc=f"train {task}", disable=not progress, mininterval=5)
    ema = None
    for step in bar:
        net.train()
        x, y = (t.to(dev) for t in sampler.batch())
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            logits = net(x)
        loss = dice_ce_loss(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{ema:.4f}", refresh=False)
        history.append({"step": step, "loss": float(loss.item())})
        if step % tcfg.validate_every == 0 or step == steps:
            net.eval()
            scores = evaluate(model, val_cases, task, spacing, frame_step=3 if task == "frames" else 1)
            history[-1]["val_dice_mean"] = scores["dice_mean"]
            log.info("step %d: loss %.4f, validation %s", step, ema, {k: round(v, 4) for k, v in scores.items() if k.startswith("dice_") and isinstance(v, float)})
            if scores["dice_mean"] > best:
                best = scores["dice_mean"]
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                history[-1]["kept"] = True
    cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0

    net.load_state_dict(best_state)
    net.eval()
    final = evaluate(model, val_cases, task, spacing)  # all frames, fp32 weights
    report = {
        "task": task,
        "steps": steps,
        "train_cpu_s": round(cpu_s, 1),
        "train_wall_s": round(wall_s, 1),
        "threads": tr.threads,
        "device": str(dev),
        "init": Path(init).name if init else None,  # a file name: a path would carry the trainer's folders into outputs
        "parameters": parameter_count(net),
        "validation": final,
        "history": history,
    }
    save_checkpoint(out, net, {**meta, "validation": {k: v for k, v in final.items() if k != "dice_per_patient"}}, half=tr.fp16_weights)
    return report
