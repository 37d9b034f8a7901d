# Per-patient records → the cohort tables under results/cohort/.


rule gather_patients:
    input:
        manifest=manifest_path(),
        status=lambda wc: [
            f for stage in PATIENT_STAGES for f in per_patient(f"{PATIENT_DIR}/{stage}.status.json")
        ],
    output:
        f"{RESULTS}/cohort/patients.parquet",
    params:
        patients_dir=f"{RESULTS}/patients",
        stages=lambda wc: PATIENT_STAGES,
        covariates=CFG.covariates,
        config_hash=CONFIG_HASH,
        code=stage_fingerprint("cohort.py", "manifest.py", "commands/cohort.py"),
    log:
        f"{LOGS}/gather_patients.log",
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/stats.yaml"
    shell:
        "ctp-steps gather --manifest {input.manifest:q} --patients-dir {params.patients_dir:q}"
        " --stages {params.stages} --covariates {params.covariates} --config-hash {params.config_hash}"
        " --out {output:q} > {log:q} 2>&1"


# 17 rows per usable patient, once MBF and IMV are in the chain.
COHORT_SEGMENTS = [f"{RESULTS}/cohort/segments.parquet"] if "imv" in PATIENT_STAGES else []


rule gather_segments:
    input:
        manifest=manifest_path(),
        status=lambda wc: per_patient(f"{PATIENT_DIR}/imv.status.json"),
        mbf=lambda wc: per_patient(f"{PATIENT_DIR}/segments_mbf.parquet"),
        imv=lambda wc: per_patient(f"{PATIENT_DIR}/segments_imv.parquet"),
    output:
        f"{RESULTS}/cohort/segments.parquet",
    params:
        patients_dir=f"{RESULTS}/patients",
        config_hash=CONFIG_HASH,
        code=stage_fingerprint("cohort.py", "manifest.py", "aha.py", "commands/cohort.py"),
    log:
        f"{LOGS}/gather_segments.log",
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/stats.yaml"
    shell:
        "ctp-steps gather-segments --manifest {input.manifest:q} --patients-dir {params.patients_dir:q}"
        " --last-stage imv --config-hash {params.config_hash} --out {output:q} > {log:q} 2>&1"
