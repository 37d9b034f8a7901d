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


def read_hu(images: list[Image], frames: list[list[int]], dicom_dir: Path) -> tuple[np.ndarray, list[str]]:
    """(t, z, y, x) float32 HU, each slice rescaled with its own slope and intercept; and the syntaxes decoded.

    Slices are grouped by file so a multi-frame file is decoded once.
    """
    s0 = images[frames[0][0]]
    hu = np.empty((len(frames), len(frames[0]), s0.rows, s0.cols), dtype=np.float32)
    by_file: dict[Path, list[tuple[int, int, Image]]] = defaultdict(list)
    for t, frame in enumerate(frames):
        for z, i in enumerate(frame):
            by_file[images[i].path].append((t, z, images[i]))
    syntaxes: set[str] = set()
    for path, placed in by_file.items():
        pixels, syntax = _decode(placed[0][2], dicom_dir)
        syntaxes.add(syntax)
        for t, z, image in placed:
            plane = pixels if image.frame is None or pixels.ndim == 2 else pixels[image.frame]
            if plane.shape != (image.rows, image.cols):
                raise PatientInputError(
                    f"{image_where(image, dicom_dir)}: pixel data cannot be decoded: shape {plane.shape}, "
                    f"expected ({image.rows}, {image.cols})"
                )
            hu[t, z] = plane.astype(np.float64) * image.slope + image.intercept
    return hu, sorted(syntaxes)


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
