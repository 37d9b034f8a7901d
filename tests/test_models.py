"""Shipped weights: the manifest's checksums are checked and errors name the file."""

import json

import pytest

from ctp_steps.models import ModelError, read_manifest, register_model, sha256_of, verified_weights, MANIFEST


def test_register_and_verify(tmp_path):
    manifest = tmp_path / "manifest.json"
    weights = tmp_path / "net.pt"
    weights.write_bytes(b"weights v1")
    entry = register_model("net", weights, {"validation_dice": 0.9}, manifest=manifest)
    assert entry["file"] == "net.pt" and entry["size_bytes"] == 10
    assert verified_weights("net", manifest=manifest) == weights
    weights.write_bytes(b"weights v2")
    with pytest.raises(ModelError, match=r"net\.pt has sha256 .* manifest expects"):
        verified_weights("net", manifest=manifest)
    weights.unlink()
    with pytest.raises(ModelError, match="net.pt is missing"):
        verified_weights("net", manifest=manifest)
    with pytest.raises(ModelError, match="'other' is not listed"):
        verified_weights("other", manifest=manifest)


def test_every_shipped_model_matches_its_checksum():
    entries = read_manifest()
    for name, entry in entries.items():
        assert sha256_of(MANIFEST.parent / entry["file"]) == entry["sha256"], name
        assert (MANIFEST.parent / entry["file"]).stat().st_size < 20_000_000, name
