"""MBF cost bounded by the myocardium, not the voxel size or the field of view: the sparse neighbourhood,
the working grid and the crop leave the default 2.5-3 mm grid bit-identical, give a fine-grid copy of a
study the coarse study's segment MBF, and ignore everything outside the myocardium's box."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from ctp_steps.mbf import MBFConfig
from ctp_steps.mbf.estimate import MBFEstimate, PerfusionInputs, WorkingGrid, estimate_mbf
from ctp_steps.mbf.regularise import Neighbourhood, max_offsets, offset_steps
from ctp_steps.types import Geometry
from test_mbf import CPU, ring_patient

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DENSE_NATIVE = {"working_spacing_mm": 0.0, "regularisation": {"min_offset_spacing_mm": 0.0}}
RING_REG = {"radius_mm": 8.0, "spatial_sigma_mm": 5.0}


def refined(inputs: PerfusionInputs, factor: int = 2) -> PerfusionInputs:
    """The same study on a grid `factor` times finer per axis: every voxel (and its noise) repeated."""

    def up(a: np.ndarray) -> np.ndarray:
        for axis in range(a.ndim - 3, a.ndim):
            a = np.repeat(a, factor, axis=axis)
        return a

    g = inputs.geometry
    geometry = Geometry(g.origin, tuple(s / factor for s in g.spacing), g.direction)
    return PerfusionInputs(up(inputs.series_hu), geometry, inputs.times_s, inputs.aif_hu,
                           up(inputs.myocardium), up(inputs.aha17))


def embedded(inputs: PerfusionInputs, before: tuple[int, int, int], after: tuple[int, int, int]) -> PerfusionInputs:
    """The study inside a larger field of view: noisy 40 HU tissue around it, no myocardium there."""
    rng = np.random.default_rng(7)
    pad = list(zip(before, after))
    series = np.pad(inputs.series_hu, [(0, 0), *pad], mode="constant", constant_values=40.0)
    outside = np.pad(np.zeros(inputs.myocardium.shape, bool), pad, constant_values=True)
    series[:, outside] += rng.normal(0.0, 12.0, (series.shape[0], int(outside.sum()))).astype(series.dtype)
    return PerfusionInputs(series, inputs.geometry, inputs.times_s, inputs.aif_hu,
                           np.pad(inputs.myocardium, pad), np.pad(inputs.aha17, pad))


def segment_means(est: MBFEstimate) -> dict[int, float]:
    return {int(s): float(est.regularised.mbf[est.segments == s].mean()) for s in np.unique(est.segments)}


def assert_same_maps(a: MBFEstimate, b: MBFEstimate) -> None:
    for name in ("regularised", "raw", "segment_fit"):
        np.testing.assert_array_equal(getattr(a, name).mbf, getattr(b, name).mbf, err_msg=name)


# ---------------------------------------------------------------- (a) the default grid is unchanged
@pytest.mark.parametrize("regularisation", [{}, RING_REG | {"same_segment": True}], ids=["default", "ring"])
def test_default_grid_is_bit_identical_to_the_dense_native_run(regularisation):
    """At 3.0 x 2.5 x 2.5 mm the default working grid is native and the offset lattice is every voxel."""
    inputs, _ = ring_patient(noise_hu=12.0, seed=1)
    default = estimate_mbf(inputs, MBFConfig(regularisation=regularisation), CPU)
    dense = estimate_mbf(
        inputs, MBFConfig(working_spacing_mm=0.0, regularisation=regularisation | {"min_offset_spacing_mm": 0.0}), CPU
    )
    assert default.working_spacing_mm == (3.0, 2.5, 2.5)
    assert default.n_offsets == dense.n_offsets == (1785 if not regularisation else 113)
    assert_same_maps(default, dense)


def test_offset_lattice_steps_and_bound():
    assert offset_steps((3.0, 2.5, 2.5), 2.5) == (1, 1, 1)
    assert offset_steps((1.25, 0.4, 0.4), 2.5) == (2, 7, 7)  # never finer than 2.5 mm along any axis
    assert offset_steps((1.25, 0.4, 0.4), 0.0) == (1, 1, 1)
    bound = max_offsets(20.0, 2.5)
    assert bound == 2109
    mask = np.ones((3, 3, 3), bool)
    for spacing in ((3.0, 2.5, 2.5), (1.5, 1.25, 1.25), (1.25, 0.7, 0.7), (1.25, 0.4, 0.4)):
        hood = Neighbourhood.build(mask, spacing, 20.0, CPU, 2.5)
        assert hood.n_offsets <= bound, spacing
    assert Neighbourhood.build(mask, (1.25, 0.7, 0.7), 20.0, CPU, 0.0).n_offsets > 20 * bound


# ---------------------------------------------------------------- (b) a fine-grid copy of a coarse study
@pytest.mark.parametrize(("min_depth_mm", "rtol"), [(0.0, 1e-9), (4.0, 0.04)], ids=["all-sources", "deep-sources"])
def test_fine_grid_copy_gives_the_coarse_segment_mbf_with_bounded_offsets(min_depth_mm, rtol):
    """Native fine grid, sparse neighbourhood: the coarse grid's offsets (not 8x as many) and its segment MBF.

    With every voxel a source the 2-voxel lattice sees exactly the coarse neighbours. With deep sources the
    depth is measured between voxel centres, so on this 12 mm thick, 4-slice ring the fine grid's deep set
    differs (1.5 mm slices, not 3): segments move by up to ~3 %, the mean by ~1.5 %.
    """
    reg = RING_REG | {"min_depth_mm": min_depth_mm}
    coarse_inputs, _ = ring_patient(noise_hu=12.0, seed=2)
    coarse = estimate_mbf(coarse_inputs, MBFConfig(regularisation=reg), CPU)
    fine_inputs = refined(coarse_inputs)  # 1.5 x 1.25 x 1.25 mm
    sparse = estimate_mbf(fine_inputs, MBFConfig(working_spacing_mm=0.0, regularisation=reg), CPU)
    assert sparse.working_spacing_mm == (1.5, 1.25, 1.25)
    bound = max_offsets(RING_REG["radius_mm"], 2.5)
    dense_offsets = Neighbourhood.build(fine_inputs.myocardium, (1.5, 1.25, 1.25), 8.0, CPU).n_offsets
    assert sparse.n_offsets == coarse.n_offsets == 113 <= bound < dense_offsets / 4
    expected = segment_means(coarse)
    for s, value in segment_means(sparse).items():
        assert value == pytest.approx(expected[s], rel=rtol), s
    assert sparse.regularised.mbf.mean() == pytest.approx(coarse.regularised.mbf.mean(), rel=min(rtol, 0.02))


def test_fine_grid_copy_on_a_working_grid_is_the_coarse_study():
    """A 3 mm working grid makes 2x2x2 blocks of the fine copy: the coarse grid itself, written back on the fine one."""
    coarse_inputs, _ = ring_patient(noise_hu=12.0, seed=2)
    coarse = estimate_mbf(coarse_inputs, MBFConfig(regularisation=RING_REG), CPU)
    fine_inputs = refined(coarse_inputs)
    expected = segment_means(coarse)
    working = estimate_mbf(fine_inputs, MBFConfig(working_spacing_mm=3.0, regularisation=RING_REG), CPU)
    assert working.working_spacing_mm == (3.0, 2.5, 2.5)
    assert working.mask.shape == fine_inputs.myocardium.shape and len(working.segments) == 8 * len(coarse.segments)
    for name in ("regularised", "raw"):
        fine_map = getattr(working, name).mbf
        coarse_map = refined_volume(coarse.volume(getattr(coarse, name).mbf))[fine_inputs.myocardium]
        np.testing.assert_allclose(fine_map, coarse_map, rtol=1e-6, err_msg=name)
    for s, value in segment_means(working).items():
        assert value == pytest.approx(expected[s], rel=1e-6), s


def refined_volume(volume: np.ndarray, factor: int = 2) -> np.ndarray:
    for axis in range(3):
        volume = np.repeat(volume, factor, axis=axis)
    return volume


def test_working_grid_blocks_majority_and_nearest():
    """Hand-checked 1 x 2 x 8 mask, blocks of 1 x 2 x 2: a block is myocardium when > half of it is."""
    mask = np.array([[[1, 1, 1, 1, 1, 0, 1, 1], [1, 1, 0, 0, 0, 0, 1, 1]]], bool)  # blocks hold 4, 2, 1, 4
    segments = np.array([3, 5, 5, 5, 5, 4, 4, 3, 3, 4, 6], np.int64)  # C order: row 0, then row 1
    grid = WorkingGrid.build(mask, segments, (1.0, 0.5, 0.5), 1.0)
    assert grid.factors == (1, 2, 2) and grid.spacing_mm == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(grid.mask.ravel(), [True, False, False, True])  # 2 of 4 is not most
    np.testing.assert_array_equal(grid.segments, [3, 4])  # majorities of (3, 5, 3, 3) and (4, 4, 4, 6)
    # x2, x3 are nearest the first block, x4 the last one
    np.testing.assert_array_equal(grid.nearest, [0, 0, 0, 0, 1, 1, 1, 0, 0, 1, 1])
    curves = np.arange(11.0)[:, None] * np.array([[1.0, 10.0]])
    np.testing.assert_allclose(grid.to_working(curves), [[4.0, 40.0], [7.5, 75.0]])


# ---------------------------------------------------------------- (c) the crop
def test_large_empty_field_of_view_gives_the_cropped_maps_and_no_float64_copy():
    """Odd margins shift the FOV against the 2x2x2 blocks: blocks are anchored on the myocardium's box."""
    cropped = refined(ring_patient(noise_hu=12.0, seed=3)[0])
    big = embedded(cropped, (5, 37, 23), (9, 41, 55))
    cfg = MBFConfig(working_spacing_mm=3.0, regularisation=RING_REG)
    small = estimate_mbf(cropped, cfg, CPU)
    tracemalloc.start()
    large = estimate_mbf(big, cfg, CPU)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert_same_maps(small, large)
    inner = (slice(5, 5 + cropped.myocardium.shape[0]), slice(37, -41), slice(23, -55))
    vol = large.volume(large.regularised.mbf)
    np.testing.assert_array_equal(vol[inner], small.volume(small.regularised.mbf))
    assert (vol[~big.myocardium] == 0).all()
    # the series is float32; a float64 copy of it alone would be 2x its size
    assert big.series_hu.dtype == np.float32 and peak < 0.25 * big.series_hu.nbytes
