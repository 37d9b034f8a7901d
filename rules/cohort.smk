# Per-patient records → the cohort tables under results/cohort/: patients.parquet, and segments.parquet
# once MBF and IMV are in the chain. One rule reads every patient, so `--batch gather_patients=i/B`
# slices the whole cohort (README "Huge cohorts").
COHORT_SEGMENTS = [f"{RESULTS}/cohort/segments.parquet"] if "imv" in CHAIN_STAGES else []


rule gather_patients:
    input:
        manifest=manifest_path(),
        status=lambda wc: [
            f for stage in CHAIN_STAGES for f in per_patient(status_file(stage))
        ],
        segment_tables=lambda wc: [
            f for t in ("segments_mbf", "segments_imv") if COHORT_SEGMENTS for f in per_patient(patient_file(t))
        ],
    output:
        patients=f"{RESULTS}/cohort/patients.parquet",
        segments=COHORT_SEGMENTS,
    params:
        patients_dir=f"{RESULTS}/{PATIENTS_DIR}",
        stages=CHAIN_STAGES,
        covariates=CFG.covariates,
        config_hash=CONFIG_HASH,
        segments=lambda wc, output: f"--segments-out {output.segments}" if COHORT_SEGMENTS else "",
        code=code_fingerprint("gather"),
    log:
        f"{LOGS}/gather_patients.log",
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/ctp.yaml"
    shell:
        "ctp-steps gather --manifest {input.manifest:q} --patients-dir {params.patients_dir:q}"
        " --stages {params.stages} --covariates {params.covariates} --config-hash {params.config_hash}"
        " --out {output.patients:q} {params.segments} > {log:q} 2>&1"



rule provenance:
    """The effective configuration (defaults resolved) and the software and model versions of this run."""
    input:
        models=MODELS_MANIFEST,
    output:
        config=f"{RESULTS}/cohort/config.json",
        provenance=f"{RESULTS}/cohort/provenance.json",
    params:
        config=CFG.model_dump_json(),
        code=code_fingerprint("provenance"),
    log:
        f"{LOGS}/provenance.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/ctp.yaml"
    shell:
        "ctp-steps provenance --config-json {params.config:q} --config-out {output.config:q}"
        " --provenance-out {output.provenance:q} > {log:q} 2>&1"
