"""Which voxels feed the regularised map: away from bright blood, off the boundary layer facing fat or lung."""

from __future__ import annotations

import numpy as np
import torch

from ctp_steps.mbf.config import MBFConfig
from ctp_steps.mbf.estimate import PerfusionInputs, estimate_mbf
from ctp_steps.mbf.regularise import Neighbourhood, peak_enhancement_blocks, sources_away_from_blood
from test_mbf import TIMES, aif_hu, ring_patient

CPU = torch.device("cpu")


def slab(nx: int = 14) -> tuple[np.ndarray, np.ndarray]:
    """A wall along x on 1 mm voxels: blood at x 0-1, myocardium x 2-9, fat beyond, 5 x 5 in y and z."""
    mask = np.zeros((5, 5, nx), dtype=bool)
    blood = np.zeros_like(mask)
    blood[:, :, :2] = True
    mask[:, :, 2:10] = True
    return mask, blood


def test_sources_keep_min_depth_from_blood_and_leave_the_outer_boundary_layer():
    mask, blood = slab()
    # widen y and z so the centre line is far from the lattice's own edge
    mask, blood = (np.pad(a, ((4, 4), (4, 4), (0, 0)), mode="edge") for a in (mask, blood))
    src = np.zeros(mask.shape, dtype=bool)
    src[mask] = sources_away_from_blood(mask, blood, (1.0, 1.0, 1.0), min_depth_mm=3.0)
    centre = src[6, 6]
    # x 2-3 are within 3 mm of the blood (x = 1), x 9 touches the fat (x = 10): sources x 4-8
    assert np.flatnonzero(centre).tolist() == [4, 5, 6, 7, 8]
    # the lattice's edge counts as "the rest": its boundary layer is no source either
    assert not src[0].any() and not src[:, 0].any()


def test_depth_rules_keep_min_depth_from_every_boundary():
    """`depth` (Neighbourhood.deep) and `depth_and_blood` (blood-aware, other boundary at depth too)."""
    thick = np.zeros((9, 9, 9), dtype=bool)
    thick[1:8, 1:8, 1:8] = True
    deep = Neighbourhood.build(thick, (1.0, 1.0, 1.0), 2.0, CPU).deep(3.0)
    expected = np.zeros_like(thick)
    expected[3:6, 3:6, 3:6] = True
    np.testing.assert_array_equal(deep, expected[thick])
    assert Neighbourhood.build(thick, (1.0, 1.0, 1.0), 2.0, CPU).deep(10.0).sum() == 1  # thinner: the deepest
    mask, blood = (np.pad(a, ((4, 4), (4, 4), (0, 0)), mode="edge") for a in slab())
    src = np.zeros(mask.shape, dtype=bool)
    src[mask] = sources_away_from_blood(mask, blood, (1.0, 1.0, 1.0), 3.0, other_boundary="depth")
    assert np.flatnonzero(src[6, 6]).tolist() == [4, 5, 6, 7]  # 3 mm from the blood (x 1) and from the fat (x 10)


def test_bright_voxels_inside_the_mask_are_never_sources_and_push_sources_away():
    mask, blood = (np.pad(a, ((4, 4), (4, 4), (0, 0)), mode="edge") for a in slab())
    blood[:, :, 4] = True  # a mis-segmented bright layer inside the wall
    src = np.zeros(mask.shape, dtype=bool)
    src[mask] = sources_away_from_blood(mask, blood, (1.0, 1.0, 1.0), min_depth_mm=3.0)
    assert np.flatnonzero(src[6, 6]).tolist() == [7, 8]


def test_a_wall_too_thin_for_the_rule_keeps_its_clearest_voxels():
    mask, blood = slab(nx=8)
    mask[:, :, 6:] = False  # myocardium x 2-5 only
    sources = sources_away_from_blood(mask, blood, (1.0, 1.0, 1.0), min_depth_mm=3.0)
    assert sources.any()
    depth_from_blood = (np.argwhere(mask)[:, 2] - 1).astype(float)
    assert depth_from_blood[sources].min() >= 2.0  # not the layer touching the blood


def test_peak_enhancement_blocks_average_blocks_around_the_box_and_read_zero_outside_the_volume():
    series = np.zeros((3, 6, 8, 8), dtype=np.float32)
    series[:, :, :, :] = 40.0  # baseline
    series[1, 2:4, 4:6, 4:6] += 300.0  # a bright 2x2x2 block at its peak in frame 1
    series[2, 2:4, 4:6, 4:6] += 100.0
    box = (slice(2, 4), slice(2, 4), slice(2, 4))
    peak = peak_enhancement_blocks(series, box, (2, 2, 2), n_baseline=1, margin_blocks=1)
    # box of 1 block + 1 block each side: 3 blocks per axis, starting at voxel 0
    assert peak.shape == (3, 3, 3)
    assert peak[1, 2, 2] == 300.0 and peak[1, 1, 1] == 0.0
    # two blocks of margin reach beyond the volume's start (voxel -2): read as no enhancement
    far = peak_enhancement_blocks(series, box, (2, 2, 2), n_baseline=1, margin_blocks=2)
    assert far.shape == (5, 5, 5) and far[0].max() == 0.0 and far[2, 3, 3] == 300.0


def with_blood(inputs: PerfusionInputs, where: np.ndarray) -> PerfusionInputs:
    """The ring with the voxels `where` (z, y, x) enhancing like the AIF: blood."""
    series = inputs.series_hu.copy()
    series[:, where] = 40.0 + (aif_hu() - aif_hu()[0])[:, None]
    return PerfusionInputs(series, inputs.geometry, TIMES, inputs.aif_hu, inputs.myocardium, inputs.aha17)


def estimate(inputs: PerfusionInputs, rule: str | None = None, **reg):
    cfg = MBFConfig(regularisation={"radius_mm": 8.0, "spatial_sigma_mm": 5.0} | reg)
    if rule is not None:
        cfg = cfg.model_copy(update={"regularisation": cfg.regularisation.model_copy(update={"sources": rule})})
    return estimate_mbf(inputs, cfg, CPU)


def test_blood_left_inside_the_mask_feeds_no_source_under_depth_and_blood():
    assert MBFConfig().regularisation.sources == "depth"
    inputs, _ = ring_patient(noise_hu=0.0)
    nz, ny, nx = inputs.myocardium.shape
    yy, xx = np.meshgrid(np.arange(ny) - 12.5, np.arange(nx) - 12.5, indexing="ij")
    radius = np.broadcast_to(np.hypot(yy, xx), (nz, ny, nx))
    r = radius[inputs.myocardium]
    # enhancing cavity only, outside the mask: depth_and_blood keeps the depth rule's sources
    cavity = with_blood(inputs, radius < 6.0)
    depth = estimate(cavity)
    np.testing.assert_array_equal(estimate(cavity, "depth_and_blood").sources, depth.sources)
    # the segmentation took in the cavity's first 1.5 voxels: those are blood, and sources keep 4 mm from them
    spilled = with_blood(inputs, radius < 7.5)
    inside = estimate(spilled, "depth_and_blood")
    assert inside.sources.any() and r[inside.sources].min() > r[depth.sources].min()
    assert not inside.sources[r < 7.5].any()
    # the depth rule does not see it: its sources are the same as without the spill
    np.testing.assert_array_equal(estimate(spilled, "depth").sources, depth.sources)
    # away_from_blood keeps the layer behind the outer boundary layer as well
    away = estimate(cavity, "away_from_blood")
    assert away.sources.sum() > depth.sources.sum() and r[away.sources].max() >= r[depth.sources].max()


def test_every_voxel_at_min_depth_0_and_no_sources_without_regularisation():
    inputs, _ = ring_patient(noise_hu=0.0)
    assert estimate(inputs, min_depth_mm=0.0).sources.all()
    assert estimate(inputs, enabled=False).sources is None
