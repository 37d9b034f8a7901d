# Validation-only oracle for `segment_myocardium`: the true myocardium mask, from the phantom's hidden truth
# (ctp_steps/oracle/segment_myocardium.py). Chosen by config `stages.segment_myocardium: oracle`; synthetic cohort only.


rule segment_myocardium:
    input:
        upstream=upstream("segment_myocardium"),
        average=patient_file("average"),
        truth=TRUTH,
    output:
        myocardium=patient_file("myocardium"),
        status=status_file("segment_myocardium"),
    params:
        files=stage_files,
        code=stage_fingerprint("segment_myocardium", "oracle"),
    log:
        stage_log("segment_myocardium"),
    resources:
        mem_mb=3000,
        runtime=10,
    group:
        "patient"
    conda:
        "../../envs/ctp.yaml"
    shell:
        run_stage("segment_myocardium", "oracle")
