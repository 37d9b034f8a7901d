"""Canonical voxel order: storage order and direction cosines do not change what the stages see."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from ctp_steps.convert import conversion_facts, convert_dicom_series
from ctp_steps.orientation import canonical_reorder, stored_orientation, to_canonical
from ctp_steps.phantom import PhantomParams, generate_patient, make_specs, write_dicom
from ctp_steps.types import Geometry


def _signed_permutation(rng: np.random.Generator) -> np.ndarray:
    d = np.zeros((3, 3))
    for i, w in enumerate(rng.permutation(3)):
        d[w, i] = rng.choice([-1.0, 1.0])
    return d


def test_every_voxel_keeps_its_world_position():
    """48 signed permutations and an oblique stack: values move with their world positions, nothing resampled."""
    rng = np.random.default_rng(0)
    series = rng.normal(size=(3, 4, 5, 6))
    tilt = np.deg2rad(12.0)
    oblique = np.array([[np.cos(tilt), 0, -np.sin(tilt)], [0, 1, 0], [np.sin(tilt), 0, np.cos(tilt)]])
    for d in [*(_signed_permutation(rng) for _ in range(48)), oblique @ np.diag([-1.0, 1.0, -1.0])]:
        g = Geometry((10.0, -20.0, 5.0), (0.7, 0.8, 2.5), tuple(d.ravel()))
        out, g_out, _ = to_canonical(series, g)
        assert sorted(out.shape) == sorted(series.shape) and out.shape[0] == 3
        assert np.all(np.diag(g_out.direction_matrix) > 0.9), g_out.direction_matrix
        zyx = np.stack(np.meshgrid(*[np.arange(n) for n in series.shape[1:]], indexing="ij"), -1).reshape(-1, 3)
        world = g.index_to_world(zyx[:, ::-1].astype(float))
        ijk = g_out.world_to_index(world)
        assert np.allclose(ijk, np.rint(ijk), atol=1e-9)
        k = np.rint(ijk).astype(int)
        assert np.array_equal(out[:, k[:, 2], k[:, 1], k[:, 0]], series[:, zyx[:, 0], zyx[:, 1], zyx[:, 2]])


def test_canonical_input_is_left_untouched():
    g = Geometry((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    volume = np.arange(24.0).reshape(2, 3, 4)
    out, g_out, reorder = to_canonical(volume, g)
    assert reorder.is_identity and out is volume and g_out == g
    assert stored_orientation(g) == "L,P,S"
    assert canonical_reorder(Geometry((0, 0, 0), (1, 1, 1), (-1, 0, 0, 0, 1, 0, 0, 0, -1))).flip == (True, False, True)


def restore_in_storage_order(folder: Path, flip_row: bool, flip_column: bool) -> None:
    """Rewrite an axial export so the same world voxels are stored mirrored: feet-first storage
    (row towards the patient's right, slices foot to head) or flipped column cosines."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        ds = pydicom.dcmread(path, force=True)  # some vendor styles write no Part-10 header
        if "PixelData" not in ds:  # a DICOMDIR or a non-image object: not part of the voxel order
            continue
        dtype = np.dtype(f"<{'i' if ds.PixelRepresentation else 'u'}{ds.BitsAllocated // 8}")  # uncompressed
        pixels = np.frombuffer(ds.PixelData, dtype=dtype).reshape(ds.Rows, ds.Columns)
        row, col = np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
        position = np.array(ds.ImagePositionPatient, float)
        col_mm, row_mm = (float(v) for v in ds.PixelSpacing)  # DICOM: row spacing (between rows) first
        if flip_row:
            position = position + row * row_mm * (ds.Columns - 1)
            row, pixels = -row, pixels[:, ::-1]
        if flip_column:
            position = position + col * col_mm * (ds.Rows - 1)
            col, pixels = -col, pixels[::-1, :]
        ds.ImageOrientationPatient = [float(v) for v in (*row, *col)]
        ds.ImagePositionPatient = [round(float(v), 4) for v in position]
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        ds.save_as(path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    params = PhantomParams(shape_zyx=(6, 24, 28), spacing_zyx_mm=(5.0, 4.0, 3.5), supersample=1, n_frames=(9, 9))
    (spec,) = make_specs(1, [("c1", "temporal_position")], seed=31, role="test")
    folder = tmp_path_factory.mktemp("orientation") / "plain"
    write_dicom(generate_patient(spec, params), folder, "temporal_position")
    return folder


@pytest.mark.parametrize(
    ("flip_row", "flip_column", "stored"),
    [(True, False, "R,P,I"), (False, True, "L,A,I"), (True, True, "R,A,S")],
    ids=["feet_first", "flipped_columns", "both"],
)
def test_storage_order_twins_convert_to_the_same_voxels(exported, tmp_path, flip_row, flip_column, stored):
    """The same study stored in another voxel order gives the same array and geometry: every later stage
    reads only these, so masks, landmarks and MBF of the twins are the same."""
    import shutil

    twin_dir = tmp_path / "twin"
    shutil.copytree(exported, twin_dir)
    restore_in_storage_order(twin_dir, flip_row, flip_column)
    plain, twin = convert_dicom_series(exported), convert_dicom_series(twin_dir)
    assert conversion_facts(plain)["stored_orientation"] == "L,P,S"
    assert conversion_facts(twin)["stored_orientation"] == stored
    assert np.array_equal(plain.hu, twin.hu)
    assert twin.geometry.allclose(plain.geometry, atol=1e-4)
    assert np.allclose(twin.frame_times_s, plain.frame_times_s)
