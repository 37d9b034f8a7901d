# Validation-only oracle for `landmarks`: the true landmarks and AHA 17-segment map, from the phantom's
# hidden truth (ctp_steps/oracle.py). Chosen by config `stages.landmarks: oracle`; synthetic cohort only.


rule landmarks:
    input:
        upstream=previous_stage_status(),
        series=f"{PATIENT_DIR}/series.nii.gz",
        frames=f"{PATIENT_DIR}/frames.json",
        average=f"{PATIENT_DIR}/average.nii.gz",
        truth=f"{SYNTHETIC_DIR}/truth/{{center}}/{{patient}}/truth.json",
    output:
        landmarks=f"{PATIENT_DIR}/landmarks.json",
        aha=f"{PATIENT_DIR}/aha17.nii.gz",
        status=f"{PATIENT_DIR}/landmarks.status.json",
    params:
        truth_dir=lambda wc, input: str(Path(input.truth).parent),
        out_dir=lambda wc, output: str(Path(output.status).parent),
        code=code_fingerprint("oracle"),
    log:
        f"{LOGS}/landmarks/{{center}}/{{patient}}.log",
    resources:
        mem_mb=3000,
        runtime=10,
    group:
        "patient"
    conda:
        "../../envs/imaging.yaml"
    shell:
        "ctp-steps oracle landmarks --series {input.series:q} --frames {input.frames:q}"
        " --upstream {input.upstream:q} --truth-dir {params.truth_dir:q} --out-dir {params.out_dir:q}"
        " > {log:q} 2>&1"


PATIENT_STAGES.append("landmarks")
