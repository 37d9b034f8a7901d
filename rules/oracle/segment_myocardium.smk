# Validation-only oracle for `segment_myocardium`: the true myocardium mask, from the phantom's
# hidden truth (ctp_steps/oracle.py). Chosen by config `stages.segment_myocardium: oracle`; synthetic cohort only.


rule segment_myocardium:
    input:
        upstream=previous_stage_status(),
        series=f"{PATIENT_DIR}/series.nii.gz",
        frames=f"{PATIENT_DIR}/frames.json",
        average=f"{PATIENT_DIR}/average.nii.gz",
        truth=f"{SYNTHETIC_DIR}/truth/{{center}}/{{patient}}/truth.json",
    output:
        myocardium=f"{PATIENT_DIR}/myocardium.nii.gz",
        status=f"{PATIENT_DIR}/segment_myocardium.status.json",
    params:
        truth_dir=lambda wc, input: str(Path(input.truth).parent),
        out_dir=lambda wc, output: str(Path(output.status).parent),
        code=code_fingerprint("oracle"),
    log:
        f"{LOGS}/segment_myocardium/{{center}}/{{patient}}.log",
    resources:
        mem_mb=3000,
        runtime=10,
    group:
        "patient"
    conda:
        "../../envs/imaging.yaml"
    shell:
        "ctp-steps oracle segment_myocardium --series {input.series:q} --frames {input.frames:q}"
        " --upstream {input.upstream:q} --truth-dir {params.truth_dir:q} --out-dir {params.out_dir:q}"
        " > {log:q} 2>&1"


PATIENT_STAGES.append("segment_myocardium")
