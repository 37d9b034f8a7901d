# ctp-cohort: dynamic CT myocardial perfusion, from DICOM to outcome study.
# Loads and validates the config and the cohort manifest before planning any job,
# then includes one rules/*.smk per active stage of the chain (ctp_steps/stages.py). Logic lives in ctp_steps.
import os
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

from ctp_steps.config import config_hash, load_config
from ctp_steps.fingerprints import code_fingerprint, stage_fingerprint
from ctp_steps.models import MANIFEST as MODELS_MANIFEST
from ctp_steps.models import weights_path
from ctp_steps.workflow import (
    active_chain,
    cohort_patients,
    print_run_summary,
    release_scheduler_timers,
    stage_rule_files,
)

min_version("9.0")

REPO = Path(workflow.basedir)


configfile: REPO / "config" / "config.yaml"


report: "report/workflow.rst"


envvars:
    "PATH",


CFG = load_config(config)  # pydantic first: it lists every problem at once
validate(config, REPO / "config" / "config.schema.json")
CONFIG_HASH = config_hash(CFG)
PATIENTS = cohort_patients(CFG)

RESULTS = CFG.results_dir
# Rules call the `ctp-steps` command of the environment running Snakemake (the project's venv).
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


include: "rules/common.smk"
include: "rules/synthetic.smk"


for rule_file in stage_rule_files(CFG):  # the per-patient chain, ctp_steps/stages.py

    include: rule_file



include: "rules/cohort.smk"
include: "rules/risk.smk"
include: "rules/validate.smk"


for rule_file in sorted((REPO / "rules" / "train").glob("*.smk")):

    include: rule_file


rule train:
    input:
        TRAIN_TARGETS,


rule all:
    input:
        f"{RESULTS}/cohort/patients.parquet",
        rules.provenance.output,
        COHORT_SEGMENTS,
        rules.risk.output,
    default_target: True


onsuccess:
    release_scheduler_timers()
    print_run_summary(Path(RESULTS), CFG.fail_on_patient_errors)


onerror:
    release_scheduler_timers()
