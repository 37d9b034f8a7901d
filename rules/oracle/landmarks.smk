# Validation-only oracle for `landmarks`: the true landmarks and AHA 17-segment map, from the phantom's hidden truth
# (ctp_steps/oracle/landmarks.py). Chosen by config `stages.landmarks: oracle`; synthetic cohort only.


rule landmarks:
    input:
        upstream=upstream("landmarks"),
        average=patient_file("average"),
        truth=TRUTH,
    output:
        landmarks=patient_file("landmarks"),
        aha=patient_file("aha17"),
        status=status_file("landmarks"),
    params:
        files=stage_files,
        code=stage_fingerprint("landmarks", "oracle"),
    log:
        stage_log("landmarks"),
    resources:
        mem_mb=3000,
        runtime=10,
    group:
        "patient"
    conda:
        "../../envs/ctp.yaml"
    shell:
        run_stage("landmarks", "oracle")
