"""Shipped model weights: the sha256 manifest, checked before any stage uses a file.

`models/manifest.json` maps a model name to its file, sha256, size, training
command, data spec and validation figures. Stages call `verified_weights`,
which names the file in its error when it is missing or altered. Weights are
rule inputs, so new weights rerun exactly the stages that use them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from pathlib import Path

from ctp_steps.io import atomic_path

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "models"
MANIFEST = MODELS_DIR / "manifest.json"


class ModelError(RuntimeError):
    """Shipped weights missing, unlisted or not matching their checksum (a set-up problem, not a patient's)."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(manifest: Path = MANIFEST) -> dict:
    return json.loads(manifest.read_text()) if manifest.exists() else {}


def register_model(name: str, weights: Path, info: dict, manifest: Path = MANIFEST) -> dict:
    """Add or replace one model's entry (file relative to the manifest, sha256, size, `info`)."""
    weights = Path(weights).resolve()
    entry = {
        "file": weights.relative_to(manifest.parent.resolve()).as_posix(),
        "sha256": sha256_of(weights),
        "size_bytes": weights.stat().st_size,
        **info,
    }
    manifest.parent.mkdir(parents=True, exist_ok=True)
    with open(manifest.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # several trainings may finish at once
        entries = read_manifest(manifest)
        entries[name] = entry
        with atomic_path(manifest) as tmp:
            tmp.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
    return entry


def verified_weights(name: str, manifest: Path = MANIFEST) -> Path:
    """Path of model `name`'s weights after checking its sha256 against the manifest."""
    entries = read_manifest(manifest)
    if name not in entries:
        raise ModelError(f"model {name!r} is not listed in {manifest}")
    entry = entries[name]
    path = manifest.parent / entry["file"]
    if not path.is_file():
        raise ModelError(f"model {name!r}: weights file {path} is missing")
    actual = sha256_of(path)
    if actual != entry["sha256"]:
        raise ModelError(
            f"model {name!r}: weights file {path} has sha256 {actual[:12]}…, "
            f"manifest expects {entry['sha256'][:12]}… (corrupt or replaced without re-registering)"
        )
    return path


def weights_path(name: str, manifest: Path = MANIFEST) -> str:
    """The weights file of `name` as listed (unchecked), for use as a Snakemake rule input."""
    entry = read_manifest(manifest).get(name)
    if entry is None:
        raise ModelError(f"model {name!r} is not listed in {manifest}")
    return str(manifest.parent / entry["file"])
