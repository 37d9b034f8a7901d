"""The synthetic CT-MPI phantom: determinism, seeds, truth statistics, image formation, DICOM, truth files."""

import json
from datetime import datetime

import numpy as np
import pydicom
import pytest
from scipy.ndimage import binary_erosion, maximum_filter, minimum_filter

from ctp_steps.aha import TERRITORY_SEGMENTS
from ctp_steps.io import read_json, read_series, read_volume
from ctp_steps.phantom import (
    VENDOR_STYLES,
    PatientSpec,
    PhantomParams,
    displacement_field_mm,
    generate_patient,
    make_specs,
    true_imv_pct,
    write_dicom,
    write_truth,
)
from ctp_steps.phantom.params import patient_rng
from ctp_steps.phantom.perfusion import draw_perfusion

TINY = PhantomParams(shape_zyx=(24, 48, 48), spacing_zyx_mm=(5.0, 4.0, 4.0), n_frames=(10, 14))
CENTERS = [("CTR-A", "series_per_frame"), ("CTR-B", "temporal_position"), ("CTR-C", "trigger_time")]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny grids render faster on one thread


def _n_ischemic(spec: PatientSpec) -> int:
    return len(draw_perfusion(patient_rng(spec.seed, "perfusion"), TINY).ischemia)


@pytest.fixture(scope="module")
def cohort() -> list:
    """Six tiny patients: two without ischemia, two with one, two with two ischemic territories."""
    specs = make_specs(60, CENTERS, seed=2024, role="validation")
    chosen = [s for n in (0, 1, 2) for s in [s for s in specs if _n_ischemic(s) == n][:2]]
    return [generate_patient(s, TINY) for s in chosen]


def world_centroid(mask: np.ndarray, geometry) -> np.ndarray:
    return geometry.index_to_world(np.argwhere(mask)[:, ::-1].astype(float)).mean(axis=0)


# --- specs, seeds, params ---------------------------------------------------------------------


def test_make_specs_ids_centers_and_roles():
    specs = make_specs(7, CENTERS, seed=1)
    assert [s.patient_id for s in specs] == [f"S{i:04d}" for i in range(1, 8)]
    assert [s.center for s in specs] == ["CTR-A", "CTR-B", "CTR-C"] * 2 + ["CTR-A"]
    assert [s.vendor_style for s in specs[:3]] == list(VENDOR_STYLES)
    assert make_specs(7, CENTERS, seed=1) == specs
    assert make_specs(2, CENTERS, seed=1, role="train")[0].patient_id == "T0001"
    assert make_specs(2, CENTERS, seed=1, role="validation")[1].patient_id == "V0002"
    with pytest.raises(ValueError):
        make_specs(2, CENTERS, seed=1, role="holdout")
    with pytest.raises(ValueError):
        PatientSpec("S0001", "CTR-A", "no_such_vendor", 1)


def test_roles_never_share_seeds():
    seeds = {
        role: {s.seed for s in make_specs(500, CENTERS, seed=7, role=role)}
        for role in ("cohort", "train", "validation", "test")
    }
    assert all(len(v) == 500 for v in seeds.values())
    roles = list(seeds)
    for i, a in enumerate(roles):
        for b in roles[i + 1 :]:
            assert not seeds[a] & seeds[b], (a, b)
    assert max(max(v) for v in seeds.values()) < 2**53  # exact in JSON


def test_params_validation_and_round_trip():
    assert PhantomParams.model_validate_json(TINY.model_dump_json()) == TINY
    for bad in (
        {"noise_sd_hu": (30.0, 10.0)},
        {"spacing_zyx_mm": (3.0, 0.0, 2.5)},
        {"ischemic_territory_probs": (0.5, 0.5, 0.5)},
        {"ischemic_mbf": (50.0, 180.0)},
        {"no_such_field": 1},
    ):
        with pytest.raises(ValueError):
            PhantomParams(**bad)
    assert all(f.description for f in PhantomParams.model_fields.values())


# --- determinism and frames ---------------------------------------------------------------------


def test_generation_is_bit_identical(cohort):
    a = cohort[2]
    b = generate_patient(a.spec, TINY)
    for name in ("frames_hu", "frame_times_s", "labels", "frame_labels", "mbf", "aha17"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert json.dumps(a.truth, sort_keys=True) == json.dumps(b.truth, sort_keys=True)
    other = generate_patient(cohort[3].spec, TINY)
    assert not np.array_equal(a.frames_hu[0], other.frames_hu[0])


def test_frames_and_timing(cohort):
    for p in cohort:
        t = p.frame_times_s
        assert TINY.n_frames[0] <= len(t) <= TINY.n_frames[1]
        assert t[0] == 0.0 and np.all(np.diff(t) > 0.5)
        assert TINY.duration_s[0] - 1e-3 <= t[-1] <= TINY.duration_s[1] + 1e-3
        assert np.array_equal(t, np.round(t, 3))
        assert p.frames_hu.dtype == np.float32 and p.frames_hu.shape == (len(t), *TINY.shape_zyx)
        assert p.frame_labels.shape == p.frames_hu.shape and p.labels.shape == TINY.shape_zyx
        assert p.frames_hu.min() >= -1024 and p.frames_hu.max() <= 3071
        assert TINY.noise_sd_hu[0] <= p.noise_sd_hu <= TINY.noise_sd_hu[1] and p.kvp in TINY.kvp_choices
        assert set(np.unique(p.labels).tolist()) == {0, 1, 2, 3, 4}


def test_aif_truth_and_measured_aorta(cohort):
    for p in cohort:
        tr = p.truth
        arrival, t = tr["bolus_arrival_s"], p.frame_times_s
        assert TINY.aif_arrival_s[0] <= arrival <= TINY.aif_arrival_s[1]
        assert np.count_nonzero(t < arrival) >= 2  # baseline frames
        assert TINY.aif_peak_hu[0] <= tr["aif_peak_hu"] <= TINY.aif_peak_hu[1] + 1e-6
        assert (
            TINY.aif_time_to_peak_s[0] - 0.01
            <= tr["aif_peak_time_s"] - arrival
            <= TINY.aif_time_to_peak_s[1] + 0.01
        )
        aif = np.asarray(tr["aif"])
        assert np.all(aif[t < arrival] == 0) and aif.max() <= tr["aif_peak_hu"]
        # the image agrees: aorta core (eroded label of each frame) minus baseline ≈ true AIF
        f = int(np.argmax(aif))
        core = binary_erosion(p.frame_labels[f] == 1, iterations=1)
        measured = p.frames_hu[f][core].mean() - tr["baseline_hu"]["blood"]
        assert abs(measured - aif[f]) < 0.08 * aif[f] + 3 * p.noise_sd_hu / np.sqrt(core.sum())
        k = tr["kinetics"]
        assert k["rv_first_pass"]["arrival_s"] < arrival - k["lv_lead_s"] < arrival


# --- true MBF map, IMV, segments ------------------------------------------------------------------


def test_mbf_statistics_per_territory(cohort):
    lo, hi = TINY.normal_mbf
    ilo, ihi = TINY.ischemic_mbf
    thr = TINY.ischemia_threshold_mbf
    for p in cohort:
        tr = p.truth
        het = tr["ischemia"]["heterogeneity"]
        myo = p.labels == 3
        ischemic = set(tr["ischemia"]["territories"])
        assert ischemic <= {"LAD", "RCA", "LCX"}
        low = myo & (p.mbf < thr)
        in_ischemic = np.isin(p.aha17, [s for terr in ischemic for s in TERRITORY_SEGMENTS[terr]])
        for terr, segs in TERRITORY_SEGMENTS.items():
            voxels = p.mbf[np.isin(p.aha17, segs)]
            assert tr[f"mbf_{terr.lower()}"] == pytest.approx(voxels.mean(), rel=1e-6)
            if terr in ischemic:
                assert ilo <= tr["ischemia"]["severity_mbf"][terr] <= ihi
                core = voxels[voxels < thr]
                assert core.size and ilo * (1 - het) - 1 <= core.mean() <= ihi
            else:
                assert lo * (1 - het) <= voxels.mean() <= hi * (1 + het)
        if ischemic:
            assert tr["imv_pct"] > 1.0
            assert np.count_nonzero(low & in_ischemic) >= 0.9 * np.count_nonzero(low)
        else:
            assert tr["imv_pct"] == 0.0 and p.mbf[myo].min() > lo * (1 - het) - 1


def test_imv_and_volumes_match_the_maps(cohort):
    voxel_ml = np.prod(TINY.spacing_zyx_mm) / 1000
    for p in cohort:
        tr = p.truth
        myo = p.labels == 3
        assert np.all(p.mbf[~myo] == 0) and np.all(p.mbf[myo] > 0)
        assert np.array_equal(p.aha17 > 0, myo) and p.aha17.max() <= 17
        assert tr["imv_pct"] == pytest.approx(
            100 * np.count_nonzero(myo & (p.mbf < 100)) / np.count_nonzero(myo)
        )
        assert tr["imv_ml"] == pytest.approx(np.count_nonzero(myo & (p.mbf < 100)) * voxel_ml)
        assert tr["myocardium_ml"] == pytest.approx(myo.sum() * voxel_ml)
        assert 40 < tr["myocardium_ml"] < 200  # an adult LV
        assert tr["mbf_global"] == pytest.approx(p.mbf[myo].mean(), rel=1e-6)
        seg_means = [p.mbf[p.aha17 == s].mean() for s in range(1, 18)]
        assert tr["mbf_segments"] == pytest.approx(seg_means, rel=1e-6)


def test_true_imv_pct_without_rendering(cohort):
    for p in cohort:
        assert true_imv_pct(p.spec, TINY) == p.truth["imv_pct"]


def test_septal_segments_face_the_rv(cohort):
    for p in cohort:
        rv = world_centroid(p.labels == 4, p.geometry)
        lv = world_centroid(p.labels == 2, p.geometry)
        septal = world_centroid(np.isin(p.aha17, (2, 3, 8, 9)), p.geometry)
        lateral = world_centroid(np.isin(p.aha17, (5, 6, 11, 12)), p.geometry)
        assert np.linalg.norm(septal - rv) < np.linalg.norm(lateral - rv)
        axis = np.subtract(p.truth["landmarks"]["apex"], p.truth["landmarks"]["base"])
        assert np.linalg.norm(axis) == pytest.approx(p.truth["anatomy"]["lv_length_mm"])
        assert np.dot(axis / np.linalg.norm(axis), [1, -1, -1]) / np.sqrt(3) > np.cos(np.radians(16))
        assert np.dot(septal - lv, lateral - lv) < 0


def test_rv_span_turns_the_insertion_about_the_long_axis():
    """A wider RV (half-angle 80° instead of 60°) moves the anterior insertion 20° away from the septum's centre
    and grows the RV; the LV and the rest of the patient's random stream stay as they were."""
    spec = make_specs(1, CENTERS[:1], seed=77, role="validation")[0]
    narrow = generate_patient(spec, TINY)
    wide = generate_patient(spec, TINY.model_copy(update={"rv_half_angle_deg": (80.0, 80.0)}))
    assert narrow.truth["anatomy"]["rv_half_angle_deg"] == 60 and wide.truth["anatomy"]["rv_half_angle_deg"] == 80
    for name in ("apex", "base"):
        np.testing.assert_allclose(wide.truth["landmarks"][name], narrow.truth["landmarks"][name])
    base, apex = (np.asarray(narrow.truth["landmarks"][n]) for n in ("base", "apex"))
    u = (apex - base) / np.linalg.norm(apex - base)

    def radial(p):
        d = np.asarray(p) - base
        return d - (d @ u) * u

    a, b = radial(narrow.truth["landmarks"]["rv_insertion"]), radial(wide.truth["landmarks"]["rv_insertion"])
    turned = np.degrees(np.arccos(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
    assert turned == pytest.approx(20.0, abs=0.5)
    # the thickest point at 35 % of the span instead of the middle: the anterior insertion 18° nearer the septum
    skewed = generate_patient(spec, TINY.model_copy(update={"rv_septum_fraction": (0.35, 0.35)}))
    c = radial(skewed.truth["landmarks"]["rv_insertion"])
    assert np.degrees(np.arccos(a @ c / np.linalg.norm(a) / np.linalg.norm(c))) == pytest.approx(18.0, abs=0.5)
    np.testing.assert_array_equal(skewed.labels == 2, narrow.labels == 2)
    grown = np.count_nonzero(wide.labels == 4) / np.count_nonzero(narrow.labels == 4)
    assert 1.15 < grown < 1.6, grown  # a 160° crescent against a 120° one (same thickness profile)
    np.testing.assert_array_equal(wide.labels == 2, narrow.labels == 2)


# --- motion and noise -----------------------------------------------------------------------------


def test_displacement_field_convention():
    from ctp_steps.types import Geometry

    g = Geometry((0.0, 0.0, 0.0), (2.0, 2.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    shift = {"translation_mm": [1.0, -2.0, 3.0], "modes": []}
    u = displacement_field_mm(shift, g, (4, 5, 6))
    assert u.shape == (4, 5, 6, 3) and np.allclose(u, [1.0, -2.0, 3.0])
    bump = {
        "translation_mm": [0, 0, 0],
        "modes": [{"center_mm": [4.0, 6.0, 9.0], "sigma_mm": 5.0, "vector_mm": [0, 0, 2.0]}],
    }
    u = displacement_field_mm(bump, g, (8, 8, 8))
    assert u[3, 3, 2, 2] == pytest.approx(2.0) and u[3, 3, 2, :2].tolist() == [0, 0]
    assert u[0, 0, 0, 2] == pytest.approx(2.0 * np.exp(-(16 + 36 + 81) / 50), rel=1e-5)


def test_motion_moves_the_labels_as_stated(cohort):
    """LV centroid shift between frames = −(mean displacement over the LV), the pull-back convention."""
    biggest = 0.0
    for p in cohort:
        frames = p.truth["motion"]["frames"]
        ref = p.labels == 2
        expected = np.stack(
            [-displacement_field_mm(m, p.geometry, ref.shape)[ref].mean(axis=0) for m in frames]
        )
        measured = np.stack([world_centroid(fl == 2, p.geometry) for fl in p.frame_labels])
        assert np.abs((measured - measured[0]) - (expected - expected[0])).max() < 0.75
        assert np.abs(measured - world_centroid(ref, p.geometry) - expected).max() < 1.0
        biggest = max(biggest, np.abs(expected - expected[0]).max())
        for m in frames:
            assert np.all(
                np.abs(m["translation_mm"]) <= TINY.rigid_shift_max_mm * np.array([0.4, 0.4, 1.0]) + 1e-9
            )
            assert all(
                np.linalg.norm(mode["vector_mm"]) <= TINY.deformation_max_mm + 1e-9 for mode in m["modes"]
            )
    assert biggest > 2.0  # the test has teeth


def test_no_motion_leaves_labels_in_place():
    still = TINY.model_copy(update={"rigid_shift_max_mm": 0.0, "deformation_max_mm": 0.0})
    p = generate_patient(make_specs(1, CENTERS, seed=3, role="test")[0], still)
    assert all(np.array_equal(fl, p.labels) for fl in p.frame_labels)


def test_noise_sd_in_a_homogeneous_region(cohort):
    p = cohort[0]
    clean = generate_patient(p.spec, TINY.model_copy(update={"noise_sd_hu": (0.0, 0.0)})).frames_hu
    i, j = 0, len(clean) - 1
    flat = np.ones(clean.shape[1:], dtype=bool)
    for f in (i, j):
        flat &= (maximum_filter(clean[f], size=3) - minimum_filter(clean[f], size=3)) < 0.5
    flat &= (np.abs(clean[i] - clean[j]) < 0.01) & (clean[i] > -500)  # static soft tissue
    assert flat.sum() > 2000
    measured = np.std(p.frames_hu[i][flat] - p.frames_hu[j][flat]) / np.sqrt(2)
    assert measured == pytest.approx(p.noise_sd_hu, rel=0.15)


# --- DICOM ----------------------------------------------------------------------------------------


def _tm_seconds(tm: str) -> float:
    t = datetime.strptime(tm, "%H%M%S.%f")
    return t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6


@pytest.mark.parametrize("style", VENDOR_STYLES)
def test_dicom_styles(cohort, tmp_path, style):
    p = cohort[1]
    paths = write_dicom(p, tmp_path, style)
    n_t, n_z = p.frames_hu.shape[:2]
    assert len(paths) == n_t * n_z and len(set(paths)) == len(paths)
    assert sorted(paths) == sorted(f for f in tmp_path.rglob("*") if f.is_file())
    z_index = {round(p.geometry.origin[2] + k * p.geometry.spacing[2], 3): k for k in range(n_z)}
    seen, series, acq_times, frame_time = {}, set(), set(), {}
    for path in paths:
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == pydicom.uid.CTImageStorage and ds.Modality == "CT"
        assert (ds.Rows, ds.Columns) == p.frames_hu.shape[2:] and "NumberOfFrames" not in ds
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(v) for v in ds.PixelSpacing] == [p.geometry.spacing[1], p.geometry.spacing[0]]
        assert str(ds.PatientName) == f"SYNTHETIC^{p.spec.patient_id}" and ds.PatientBirthDate
        assert float(ds.KVP) == p.kvp and float(ds.SliceThickness) == p.geometry.spacing[2]
        pixels = ds.pixel_array
        assert pixels.dtype == (np.uint16 if ds.PixelRepresentation == 0 else np.int16)
        assert pixels.min() >= -(2**15) and pixels.max() < 2**15
        series.add(ds.SeriesInstanceUID)
        acq_times.add(ds.AcquisitionTime)
        if style == "series_per_frame":
            t = _tm_seconds(ds.AcquisitionTime)
            key = ds.SeriesInstanceUID
        elif style == "temporal_position":
            assert ds.NumberOfTemporalPositions == n_t
            t = _tm_seconds(ds.ContentTime)
            key = int(ds.TemporalPositionIdentifier)
        else:
            assert (
                "TemporalPositionIdentifier" not in ds
                and path.suffix == ""
                and len(path.relative_to(tmp_path).parts) == 3
            )
            t = float(ds.TriggerTime) / 1000.0
            key = t
        frame_time.setdefault(key, t)
        k = z_index[round(float(ds.ImagePositionPatient[2]), 3)]
        seen[(key, k)] = (ds.InstanceNumber, float(ds.RescaleSlope) * pixels + float(ds.RescaleIntercept))
    assert len(seen) == n_t * n_z
    times = np.sort(np.asarray(list(frame_time.values())))
    times -= times[0] if style != "trigger_time" else 0.0
    assert np.abs(times - p.frame_times_s).max() < 1e-3
    order = {key: f for f, key in enumerate(sorted(frame_time, key=frame_time.get))}
    for (key, k), (_, hu) in seen.items():
        assert np.abs(hu - p.frames_hu[order[key], k]).max() <= 0.5 + 1e-3
    assert len(series) == (n_t if style == "series_per_frame" else 1)
    if style != "series_per_frame":
        assert len(acq_times) == 1  # a naive converter reading AcquisitionTime sees one time point
    first_frame = order[min(frame_time, key=frame_time.get)]
    numbers = {k: n for (key, k), (n, _) in seen.items() if order[key] == first_frame}
    head_first = min(numbers, key=numbers.get) == n_z - 1
    assert head_first == (style != "temporal_position")


def test_dicom_is_deterministic(cohort, tmp_path):
    p = cohort[1]
    a = write_dicom(p, tmp_path / "a", "trigger_time")
    b = write_dicom(p, tmp_path / "b", "trigger_time")
    assert [x.relative_to(tmp_path / "a") for x in a] == [x.relative_to(tmp_path / "b") for x in b]
    assert a[5].read_bytes() == b[5].read_bytes()


# --- truth files ----------------------------------------------------------------------------------


def test_write_truth(cohort, tmp_path):
    p = cohort[2]
    write_truth(p, tmp_path)
    for name, expected, dtype in (
        ("labels", p.labels, np.uint8),
        ("mbf", p.mbf, np.float32),
        ("aha17", p.aha17, np.uint8),
    ):
        arr, geometry = read_volume(tmp_path / f"{name}.nii.gz")
        assert (
            arr.dtype == dtype and np.array_equal(arr, expected) and geometry.allclose(p.geometry, atol=1e-6)
        )
    frames, geometry = read_series(tmp_path / "frame_labels.nii.gz")
    assert np.array_equal(frames, p.frame_labels) and geometry.allclose(p.geometry, atol=1e-6)
    truth = read_json(tmp_path / "truth.json")
    for key in (
        "landmarks",
        "myocardium_ml",
        "imv_ml",
        "imv_pct",
        "mbf_lad",
        "mbf_rca",
        "mbf_lcx",
        "mbf_global",
        "mbf_segments",
        "frame_times_s",
        "aif",
        "aif_peak_hu",
        "aif_peak_time_s",
        "bolus_arrival_s",
        "baseline_hu",
        "noise_sd_hu",
        "kvp",
        "vendor_style",
        "seed",
        "role",
        "ischemia",
        "motion",
    ):
        assert key in truth, key
    assert truth["seed"] == p.spec.seed and len(truth["mbf_segments"]) == 17
    assert set(truth["landmarks"]) == {"apex", "base", "rv_insertion"}
    for point in truth["landmarks"].values():
        ijk = p.geometry.world_to_index(np.asarray(point))
        assert np.all(ijk >= 0) and np.all(ijk <= np.asarray(TINY.shape_zyx[::-1]) - 1)
    u = displacement_field_mm(truth["motion"]["frames"][3], p.geometry, p.labels.shape)
    assert np.array_equal(
        u, displacement_field_mm(p.truth["motion"]["frames"][3], p.geometry, p.labels.shape)
    )


def test_native_grid_rendering_keeps_anatomy_noise_and_determinism():
    """A patient on a sub-millimetre native grid: the same field of view and myocardium as its anatomy grid,
    the drawn noise SD on the native voxels, and the same frames on every call."""
    from ctp_steps.phantom.native import native_frames, native_study, native_truth
    from ctp_steps.phantom.params import NativeGrid

    (spec,) = make_specs(1, [("CTR-N", "temporal_position")], seed=11, role="test")
    grid = NativeGrid(shape_zyx=(10, 256, 256), spacing_zyx_mm=(6.0, 0.8, 0.8))
    params = PhantomParams(n_frames=(8, 8))
    study = native_study(spec, params, grid)
    clean = study.clean
    assert clean.geometry.spacing == pytest.approx((1.0, 1.0, 6.0), rel=0.01)  # anatomy at >= 1 mm
    # same outer box of the field of view
    lo_native = np.asarray(study.geometry.origin) - np.asarray(study.geometry.spacing) / 2
    lo_anatomy = np.asarray(clean.geometry.origin) - np.asarray(clean.geometry.spacing) / 2
    np.testing.assert_allclose(lo_native, lo_anatomy, atol=1e-6)

    truth = native_truth(study)
    voxel_ml = float(np.prod(grid.spacing_zyx_mm)) / 1000
    native_myo_ml = (truth["labels"] == 3).sum() * voxel_ml
    assert native_myo_ml == pytest.approx((clean.labels == 3).sum() * clean.geometry.voxel_ml, rel=0.03)

    frames = list(native_frames(study))
    assert len(frames) == 8 and frames[0].shape == grid.shape_zyx and frames[0].dtype == np.float32
    again = next(native_frames(study))
    np.testing.assert_array_equal(frames[0], again)
    # noise: native frame minus the interpolated clean frame, away from the clipped air
    from ctp_steps.phantom.native import interpolate_linear

    smooth = interpolate_linear(clean.frames_hu[0], clean.geometry.spacing[::-1], grid.shape_zyx, grid.spacing_zyx_mm)
    body = smooth > -500
    assert np.std((frames[0] - smooth)[body]) == pytest.approx(clean.noise_sd_hu, rel=0.05)
    # the LV blood pool enhances on the native grid as on the anatomy grid
    peak = int(np.argmax([f[truth["labels"] == 2].mean() for f in frames]))
    lv_native = frames[peak][truth["labels"] == 2].mean()
    assert lv_native == pytest.approx(clean.frames_hu[peak][clean.labels == 2].mean(), abs=15.0)
