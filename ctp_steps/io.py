"""Reading and writing images, JSON records and Parquet tables, atomically.

Atomic writes (temp file + rename) mean an interrupted job never leaves a
half-written file that a later run would take for a result.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ctp_steps.types import Geometry, StageStatus, UpstreamExcluded


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide results from a cluster's other users
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _to_sitk(array: np.ndarray, geometry: Geometry):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetOrigin(geometry.origin)
    image.SetSpacing(geometry.spacing)
    image.SetDirection(geometry.direction)
    return image


def geometry_of(image) -> Geometry:
    """Geometry of a 3D SimpleITK image."""
    return Geometry(tuple(image.GetOrigin()), tuple(image.GetSpacing()), tuple(image.GetDirection()))


def write_volume(path: str | Path, array_zyx: np.ndarray, geometry: Geometry) -> None:
    """Write one (z, y, x) volume as NIfTI with its world geometry."""
    import SimpleITK as sitk

    with atomic_path(path) as tmp:
        sitk.WriteImage(_to_sitk(array_zyx, geometry), str(tmp), useCompression=True)


def read_volume(path: str | Path) -> tuple[np.ndarray, Geometry]:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    if image.GetDimension() != 3:
        raise ValueError(f"{path}: expected a 3D image, found {image.GetDimension()}D")
    return sitk.GetArrayFromImage(image), geometry_of(image)


def write_series(path: str | Path, array_tzyx: np.ndarray, geometry: Geometry) -> None:
    """Write a dynamic series (t, z, y, x) as a 4D NIfTI; frame times live in frames.json."""
    import SimpleITK as sitk

    frames = [_to_sitk(np.ascontiguousarray(f), geometry) for f in array_tzyx]
    image = sitk.JoinSeries(frames)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)


def read_series(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """Read a 4D NIfTI as (t, z, y, x) plus the geometry of its 3D frames."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    if image.GetDimension() != 4:
        raise ValueError(f"{path}: expected a 4D series, found {image.GetDimension()}D")
    d4 = np.asarray(image.GetDirection()).reshape(4, 4)
    geometry = Geometry(
        tuple(image.GetOrigin()[:3]),
        tuple(image.GetSpacing()[:3]),
        tuple(d4[:3, :3].ravel()),
    )
    return sitk.GetArrayFromImage(image), geometry


def write_status(path: str | Path, status: StageStatus) -> None:
    write_json(path, status.to_dict())


def read_status(path: str | Path) -> StageStatus:
    d = read_json(path)
    return StageStatus(d["stage"], d["status"], d.get("reason"), d.get("record", {}))


def require_ok(status_path: str | Path) -> None:
    """Raise UpstreamExcluded carrying the upstream reason and status unless the upstream stage was ok."""
    status = read_status(status_path)
    if status.status != "ok":
        raise UpstreamExcluded(status.reason or f"{status.stage}: {status.status}", status.status)


def write_parquet(path: str | Path, table, metadata: dict[str, str] | None = None) -> None:
    """Write a pandas DataFrame or pyarrow Table as zstd Parquet, atomically, with metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): v.encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
