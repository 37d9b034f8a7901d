"""What produced a run's tables: the effective configuration and the software and model versions.

A hash in every row says whether two tables came from the same settings; it
cannot say which settings. The configuration with every default resolved, and
the versions of the code, its main libraries and the shipped weights, are
written beside the cohort tables so a table found later explains itself.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

from ctp_steps import __version__
from ctp_steps.config import PipelineConfig, config_hash
from ctp_steps.io import write_json

LIBRARIES = ("numpy", "scipy", "pandas", "pyarrow", "pydantic", "pydicom", "SimpleITK", "torch", "lifelines",
             "snakemake")


def effective_config(cfg: PipelineConfig) -> dict:
    """Every setting with its defaults resolved, as JSON values (loads back through PipelineConfig)."""
    return cfg.model_dump(mode="json")


def provenance(cfg: PipelineConfig, models_manifest: dict) -> dict:
    """Versions of the code, Python, the main libraries and each model's weights (by sha256)."""
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "software_version": __version__,
        "config_hash": config_hash(cfg),
        "python": platform.python_version(),
        "libraries": {name: version(name) for name in LIBRARIES},
        "models": {name: {"file": entry.get("file"), "sha256": entry.get("sha256")}
                   for name, entry in sorted(models_manifest.items())},
    }


def write_provenance(cfg_json: str, config_out: Path, provenance_out: Path) -> None:
    from ctp_steps.models import read_manifest

    cfg = PipelineConfig.model_validate_json(cfg_json)
    write_json(config_out, effective_config(cfg))
    write_json(provenance_out, provenance(cfg, read_manifest()))


def read_config(path: Path) -> PipelineConfig:
    """The configuration a run wrote (`config.json`), validated again."""
    return PipelineConfig.model_validate(json.loads(Path(path).read_text()))
