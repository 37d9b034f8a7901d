# Stage `imv`: ischemic myocardial volume from the MBF map (ctp_steps/imv.py): threshold, cluster filter,
# ischemia mask, per-segment table, QC bull's-eye. Its config section is its own, so changing a threshold
# reruns this stage and what follows only.


rule imv:
    input:
        upstream=previous_stage_status(),
        mbf=f"{PATIENT_DIR}/mbf.nii.gz",
        myocardium=f"{PATIENT_DIR}/myocardium.nii.gz",
        aha=f"{PATIENT_DIR}/aha17.nii.gz",
    output:
        ischemia=f"{PATIENT_DIR}/ischemia.nii.gz",
        segments=f"{PATIENT_DIR}/segments_imv.parquet",
        qc=f"{PATIENT_DIR}/imv_qc.png",
        status=f"{PATIENT_DIR}/imv.status.json",
    params:
        config=CFG.imv.model_dump_json(),
        code=code_fingerprint("imv"),
    log:
        f"{LOGS}/imv/{{center}}/{{patient}}.log",
    resources:
        mem_mb=2000,
        runtime=10,
    threads: 1
    group:
        "patient"
    conda:
        "../envs/imaging.yaml"
    shell:
        "ctp-steps imv --mbf {input.mbf:q} --myocardium {input.myocardium:q} --aha {input.aha:q}"
        " --upstream {input.upstream:q} --config-json {params.config:q} --ischemia {output.ischemia:q}"
        " --segments {output.segments:q} --qc {output.qc:q} --status {output.status:q} > {log:q} 2>&1"


PATIENT_STAGES.append("imv")
VALIDATION_METRICS.append(f"{RESULTS}/validation/patients/{{center}}/{{patient}}/imv.parquet")


rule validate_imv:
    input:
        truth=f"{SYNTHETIC_DIR}/truth/{{center}}/{{patient}}/truth.json",
        ischemia=f"{PATIENT_DIR}/ischemia.nii.gz",
        mbf_raw=f"{PATIENT_DIR}/mbf_raw.nii.gz",
        myocardium=f"{PATIENT_DIR}/myocardium.nii.gz",
        aha=f"{PATIENT_DIR}/aha17.nii.gz",
        register=f"{PATIENT_DIR}/register.status.json",
        status=f"{PATIENT_DIR}/imv.status.json",
    output:
        f"{RESULTS}/validation/patients/{{center}}/{{patient}}/imv.parquet",
    params:
        config=CFG.imv.model_dump_json(),
        truth_dir=lambda wc, input: str(Path(input.truth).parent),
        patient_dir=lambda wc, input: str(Path(input.status).parent),
        code=code_fingerprint("validate-imv"),
    log:
        f"{LOGS}/validate/imv/{{center}}/{{patient}}.log",
    resources:
        mem_mb=2000,
        runtime=10,
    group:
        "patient"
    conda:
        "../envs/imaging.yaml"
    shell:
        "ctp-steps validate-imv --truth-dir {params.truth_dir:q} --patient-dir {params.patient_dir:q}"
        " --config-json {params.config:q} --out {output:q} > {log:q} 2>&1"
