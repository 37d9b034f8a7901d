# Stage `mbf`: myocardial blood flow from the registered frames, the myocardium mask, the AHA map and
# the AIF (ctp_steps/mbf): regularised and voxel-wise maps, segment table, curves, QC figure.
# Validation: every method vs the phantom's truth per patient, and the cohort's segment agreement (ICC).


rule mbf:
    input:
        upstream=upstream("mbf"),
        frames=patient_file("frames"),
        series=patient_file("registered"),
        myocardium=patient_file("myocardium"),
        aha=patient_file("aha17"),
        aif=patient_file("aif"),
    output:
        mbf=patient_file("mbf"),
        mbf_raw=patient_file("mbf_raw"),
        mbf_se=patient_file("mbf_se"),
        tac=patient_file("tac"),
        segments=patient_file("segments_mbf"),
        qc=qc_figure(patient_file("mbf_qc"), "mbf"),
        status=status_file("mbf"),
        **({"blood_volume": patient_file("blood_volume")} if CFG.mbf.writes_blood_volume else {}),
    params:
        files=stage_files,
        config=CFG.mbf.model_dump_json(),
        code=stage_fingerprint("mbf"),
    benchmark:
        stage_benchmark("mbf")
    log:
        stage_log("mbf"),
    resources:
        mem_mb=study_mem_mb("mbf"),
        runtime=study_runtime("mbf"),
        gpu=GPUS,
    threads: patient_threads(1)
    group:
        "patient"
    conda:
        "../envs/ctp.yaml"
    shell:
        run_stage("mbf")


rule validate_mbf:
    input:
        truth=TRUTH,
        frames=patient_file("frames"),
        series=patient_file("registered"),
        myocardium=patient_file("myocardium"),
        aha=patient_file("aha17"),
        aif=patient_file("aif"),
        mbf=patient_file("mbf"),
        mbf_raw=patient_file("mbf_raw"),
        segments_mbf=patient_file("segments_mbf"),  # its SE and 95 % intervals: the coverage rows
        register=status_file("register"),
        status=status_file("mbf"),
    output:
        metrics=validation_metrics("mbf"),
        segments=f"{RESULTS}/validation/patients/{{center}}/{{patient}}/mbf_segments.parquet",
    params:
        config=CFG.mbf.model_dump_json(),
        device=CFG.device,
        truth_dir=lambda wc, input: str(Path(input.truth).parent),
        patient_dir=lambda wc, input: str(Path(input.status).parent),
        code=code_fingerprint("validate-mbf"),
    log:
        f"{LOGS}/validate/mbf/{{center}}/{{patient}}.log",
    resources:
        mem_mb=4000,
        runtime=30,
    threads: 1
    group:
        "patient"
    conda:
        "../envs/ctp.yaml"
    shell:
        "ctp-steps validate-mbf --truth-dir {params.truth_dir:q} --patient-dir {params.patient_dir:q}"
        " --config-json {params.config:q} --out {output.metrics:q} --segments-out {output.segments:q}"
        " --device {params.device} --threads {threads} > {log:q} 2>&1"


rule validate_mbf_cohort:
    input:
        per_patient(f"{RESULTS}/validation/patients/{{center}}/{{patient}}/mbf_segments.parquet"),
    output:
        f"{RESULTS}/validation/cohort/mbf_segments.parquet",
    params:
        code=code_fingerprint("validate-mbf-cohort"),
    log:
        f"{LOGS}/validate/mbf_cohort.log",
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/ctp.yaml"
    shell:
        "ctp-steps validate-mbf-cohort --inputs {input:q} --out {output:q} > {log:q} 2>&1"
