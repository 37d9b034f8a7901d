"""Pixel pass: decode each kept file once through pydicom's pixel-data plugins and rescale to HU.

Compressed transfer syntaxes (JPEG-LS, JPEG 2000, JPEG lossless, RLE) decode
through the plugins the project declares (pylibjpeg with its libjpeg and
openjpeg back-ends, pyjpegls, Pillow); pydicom decodes RLE and the native
syntaxes itself. A syntax without an available decoder is a one-line reason
naming the syntax, not a decoder's multi-line plugin report.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from ctp_steps.convert.headers import Image, image_where, one_line, where
from ctp_steps.types import PatientInputError


def read_hu(
    images: list[Image], frames: list[list[int]], dicom_dir: Path, block: tuple[int, int, int] = (1, 1, 1)
) -> tuple[np.ndarray, list[str]]:
    """(t, z, y, x) float32 HU, each slice rescaled with its own slope and intercept; and the syntaxes decoded.

    `block` (slices, rows, columns) > 1 averages that many native voxels into one working voxel, frame
    by frame: only one native frame is ever held as float (trailing voxels that do not fill a block are
    dropped). A file is decoded once even when it holds slices of several frames (Enhanced CT).
    """
    s0 = images[frames[0][0]]
    nz = len(frames[0])
    native_frame = (nz, s0.rows, s0.cols)
    out_frame = tuple(n // b for n, b in zip(native_frame, block))
    if min(out_frame) < 1:
        raise ValueError(f"block {block} larger than the frame {native_frame}")
    hu = np.empty((len(frames), *out_frame), dtype=np.float32)
    whole = block == (1, 1, 1)
    buffer = None if whole else np.empty(native_frame, dtype=np.float32)
    files_of_frame: list[dict[Path, list[tuple[int, Image]]]] = []
    remaining: dict[Path, int] = defaultdict(int)  # frames still to read from each file
    for frame in frames:
        by_file: dict[Path, list[tuple[int, Image]]] = defaultdict(list)
        for z, i in enumerate(frame):
            by_file[images[i].path].append((z, images[i]))
        for path in by_file:
            remaining[path] += 1
        files_of_frame.append(by_file)
    decoded: dict[Path, np.ndarray] = {}  # files needed by a later frame (multi-frame files)
    syntaxes: set[str] = set()
    for t, by_file in enumerate(files_of_frame):
        target = hu[t] if whole else buffer
        for path, placed in by_file.items():
            if path in decoded:
                pixels = decoded[path]
            else:
                pixels, syntax = _decode(placed[0][1], dicom_dir)
                syntaxes.add(syntax)
            remaining[path] -= 1
            if remaining[path] > 0:
                decoded[path] = pixels
            else:
                decoded.pop(path, None)
            for z, image in placed:
                plane = pixels if image.frame is None or pixels.ndim == 2 else pixels[image.frame]
                if plane.shape != (image.rows, image.cols):
                    raise PatientInputError(
                        f"{image_where(image, dicom_dir)}: pixel data cannot be decoded: shape {plane.shape}, "
                        f"expected ({image.rows}, {image.cols})"
                    )
                target[z] = plane.astype(np.float64) * image.slope + image.intercept
        if not whole:
            hu[t] = block_mean(buffer, block)
    return hu, sorted(syntaxes)


def block_mean(volume: np.ndarray, block: tuple[int, int, int]) -> np.ndarray:
    """Mean over (bz, by, bx) blocks (float64 sums, float32 result); trailing partial blocks dropped."""
    nz, ny, nx = (n // b for n, b in zip(volume.shape, block))
    bz, by, bx = block
    trimmed = volume[: nz * bz, : ny * by, : nx * bx]
    sums = trimmed.reshape(nz, bz, ny, by, nx, bx).sum(axis=(1, 3, 5), dtype=np.float64)
    return (sums / (bz * by * bx)).astype(np.float32)


def _decode(image: Image, dicom_dir: Path) -> tuple[np.ndarray, str]:
    """Stored values of a whole file (all its frames) and the name of its transfer syntax."""
    ds = image.dataset
    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
    name = syntax.name if syntax else "missing transfer syntax"
    where_ = where(image.path, dicom_dir)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise PatientInputError(f"{where_}: pixel data cannot be decoded: {name}: no decoder available") from None
    if not decoder.is_available:
        raise PatientInputError(
            f"{where_}: pixel data cannot be decoded: {name}: no decoder available (decoder plugins missing)"
        )
    try:
        pixels, _ = decoder.as_array(ds)
    except (ValueError, RuntimeError, NotImplementedError, AttributeError, KeyError, OSError) as exc:
        raise PatientInputError(f"{where_}: pixel data cannot be decoded: {name}: {one_line(exc, 200)}") from exc
    return pixels, name
