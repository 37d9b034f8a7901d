# Validation-only oracle for `register`: frames aligned by undoing the true motion, and their average, from the
# phantom's hidden truth (ctp_steps/oracle/register.py). Chosen by config `stages.registration: oracle`; synthetic cohort only.


rule register:
    input:
        upstream=upstream("register"),
        series=patient_file("series"),
        truth=TRUTH,
    output:
        registered=patient_file("registered"),
        average=patient_file("average"),
        status=status_file("register"),
    params:
        files=stage_files,
        code=stage_fingerprint("register", "oracle"),
    log:
        stage_log("register"),
    resources:
        mem_mb=3000,
        runtime=10,
    group:
        "patient"
    conda:
        "../../envs/ctp.yaml"
    shell:
        run_stage("register", "oracle")
