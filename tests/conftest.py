"""Shared fixtures: a tiny synthetic cohort config, a Snakemake runner, one torch thread for small batches."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# Small enough that a whole workflow run takes well under a minute on 2 cores.
TINY_PHANTOM = {"shape_zyx": [16, 40, 40], "spacing_zyx_mm": [6.0, 5.0, 5.0]}
TINY_CENTERS = [
    {"name": "CTR-A", "vendor_style": "series_per_frame"},
    {"name": "CTR-B", "vendor_style": "temporal_position"},
    {"name": "CTR-C", "vendor_style": "trigger_time"},
]


def tiny_config(results_dir: Path, n_patients: int = 3, **overrides) -> dict:
    cfg = {
        "results_dir": str(results_dir),
        "synthetic": {"n_patients": n_patients, "centers": TINY_CENTERS, "phantom": TINY_PHANTOM},
    }
    cfg.update(overrides)
    return cfg


def run_snakemake(workdir: Path, config: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the project's Snakefile for real in `workdir` with `config` as an extra configfile."""
    workdir.mkdir(parents=True, exist_ok=True)
    configfile = workdir / "test-config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    cmd = [
        sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
        "--configfile", str(configfile), "--cores", "2", "--scheduler", "greedy", *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small batches: one intra-op thread is fastest and stable on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
