"""What the two per-patient segmentation stages share: checked weights, the model on the job's device.

The stages themselves: `segment_frames.py` (VB-Net aorta + LV blood pool on
every frame, and the AIF) and `segment_myocardium.py` (VB-Net myocardium on the
registered average). Both post-process (largest connected component, holes
filled) and exclude the patient, with the reason, when a mask is empty or its
volume lies outside the configured physiological bounds.
"""

from __future__ import annotations

from pathlib import Path

from ctp_steps.models import MANIFEST, read_manifest, verified_weights

AORTA, LV_BLOOD = 1, 2  # frames model classes
MYO_CLASS = 1  # myocardium model class


def checked_weights(name: str, weights: Path, manifest: Path = MANIFEST) -> tuple[Path, str]:
    """The manifest's file for `name` after its checksum check; it must be the file the rule passed."""
    path = verified_weights(name, manifest)
    if path.resolve() != Path(weights).resolve():
        from ctp_steps.models import ModelError

        raise ModelError(f"model {name!r}: rule input {weights} is not the manifest's file {path}")
    return path, read_manifest(manifest)[name]["sha256"]


def load_checked(name: str, weights: Path, device, manifest: Path | None):
    """The model `name` on `device` after its checksum check, and its sha256."""
    from ctp_steps.segmentation.infer import load_model

    path, sha = checked_weights(name, weights, manifest or MANIFEST)
    return load_model(path, device), sha
