# Shared by the stage rules: patient paths (names from ctp_steps/layout.py), wildcard constraints, the
# active chain of per-patient stages (ctp_steps/stages.py) and the one shell command every stage runs.
import json

from ctp_steps.resources import declared_mem_mb, declared_runtime_min
from ctp_steps.layout import PATIENTS_DIR, file_name, patient_log, status_name, validation_file
from ctp_steps.stages import ORACLE, STAGES, upstream_status
from ctp_steps.stages import implementation as configured_implementation

PATIENT_DIR = f"{RESULTS}/{PATIENTS_DIR}/{{center}}/{{patient}}"
SYNTHETIC_DIR = f"{RESULTS}/synthetic"
TRUTH = f"{SYNTHETIC_DIR}/truth/{{center}}/{{patient}}/truth.json"
LOGS = f"{RESULTS}/logs"

# (stage, implementation) in chain order, as configured; the cohort gather reads each one's status record.
ACTIVE_CHAIN = active_chain(CFG)
CHAIN_STAGES = [stage.name for stage, _ in ACTIVE_CHAIN]

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


def patient_file(artifact: str) -> str:
    return f"{PATIENT_DIR}/{file_name(artifact)}"


def status_file(stage: str) -> str:
    return f"{PATIENT_DIR}/{status_name(stage)}"


def upstream(stage: str) -> str:
    """Status record of the stage before `stage` in the chain: exclusions propagate along it."""
    return f"{PATIENT_DIR}/{upstream_status(stage)}"


def stage_log(stage: str) -> str:
    return f"{RESULTS}/{patient_log(stage, '{center}', '{patient}')}"


def validation_metrics(stage: str) -> str:
    return f"{RESULTS}/{validation_file(stage)}"


def stage_files(wildcards, input, output) -> str:
    """The rule's named inputs and outputs for `ctp-steps run` (keys = the stage's Inputs/Outputs fields)."""
    named = lambda files: {k: v if isinstance(v, str) else list(v) for k, v in files.items()}
    return json.dumps({"input": named(input), "output": named(output)})


def run_stage(stage: str, implementation: str | None = None) -> str:
    """The shell command of every per-patient rule (params `files`, and `config` unless an oracle);
    the implementation is the configured one unless given."""
    implementation = implementation or configured_implementation(STAGES[stage], CFG.stages)
    config = "" if implementation == ORACLE else " --config-json {params.config:q}"
    device = f" --device {CFG.device}" if STAGES[stage].torch and implementation != ORACLE else ""
    return (
        f"ctp-steps run {stage} --implementation {implementation} --files {{params.files:q}}{config}{device}"
        " --threads {threads} --title {wildcards.center}/{wildcards.patient} > {log:q} 2>&1"
    )


def study_mem_mb(stage: str):
    """`mem_mb` of a patient's job from the size of its study (ctp_steps/resources.py), read when scheduled."""
    return lambda wc: declared_mem_mb(stage, DICOM_DIRS[(wc.center, wc.patient)], CFG.conversion.working_spacing_mm)


def study_runtime(stage: str, slower: int = 1):
    """`runtime` (minutes) of a patient's job from the size of its study; `slower` for a slower method."""
    return lambda wc: declared_runtime_min(
        stage, DICOM_DIRS[(wc.center, wc.patient)], slower, CFG.conversion.working_spacing_mm
    )


def patient_threads(configured: int) -> int:
    """Threads of a per-patient torch job: as configured, unless a local run has fewer patients than cores.

    On a cohort, one-thread jobs side by side finish the most patients per core-second (a second thread speeds
    the nets up only ~1.3x); a single study on two cores has nothing to overlap with, so its jobs take the
    cores themselves (BENCHMARKS.md, "Realistic study sizes"). Cluster runs keep the configured threads.
    """
    try:
        cores = workflow.cores if workflow.local_exec else 0
    except WorkflowError:  # no --cores given (e.g. a dry run of a cluster profile)
        cores = 0
    return max(configured, cores // max(len(PATIENTS), 1))


def qc_figure(path: str, stage: str):
    """A per-patient QC figure in `snakemake --report`: filed under its stage, labelled by center and patient."""
    return report(path, caption=f"../report/{stage}.rst", category=stage,
                  labels={"center": "{center}", "patient": "{patient}"})


def stage_benchmark(stage: str) -> str:
    """Wall time and peak memory of each patient's job, as Snakemake measures them (tab-separated)."""
    return f"{RESULTS}/benchmarks/{stage}/{{center}}/{{patient}}.tsv"


# Deep-learning rules request a GPU only when the pipeline runs on CUDA.
GPUS = 1 if CFG.device == "cuda" else 0
# Training targets (rules/train/*.smk append their outputs); `snakemake train` builds them.
TRAIN_TARGETS: list[str] = []


def validation_inputs() -> list[str]:
    """Per-patient metrics of every active stage that is not an oracle, and the cohort's MBF agreement."""
    if not CFG.uses_synthetic_cohort:
        raise WorkflowError(
            "validate needs the synthetic cohort's ground truth; a user manifest has none"
        )
    metrics = [validation_metrics(s.validation) for s, impl in ACTIVE_CHAIN if s.validation and impl != ORACLE]
    cohort = [f"{RESULTS}/validation/cohort/mbf_segments.parquet"] if "mbf" in CHAIN_STAGES else []
    return [f for pattern in metrics for f in per_patient(pattern)] + cohort
