"""Displacement fields on disk: one 4D vector NIfTI (t, z, y, x; 3 components, world LPS mm).

Frame k's field follows ITK's displacement-field convention (a point p of the
reference frame maps to p + u_k(p) in frame k), so `sitk.DisplacementFieldTransform`
can use any 3D slice of it directly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctp_steps.types import Geometry

# Rounding to 1/256 mm (far below any registration error) lets gzip compress the fields well.
QUANTUM_MM = 1.0 / 256.0


def write_fields(path: str | Path, fields: np.ndarray, geometry: Geometry) -> None:
    import SimpleITK as sitk

    from ctp_steps.io import atomic_path

    if fields.ndim != 5 or fields.shape[-1] != 3:
        raise ValueError(f"fields must be (t, z, y, x, 3), got {fields.shape}")
    data = (np.round(fields / QUANTUM_MM) * QUANTUM_MM).astype(np.float32)
    image = sitk.GetImageFromArray(data, isVector=True)
    image.SetOrigin((*geometry.origin, 0.0))
    image.SetSpacing((*geometry.spacing, 1.0))
    d = np.eye(4)
    d[:3, :3] = geometry.direction_matrix
    image.SetDirection(tuple(d.ravel()))
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)


def read_fields(path: str | Path) -> tuple[np.ndarray, Geometry]:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    if image.GetDimension() != 4 or image.GetNumberOfComponentsPerPixel() != 3:
        raise ValueError(f"{path}: expected a 4D image of 3-vectors")
    d4 = np.asarray(image.GetDirection()).reshape(4, 4)
    geometry = Geometry(
        tuple(image.GetOrigin()[:3]), tuple(image.GetSpacing()[:3]), tuple(float(v) for v in d4[:3, :3].ravel())
    )
    return sitk.GetArrayFromImage(image), geometry
