"""What the Snakefile needs at planning time: the patient list, the active chain and its rule files, the run summary.

Kept free of heavy imports: planning a 20,000-patient DAG must not load torch.
"""

from __future__ import annotations

import threading
from pathlib import Path

from ctp_steps.config import PipelineConfig
from ctp_steps.manifest import ManifestPatient, manifest_patients, validate_manifest
from ctp_steps.stages import CHAIN, ORACLE, ChainStage, implementation

SYNTHETIC_COVARIATES = ("age", "sex", "diabetes", "hypertension", "smoking")


def synthetic_specs(cfg: PipelineConfig) -> list:
    """The default cohort's phantom specs, known from the config alone (no file needed to plan)."""
    from ctp_steps.phantom import make_specs

    syn = cfg.synthetic
    return make_specs(
        syn.n_patients, [(c.name, c.vendor_style) for c in syn.centers], syn.seed, role="cohort"
    )


def synthetic_patients(cfg: PipelineConfig) -> list[ManifestPatient]:
    root = Path(cfg.results_dir) / "synthetic" / "dicom"
    return [
        ManifestPatient(s.patient_id, s.center, root / s.center / s.patient_id)
        for s in synthetic_specs(cfg)
    ]


def cohort_patients(cfg: PipelineConfig) -> list[ManifestPatient]:
    """Patients to process: the user's validated manifest, or the synthetic cohort."""
    if cfg.uses_synthetic_cohort:
        missing = sorted(set(cfg.covariates) - set(SYNTHETIC_COVARIATES))
        if missing:
            raise ValueError(
                f"config covariates {missing} are not produced by the synthetic cohort "
                f"(it provides {list(SYNTHETIC_COVARIATES)}); set `manifest` or drop them"
            )
        return synthetic_patients(cfg)
    return manifest_patients(validate_manifest(cfg.manifest, cfg.covariates))


def active_chain(cfg: PipelineConfig) -> list[tuple[ChainStage, str]]:
    """The per-patient stages this config runs, in chain order, with their configured implementation.

    An oracle stage needs the phantom's truth: on a user manifest the chain is
    cut before the first one (the rows then end at the last real stage), so
    MBF and IMV, which need every stage before them, are left out too.
    """
    chain = []
    for stage in CHAIN:
        impl = implementation(stage, cfg.stages)
        if impl == ORACLE and not cfg.uses_synthetic_cohort:
            break
        chain.append((stage, impl))
    return chain


def stage_rule_files(cfg: PipelineConfig) -> list[str]:
    """The .smk of each active stage, in chain order (an oracle's own under rules/oracle/; a real stage's
    .smk serves all its methods, e.g. register: learned|simpleitk|none)."""
    return [f"rules/oracle/{s.name}.smk" if impl == ORACLE else f"rules/{s.name}.smk" for s, impl in active_chain(cfg)]


class PatientsFailed(Exception):
    """Raised after a run whose tables are written but where a stage failed on some patients."""


def failed_patients(results_dir: Path) -> list[tuple[str, str, str]]:
    """(center, patient_id, reason) of every `failed` row of patients.parquet."""
    import pandas as pd

    table_path = results_dir / "cohort" / "patients.parquet"
    if not table_path.exists():
        return []
    table = pd.read_parquet(table_path, columns=["center", "patient_id", "status", "reason"])
    failed = table[table["status"] == "failed"]
    return list(zip(failed["center"], failed["patient_id"], failed["reason"].fillna("")))


def print_run_summary(results_dir: Path, fail_on_patient_errors: bool = True) -> None:
    """The main job's closing lines: failed patients first, then cohort counts, HR, C-index, the report's path.

    Raises PatientsFailed (Snakemake then exits non-zero) when patients failed and the config asks for it.
    """
    failed = failed_patients(results_dir)
    if failed:
        print(f"\nctp-cohort: {len(failed)} patient(s) FAILED with an unexpected error:")
        for center, patient, reason in failed:
            print(f"  {center}/{patient}: {reason}")
    summary = results_dir / "cohort" / "risk" / "summary.txt"
    if summary.exists():
        print(f"\nctp-cohort summary ({results_dir}):\n{summary.read_text()}")
    if failed and fail_on_patient_errors:
        raise PatientsFailed(
            f"{len(failed)} patient(s) failed (listed above); every table was written. "
            "Set fail_on_patient_errors: false to exit 0 anyway."
        )


def release_scheduler_timers() -> None:
    """Cancel Snakemake's pending scheduler wake-ups, so that a finished run exits at once.

    The scheduler re-arms a `threading.Timer` of one rate-limit timespan after every pass
    (snakemake/snakemake#3744); the interpreter waits for the last one at exit, up to the local profile's 10 s.
    """
    for thread in threading.enumerate():
        if isinstance(thread, threading.Timer):
            thread.cancel()
