"""The classical landmark fallback (ctp_steps.landmarks.geometric) against phantom truth.

Nine test-role phantom patients (make_specs seed 18; supersample 1 to keep the
test short), the truth myocardium mask and the motion-free frame average plus
10 HU of extra white noise (≈ 11–13 HU noise SD in all):
- X0001–X0006 on the default grid 40×80×80 at 3.0×2.5×2.5 mm,
- X0007–X0008 on 64×120×96 at 1.5×1.0×1.25 mm (z×y×x: every axis differs),
- X0009 on the default grid with the long axis tilted up to 40° (default 15°).

Measured (error = distance to the truth landmark in mm, mean / max over the nine):

| landmark | geometric (this module) | heatmap net (models/landmark_net.pt) |
| --- | --- | --- |
| apex | 0.20 / 0.45 | 0.73 / 1.17 |
| base | 0.11 / 0.28 | 0.37 / 0.60 |
| rv_insertion | 0.91 / 1.69 | 0.78 / 1.48 |
| AHA label agreement (mean / min) | 0.987 / 0.975 | 0.979 / 0.965 |

(agreement: both maps from `aha_segment_map`, truth landmarks vs found ones,
over the truth myocardium). Every geometric quality is 1.0 (net confidences
0.93–0.97). The thresholds below sit a little above the measured figures.
A storage-order twin (slices reversed, rows and columns swapped, geometry
rewritten to the same world) gives the same landmarks. A basal ring opened
over 60° (as the LVOT opens a real one) costs 1.3–1.8 mm and lowers the
base's quality through the `ring` check.
"""

from __future__ import annotations

import numpy as np
import pytest

from ctp_steps.aha import aha_segment_map
from ctp_steps.landmarks.geometric import LANDMARKS, GeometricLandmarks, geometric_landmarks
from ctp_steps.types import Geometry

EXTRA_NOISE_HU = 10.0
FINE = {"shape_zyx": (64, 120, 96), "spacing_zyx_mm": (1.5, 1.0, 1.25)}
TILTED = {"lv_axis_tilt_max_deg": 40.0}
GRIDS = [{}] * 6 + [FINE, FINE, TILTED]


@pytest.fixture(scope="module")
def cases():
    from ctp_steps.landmarks.data import phantom_case
    from ctp_steps.phantom import PhantomParams, make_specs

    specs = make_specs(len(GRIDS), [("GEO", "series_per_frame")], 18, role="test")
    out = []
    for i, (spec, update) in enumerate(zip(specs, GRIDS)):
        case = phantom_case(spec, PhantomParams(supersample=1, **update))
        rng = np.random.default_rng(1000 + i)
        case.image = case.image + rng.normal(0.0, EXTRA_NOISE_HU, case.image.shape).astype(np.float32)
        out.append(case)
    return out


@pytest.fixture(scope="module")
def found(cases):
    return [geometric_landmarks(c.image, c.mask, c.geometry) for c in cases]


def test_landmark_errors_and_segment_agreement(cases, found):
    errors, agreement = [], []
    for case, res in zip(cases, found):
        assert isinstance(res, GeometricLandmarks) and res.names == LANDMARKS
        assert res.failure is None and res.world_mm.shape == (3, 3), (case.patient_id, res.failure)
        assert (res.quality >= 0.9).all(), (case.patient_id, res.quality, res.checks)
        errors.append(np.linalg.norm(res.world_mm - case.landmarks, axis=1))
        myo = case.mask > 0
        truth = aha_segment_map(myo, case.geometry, *case.landmarks)
        assert (truth == case.aha17).all()  # the phantom's own map is this construction
        mine = aha_segment_map(myo, case.geometry, *res.world_mm)
        agreement.append(float((mine[myo] == truth[myo]).mean()))
    errors, agreement = np.array(errors), np.array(agreement)
    mean, worst = errors.mean(axis=0), errors.max(axis=0)
    assert mean[0] <= 0.35 and worst[0] <= 0.8, ("apex", errors[:, 0])
    assert mean[1] <= 0.2 and worst[1] <= 0.5, ("base", errors[:, 1])
    assert mean[2] <= 1.1 and worst[2] <= 2.2, ("rv_insertion", errors[:, 2])
    assert agreement.mean() >= 0.98 and agreement.min() >= 0.97, agreement
    # the other grids are no worse than the default one
    assert errors[6:8].mean() <= errors[:6].mean() + 0.3


def _storage_twin(image: np.ndarray, geometry: Geometry, *arrays: np.ndarray):
    """Slices reversed and rows/columns swapped, geometry rewritten so every voxel keeps its world position."""
    nz = image.shape[0]
    sx, sy, sz = geometry.spacing
    d = geometry.direction_matrix
    origin = np.asarray(geometry.origin) + d[:, 2] * sz * (nz - 1)
    direction = np.stack([d[:, 1], d[:, 0], -d[:, 2]], axis=1)
    twin = Geometry(tuple(origin.tolist()), (sy, sx, sz), tuple(direction.ravel().tolist()))
    flip = lambda a: np.ascontiguousarray(a[::-1].transpose(0, 2, 1))  # noqa: E731
    # index (x', y', z') of the twin = (y, x, nz − 1 − z) of the original
    probe = np.array([[3.0, 5.0, 7.0], [10.0, 2.0, 0.0]])
    back = np.stack([probe[:, 1], probe[:, 0], nz - 1 - probe[:, 2]], axis=1)
    np.testing.assert_allclose(twin.index_to_world(back), geometry.index_to_world(probe), atol=1e-9)
    return twin, flip(image), *(flip(a) for a in arrays)


def test_storage_order_does_not_change_the_answer(cases, found):
    for i in (0, 6):
        case = cases[i]
        twin_geometry, image, mask = _storage_twin(case.image, case.geometry, case.mask)
        twin = geometric_landmarks(image, mask, twin_geometry)
        np.testing.assert_allclose(twin.world_mm, found[i].world_mm, atol=1e-6)
        np.testing.assert_allclose(twin.quality, found[i].quality, atol=1e-9)


def test_an_open_basal_ring_degrades_gracefully(cases):
    """Myocardium removed from the basal fifth over 60° (the LVOT gap of a real basal ring)."""
    from ctp_steps.aha import long_axis_frame

    for i in (0, 6):
        case = cases[i]
        zyx = np.argwhere(case.mask > 0)
        world = case.geometry.index_to_world(zyx[:, ::-1].astype(float))
        t, theta, _ = long_axis_frame(*case.landmarks).coordinates(world)
        opened = case.mask.copy()
        opened[tuple(zyx[(t < 0.2) & (theta > 300.0)].T)] = 0
        res = geometric_landmarks(case.image, opened, case.geometry)
        errors = np.linalg.norm(res.world_mm - case.landmarks, axis=1)
        assert (errors <= 2.5).all(), (case.patient_id, errors)
        assert 0.7 <= res.checks["ring"] <= 0.95 and res.quality[1] < res.quality[0], res.checks


def test_ordinary_failures_are_results_not_exceptions(cases):
    case = cases[0]
    empty = geometric_landmarks(case.image, np.zeros_like(case.mask), case.geometry)
    assert np.isnan(empty.world_mm).all() and (empty.quality == 0).all()
    assert "fewer than" in empty.failure

    # no contrast: the long axis still comes from the mask, the RV insertion is not found
    flat = np.full(case.image.shape, 40.0, np.float32)
    res = geometric_landmarks(flat, case.mask, case.geometry)
    assert res.quality[0] > 0.9 and res.quality[1] > 0.9 and res.quality[2] == 0
    assert np.isnan(res.world_mm[2]).all() and res.failure.startswith("rv_insertion: no contrast")

    # a round shell: no long axis to speak of
    z, y, x = np.mgrid[:30, :30, :30] - 14.5
    r = np.sqrt(x * x + y * y + z * z)
    shell = ((r > 9) & (r < 13)).astype(np.uint8)
    ball = np.where(r <= 9, 200.0, 60.0).astype(np.float32)
    g = Geometry((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    res = geometric_landmarks(ball, shell, g)
    assert (res.quality < 0.5).all() and "not elongated" in res.failure

    with pytest.raises(ValueError, match="same 3-D grid"):
        geometric_landmarks(case.image[:-1], case.mask, case.geometry)


def _rotated_about(point, base, u, deg):
    d = np.asarray(point, float) - base
    a = (d @ u) * u
    p = d - a
    t = np.radians(deg)
    return base + a + p * np.cos(t) + np.cross(u, p) * np.sin(t)


def _angle_about(p, q, base, u):
    def unit(x):
        d = np.asarray(x, float) - base
        d = d - (d @ u) * u
        return d / np.linalg.norm(d)

    return float(np.degrees(np.arccos(np.clip(unit(p) @ unit(q), -1.0, 1.0))))


def test_rv_insertion_on_the_net_axis_placed_and_averaged_with_the_contact(cases):
    """The insertion is put where aha.py defines it whatever the net's position along the insertion line; a net
    direction 20° off is pulled halfway to the RV contact's; one 90° off is kept and the disagreement noted."""
    from ctp_steps.landmarks.geometric import lv_solid, rv_insertion_on_axis

    for case in cases[:4]:
        apex, base, rv = (np.asarray(p, float) for p in case.landmarks)
        u = (apex - base) / np.linalg.norm(apex - base)
        voxel = max(case.geometry.spacing)
        lv = lv_solid(case.image, case.mask, case.geometry)
        outward = (rv - base - ((rv - base) @ u) * u) / np.linalg.norm(rv - base - ((rv - base) @ u) * u)
        placed = rv_insertion_on_axis(lv, apex, base, rv + 12.0 * u, None)
        assert placed.direction == "net" and np.linalg.norm(placed.world_mm - rv) < 0.01  # back on its level
        out = rv_insertion_on_axis(lv, apex, base, rv + 12.0 * u + 3.0 * outward, None)
        assert np.linalg.norm(out.world_mm - (rv + 3.0 * outward)) < 0.01  # the net's distance from the axis kept
        hull_only = rv_insertion_on_axis(lv, apex, base, None, 0.5)
        assert hull_only.direction == "contact" and np.linalg.norm(hull_only.world_mm - rv) < 2.0 * voxel
        off = _rotated_about(rv, base, u, 20.0)
        both = rv_insertion_on_axis(lv, apex, base, off, 0.5)
        assert both.direction == "mean_of_net_and_contact" and both.contact_quality >= 0.5
        assert 17.0 < both.disagreement_deg < 23.0
        assert 7.0 < _angle_about(both.world_mm, rv, base, u) < 13.0
        wrong = rv_insertion_on_axis(lv, apex, base,
                                     _rotated_about(rv, base, u, 90.0), 0.5)
        assert wrong.direction == "net" and "from the net's insertion" in wrong.note
        assert abs(_angle_about(wrong.world_mm, rv, base, u) - 90.0) < 0.5
        aside = 100.0 * (rv - base - ((rv - base) @ u) * u) / np.linalg.norm(rv - base - ((rv - base) @ u) * u)
        assert rv_insertion_on_axis(lv, apex + aside, base + aside, rv + aside,
                                    0.5) is None  # an axis beside the LV: nothing to place the point on
        assert rv_insertion_on_axis(lv, base, base, rv, 0.5) is None  # no axis at all


def test_apex_on_the_axis_of_symmetry_and_the_stage_mean(cases):
    """From the true base the symmetry axis finds the epicardial apex within two voxels; the stage halves a net
    apex 6 mm off to the side and keeps (and notes) one that lies a fifth of the LV length away."""
    from ctp_steps.landmarks.config import LandmarkConfig
    from ctp_steps.landmarks.geometric import apex_on_axis_of_symmetry, lv_solid
    from ctp_steps.landmarks.stage import ChosenLandmarks, settle_apex

    for case in cases[:4]:
        apex, base, rv = (np.asarray(p, float) for p in case.landmarks)
        voxel = max(case.geometry.spacing)
        lv = lv_solid(case.image, case.mask, case.geometry)
        found = apex_on_axis_of_symmetry(lv, base)
        assert np.linalg.norm(found - apex) < 2.0 * voxel
        u = (apex - base) / np.linalg.norm(apex - base)
        side = np.cross(u, rv - base)
        side /= np.linalg.norm(side)

        def chosen_with(net_apex, method="heatmap"):
            return ChosenLandmarks(LANDMARKS, np.stack([net_apex, base, rv]), np.ones(3), (method, "heatmap", "heatmap"), [])

        settled = settle_apex(chosen_with(apex + 6.0 * side), lv, LandmarkConfig())
        assert settled.methods[0] == "heatmap+lv_axis" and "lv_axis" in settled.source
        assert np.linalg.norm(settled.world_mm[0] - apex) < 3.0 + 0.5 * voxel
        assert settled.notes["apex"]["net_vs_axis_mm"] == pytest.approx(np.linalg.norm(found - apex - 6.0 * side))
        far = apex + 0.25 * np.linalg.norm(apex - base) * side
        kept = settle_apex(chosen_with(far), lv, LandmarkConfig())
        assert np.array_equal(kept.world_mm[0], far) and "axis_note" in kept.notes["apex"]
        fallback = settle_apex(chosen_with(apex + 6.0 * side, "apex_from_base"), lv, LandmarkConfig())
        assert np.array_equal(fallback.world_mm[0], apex + 6.0 * side) and "apex" not in fallback.notes
