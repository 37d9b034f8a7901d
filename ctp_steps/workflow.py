"""What the Snakefile needs at planning time: the patient list and stage code fingerprints.

Kept free of heavy imports: planning a 20,000-patient DAG must not load torch.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from ctp_steps.config import PipelineConfig
from ctp_steps.manifest import ManifestPatient, manifest_patients, validate_manifest

PACKAGE_DIR = Path(__file__).resolve().parent
SHARED_MODULES = ("types.py", "io.py", "cli.py")
SYNTHETIC_COVARIATES = ("age", "sex", "diabetes", "hypertension", "smoking")


@cache
def stage_fingerprint(*sources: str) -> str:
    """Hash of a stage's own source files (and the shared I/O), put in the rule's params.

    Snakemake does not track code inside an imported package, so without this
    an edit of `ctp_steps/convert.py` would not rerun conversion. `sources` are
    paths relative to the package: module files or subpackage folders.
    """
    digest = hashlib.sha256()
    for name in (*sources, *SHARED_MODULES):
        path = PACKAGE_DIR / name
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            digest.update(f.relative_to(PACKAGE_DIR).as_posix().encode())
            digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


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


# Per-patient stages after conversion, in chain order, with their key in config `stages`.
ANALYSIS_STAGES = {
    "segment_frames": "segment_frames",
    "register": "registration",
    "segment_myocardium": "segment_myocardium",
    "landmarks": "landmarks",
}
# Quantification after the analysis stages; they have no oracle and run only on a complete chain.
QUANTIFICATION_RULE_FILES = ("rules/mbf.smk", "rules/imv.smk")


def analysis_rule_files(cfg: PipelineConfig) -> list[str]:
    """The .smk file of each configured stage implementation, in chain order.

    An oracle stage needs the phantom's truth: on a user manifest the chain is
    cut before the first one (the rows then end at the last real stage), and
    MBF and IMV, which need every analysis stage, are left out.
    """
    files = []
    for stage, key in ANALYSIS_STAGES.items():
        implementation = getattr(cfg.stages, key)
        if implementation == "oracle":
            if not cfg.uses_synthetic_cohort:
                break
            files.append(f"rules/oracle/{stage}.smk")
        else:  # the stage's .smk picks the method (e.g. register: learned|simpleitk|none)
            files.append(f"rules/{stage}.smk")
    else:
        files += QUANTIFICATION_RULE_FILES
    return files


def print_run_summary(results_dir: Path) -> None:
    """The main job's closing lines: cohort counts, HR of the marker, C-index, the report's path."""
    summary = results_dir / "cohort" / "risk" / "summary.txt"
    if summary.exists():
        print(f"\nctp-cohort summary ({results_dir}):\n{summary.read_text()}")
