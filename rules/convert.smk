# Stage `convert` (ctp_steps/conversion.py): DICOM folder → 4D NIfTI in HU + frames.json, or an exclusion reason.


rule convert:
    input:
        dicom=lambda wc: DICOM_DIRS[(wc.center, wc.patient)],
    output:
        series=patient_file("series"),
        frames=patient_file("frames"),
        status=status_file("convert"),
    params:
        files=stage_files,
        config=CFG.conversion.model_dump_json(),
        code=stage_fingerprint("convert"),
    benchmark:
        stage_benchmark("convert")
    log:
        stage_log("convert"),
    resources:
        mem_mb=study_mem_mb("convert"),
        runtime=study_runtime("convert"),
    group:
        "patient"
    conda:
        "../envs/ctp.yaml"
    shell:
        run_stage("convert")
