# Stage `imv` (ctp_steps/imv.py): ischemic myocardial volume from the MBF map: threshold, cluster filter,
# ischemia mask, per-segment table, QC bull's-eye. Its config section is its own, so changing a threshold
# reruns this stage and what follows only.


rule imv:
    input:
        upstream=upstream("imv"),
        mbf=patient_file("mbf"),
        myocardium=patient_file("myocardium"),
        aha=patient_file("aha17"),
        mbf_se=patient_file("mbf_se"),
    output:
        ischemia=patient_file("ischemia"),
        segments=patient_file("segments_imv"),
        qc=qc_figure(patient_file("imv_qc"), "imv"),
        status=status_file("imv"),
    params:
        files=stage_files,
        config=CFG.imv.model_dump_json(),
        code=stage_fingerprint("imv"),
    benchmark:
        stage_benchmark("imv")
    log:
        stage_log("imv"),
    resources:
        mem_mb=study_mem_mb("imv"),
        runtime=study_runtime("imv"),
    threads: 1
    group:
        "patient"
    conda:
        "../envs/ctp.yaml"
    shell:
        run_stage("imv")


rule validate_imv:
    input:
        truth=TRUTH,
        ischemia=patient_file("ischemia"),
        mbf_raw=patient_file("mbf_raw"),
        myocardium=patient_file("myocardium"),
        aha=patient_file("aha17"),
        register=status_file("register"),
        status=status_file("imv"),
    output:
        validation_metrics("imv"),
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
        "../envs/ctp.yaml"
    shell:
        "ctp-steps validate-imv --truth-dir {params.truth_dir:q} --patient-dir {params.patient_dir:q}"
        " --config-json {params.config:q} --out {output:q} > {log:q} 2>&1"
