"""AHA 17-segment construction from landmarks: exact labels on analytic geometry."""

import numpy as np
import pytest

from ctp_steps.aha import (
    DEFAULT_APEX_CAP_FRACTION,
    SEGMENT_TERRITORY,
    TERRITORY_SEGMENTS,
    aha_segment_map,
    aha_segments,
    long_axis_frame,
    ring_bounds,
)
from ctp_steps.types import Geometry

# long axis along +z, RV insertion towards +x: θ = atan2(y, x), length 90 mm
BASE, APEX, RV = np.zeros(3), np.array([0.0, 0.0, 90.0]), np.array([30.0, 0.0, 20.0])


def ring_points(theta_deg, z_mm, radius=25.0):
    th = np.radians(np.atleast_1d(theta_deg))
    return np.stack([radius * np.cos(th), radius * np.sin(th), np.full(th.shape, float(z_mm))], axis=1)


@pytest.mark.parametrize(
    "z_mm, expected",  # segments at θ = 10, 70, 130, 190, 250, 310
    [(10.0, [2, 3, 4, 5, 6, 1]), (-3.0, [2, 3, 4, 5, 6, 1]), (40.0, [8, 9, 10, 11, 12, 7])],
)
def test_basal_and_mid_sectors(z_mm, expected):
    labels = aha_segments(ring_points([10, 70, 130, 190, 250, 310], z_mm), APEX, BASE, RV)
    assert labels.tolist() == expected


def test_apical_sectors_and_cap():
    labels = aha_segments(ring_points([10, 20, 100, 110, 190, 200, 280, 290, 350], 70.0), APEX, BASE, RV)
    assert labels.tolist() == [13, 14, 14, 15, 15, 16, 16, 13, 13]
    assert aha_segments(ring_points([0, 90, 180, 270], 85.0, radius=5.0), APEX, BASE, RV).tolist() == [17] * 4
    assert aha_segments(ring_points([45], 95.0), APEX, BASE, RV).tolist() == [17]  # beyond the apex


def test_ring_heights_follow_cap_fraction():
    t1, t2, t3 = ring_bounds(0.1)
    assert (t1, t2, t3) == pytest.approx((0.3, 0.6, 0.9))
    heights = [0.29, 0.31, 0.59, 0.61, 0.89, 0.91]
    labels = [int(aha_segments(ring_points([70], 90.0 * h), APEX, BASE, RV)[0]) for h in heights]
    assert labels == [3, 9, 9, 14, 14, 17]
    wider = [
        int(aha_segments(ring_points([70], 90.0 * h), APEX, BASE, RV, apex_cap_fraction=0.25)[0])
        for h in (0.76,)
    ]
    assert wider == [17]


def test_brief_example_septum_at_plus_60_degrees():
    """u ∝ (1,−1,−1), septum s ∝ (−1,−1,0), anterior a = s × u, insertion r = cos60·s + sin60·a."""
    u = np.array([1.0, -1.0, -1.0]) / np.sqrt(3)
    s = np.array([-1.0, -1.0, 0.0]) / np.sqrt(2)
    a = np.cross(s, u)
    r = np.cos(np.radians(60)) * s + np.sin(np.radians(60)) * a
    base = np.array([10.0, -20.0, -150.0])
    apex = base + 80.0 * u
    frame = long_axis_frame(apex, base, base + 20.0 * u + 30.0 * r)
    _, theta, _ = frame.coordinates(base + 40.0 * u + 25.0 * s)
    assert theta == pytest.approx(60.0)
    # just either side of the septal midline: anteroseptal / inferoseptal, and the apical septum
    for delta, mid_seg in ((-5.0, 8), (5.0, 9)):
        ang = np.radians(60.0 + delta)
        d = np.cos(ang) * frame.ref + np.sin(ang) * frame.ortho
        assert aha_segments(base + 40.0 * u + 25.0 * d, apex, base, base + 20.0 * u + 30.0 * r) == mid_seg
        assert aha_segments(base + 60.0 * u + 15.0 * d, apex, base, base + 20.0 * u + 30.0 * r) == 14


def test_septum_is_2_3_8_9_14():
    theta = np.arange(1.0, 120.0, 2.0)
    basal_mid = np.concatenate([aha_segments(ring_points(theta, z), APEX, BASE, RV) for z in (10.0, 40.0)])
    apical = aha_segments(ring_points(np.arange(16.0, 105.0, 2.0), 70.0), APEX, BASE, RV)
    assert set(basal_mid.tolist()) == {2, 3, 8, 9} and set(apical.tolist()) == {14}


def test_equal_segments_on_uniform_ring():
    theta = (np.arange(3600) + 0.5) * 0.1
    zs = (np.arange(90) + 0.5) * (0.9 * 90.0 / 90)  # uniform heights over [0, (1 − f)·L)
    pts = np.concatenate([ring_points(theta, z) for z in zs])
    counts = np.bincount(aha_segments(pts, APEX, BASE, RV), minlength=18)
    assert counts[0] == 0 and counts[17] == 0
    assert len(set(counts[1:7])) == 1 and len(set(counts[7:13])) == 1 and len(set(counts[13:17])) == 1
    assert counts[1:7].sum() == counts[7:13].sum() == counts[13:17].sum()


def test_rigid_motion_invariance():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rot = q * np.sign(np.linalg.det(q))  # proper rotation
    shift = rng.normal(scale=50.0, size=3)
    pts = rng.uniform(-40.0, 100.0, size=(500, 3))
    moved = aha_segments(pts @ rot.T + shift, APEX @ rot.T + shift, BASE @ rot.T + shift, RV @ rot.T + shift)
    assert np.array_equal(moved, aha_segments(pts, APEX, BASE, RV))


def test_mirrored_heart_swaps_septum_and_lateral():
    """The right-hand rule matters: a mirror image of the heart turns septal points lateral."""
    septal = ring_points([90.0], 40.0)
    assert aha_segments(septal, APEX, BASE, RV)[0] == 9
    mirrored = septal * np.array([1.0, -1.0, 1.0])  # θ = 270°
    assert aha_segments(mirrored, APEX, BASE, RV)[0] == 12


def test_territories_partition_segments():
    assert sorted(s for segs in TERRITORY_SEGMENTS.values() for s in segs) == list(range(1, 18))
    assert (
        SEGMENT_TERRITORY[17] == "LAD" and SEGMENT_TERRITORY[15] == "RCA" and SEGMENT_TERRITORY[16] == "LCX"
    )


def test_segment_map_on_a_volume():
    geometry = Geometry((-50.0, -50.0, -10.0), (2.0, 2.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    zz, yy, xx = np.meshgrid(np.arange(40), np.arange(50), np.arange(50), indexing="ij")
    world = geometry.index_to_world(np.stack([xx, yy, zz], axis=-1).astype(float))
    radius = np.hypot(world[..., 0], world[..., 1])
    shell = (radius > 20) & (radius < 30) & (world[..., 2] >= 0) & (world[..., 2] < 90)
    seg = aha_segment_map(shell, geometry, APEX, BASE, RV, DEFAULT_APEX_CAP_FRACTION)
    assert seg.dtype == np.uint8 and ((seg > 0) == shell).all()
    assert np.array_equal(seg[shell], aha_segments(world[shell], APEX, BASE, RV))
    assert set(np.unique(seg[shell]).tolist()) == set(range(1, 18))


def test_degenerate_landmarks_raise():
    with pytest.raises(ValueError, match="coincide"):
        long_axis_frame(BASE, BASE, RV)
    with pytest.raises(ValueError, match="on the long axis"):
        long_axis_frame(APEX, BASE, np.array([0.0, 0.0, 40.0]))
    with pytest.raises(ValueError):
        ring_bounds(1.5)
