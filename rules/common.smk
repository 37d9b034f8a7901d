# Shared by the stage rules: patient paths, wildcard constraints, the chain of
# per-patient stages (each stage's .smk appends itself) and validation inputs.

PATIENT_DIR = f"{RESULTS}/patients/{{center}}/{{patient}}"
SYNTHETIC_DIR = f"{RESULTS}/synthetic"
LOGS = f"{RESULTS}/logs"

# Per-patient stages in chain order; the cohort gather reads each one's status record.
PATIENT_STAGES: list[str] = []
# Per-patient validation metric files (patterns with {center} and {patient}).
VALIDATION_METRICS: list[str] = []
# Cohort-level validation tables (e.g. the segment MBF agreement over all patients).
VALIDATION_COHORT_METRICS: list[str] = []

CENTERS = [p.center for p in PATIENTS]
PATIENT_IDS = [p.patient_id for p in PATIENTS]
DICOM_DIRS = {(p.center, p.patient_id): str(p.dicom_dir) for p in PATIENTS}


wildcard_constraints:
    center=r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}",
    patient=r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}",


def per_patient(pattern: str) -> list[str]:
    """Expand a {center}/{patient} pattern over the cohort (zip, not product)."""
    return expand(pattern, zip, center=CENTERS, patient=PATIENT_IDS)


def manifest_path() -> str:
    return CFG.manifest or f"{SYNTHETIC_DIR}/manifest.csv"


def previous_stage_status() -> str:
    """Status file of the stage included just before the caller (call before appending yourself).

    Each stage checks only its predecessor: exclusions propagate along the chain.
    """
    return f"{PATIENT_DIR}/{PATIENT_STAGES[-1]}.status.json"


# Deep-learning rules request a GPU only when the pipeline runs on CUDA.
GPUS = 1 if CFG.device == "cuda" else 0
# Training targets (rules/train/*.smk append their outputs); `snakemake train` builds them.
TRAIN_TARGETS: list[str] = []


def validation_inputs() -> list[str]:
    if not CFG.uses_synthetic_cohort:
        raise WorkflowError(
            "validate needs the synthetic cohort's ground truth; a user manifest has none"
        )
    return [f for pattern in VALIDATION_METRICS for f in per_patient(pattern)] + VALIDATION_COHORT_METRICS
