"""The per-patient chain, in order, and the contract every per-patient stage keeps.

A stage module holds `Inputs` and `Outputs` (frozen dataclasses whose fields
are exactly its rule's `input:` and `output:` keys), `Config` (its config
section's model, or None) and `run(inputs, outputs, cfg, ctx) -> record`.
`ctp-steps run <stage>` builds them from the rule's named files and applies the
per-patient failure contract (`ctp_steps.cli.run_patient_stage`). Each stage
checks only its predecessor in `CHAIN`: an exclusion propagates along it.

Kept free of heavy imports: the Snakefile reads `CHAIN` while planning.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ctp_steps.layout import status_name

if TYPE_CHECKING:
    import torch

ORACLE = "oracle"


@dataclass(frozen=True)
class ChainStage:
    name: str  # rule name, status record, log folder
    module: str  # the stage's contract (Inputs, Outputs, Config, run)
    config_key: str | None = None  # key in config `stages:` choosing the implementation
    methods: tuple[str, ...] = ()  # implementations `module` runs (ctx.implementation says which)
    oracle: bool = False  # a validation-only stand-in from phantom truth: ctp_steps/oracle/<name>.py
    validation: str | None = None  # per-patient validation metrics: validation/patients/<c>/<p>/<name>.parquet
    torch: bool = False  # runs on the config's `device` (its oracle never does)

    @property
    def implementations(self) -> tuple[str, ...]:
        return self.methods + ((ORACLE,) if self.oracle else ())

    def module_of(self, implementation: str) -> str:
        return f"ctp_steps.oracle.{self.name}" if implementation == ORACLE else self.module


CHAIN: tuple[ChainStage, ...] = (
    ChainStage("convert", "ctp_steps.conversion", methods=("dicom",), validation="conversion"),
    ChainStage("segment_frames", "ctp_steps.segmentation.segment_frames", "segment_frames", ("vbnet",),
               oracle=True, validation="segment_frames", torch=True),
    ChainStage("register", "ctp_steps.registration.stage", "registration", ("learned", "simpleitk", "none"),
               oracle=True, validation="registration", torch=True),
    ChainStage("segment_myocardium", "ctp_steps.segmentation.segment_myocardium", "segment_myocardium", ("vbnet",),
               oracle=True, validation="segment_myocardium", torch=True),
    ChainStage("landmarks", "ctp_steps.landmarks.stage", "landmarks", ("heatmap",),
               oracle=True, validation="landmarks", torch=True),
    # the kinetic model is the stage's own setting, `mbf.method`
    ChainStage("mbf", "ctp_steps.mbf.stage", methods=("fit",), validation="mbf", torch=True),
    ChainStage("imv", "ctp_steps.imv", methods=("threshold",), validation="imv"),
)
STAGES: dict[str, ChainStage] = {s.name: s for s in CHAIN}


def implementation(stage: ChainStage, stages_config: Any) -> str:
    """The configured implementation of a stage (its key in `stages:`, else its only one)."""
    return getattr(stages_config, stage.config_key) if stage.config_key else stage.methods[0]


def upstream_status(stage: str) -> str:
    """Status record of the stage before `stage` in the chain (the one its rule waits for)."""
    index = [s.name for s in CHAIN].index(stage)
    if index == 0:
        raise ValueError(f"{stage} is the first stage: it has no upstream")
    return status_name(CHAIN[index - 1].name)


# ------------------------------------------------------------------ the contract
@dataclass(frozen=True, kw_only=True)
class PatientInputs:
    """Every stage but the first waits for its predecessor's status record."""

    upstream: Path | None = None


@dataclass(frozen=True, kw_only=True)
class PatientOutputs:
    """Every stage writes its status record, whatever the outcome."""

    status: Path

    def files(self) -> list[Path]:
        """The stage's own files (placeholders when it gives up), optional ones left out when not written."""
        return [v for f in fields(self) if f.name != "status" and (v := getattr(self, f.name)) is not None]


@dataclass(frozen=True)
class Context:
    """What every stage may need besides its files and config, resolved once per job."""

    implementation: str
    device_name: str = "auto"
    threads: int = 1
    title: str = ""  # "<center>/<patient>", for figures
    models_manifest: Path | None = None  # None: the shipped models/manifest.json

    @cached_property
    def device(self) -> "torch.device":
        """The torch device (CUDA never falls back silently), with torch limited to the job's threads."""
        import torch

        from ctp_steps.devices import resolve_device

        torch.set_num_threads(max(1, self.threads))
        return resolve_device(self.device_name)


def load_contract(stage: str, implementation: str) -> ModuleType:
    spec = STAGES[stage]
    if implementation not in spec.implementations:
        raise ValueError(f"stage {stage}: no implementation {implementation!r} (have {spec.implementations})")
    return importlib.import_module(spec.module_of(implementation))


def build(cls: type, named: dict[str, str | list[str]]) -> Any:
    """A contract dataclass from a rule's named files; an empty list (an absent optional input) is None."""
    expected = {f.name for f in fields(cls)}
    if set(named) - expected:
        raise ValueError(f"{cls.__qualname__}: unexpected files {sorted(set(named) - expected)}")
    values = {}
    for key, value in named.items():
        if isinstance(value, list):
            if len(value) > 1:
                raise ValueError(f"{cls.__qualname__}.{key}: one file expected, got {value}")
            value = value[0] if value else None
        values[key] = Path(value) if value is not None else None
    return cls(**values)
