# Validation-only oracle for `register`: frames aligned by undoing the true motion, and their average, from the phantom's
# hidden truth (ctp_steps/oracle.py). Chosen by config `stages.register: oracle`; synthetic cohort only.


rule register:
    input:
        upstream=previous_stage_status(),
        series=f"{PATIENT_DIR}/series.nii.gz",
        frames=f"{PATIENT_DIR}/frames.json",
        truth=f"{SYNTHETIC_DIR}/truth/{{center}}/{{patient}}/truth.json",
    output:
        registered=f"{PATIENT_DIR}/registered.nii.gz",
        average=f"{PATIENT_DIR}/average.nii.gz",
        status=f"{PATIENT_DIR}/register.status.json",
    params:
        truth_dir=lambda wc, input: str(Path(input.truth).parent),
        out_dir=lambda wc, output: str(Path(output.status).parent),
        code=code_fingerprint("oracle"),
    log:
        f"{LOGS}/register/{{center}}/{{patient}}.log",
    resources:
        mem_mb=3000,
        runtime=10,
    group:
        "patient"
    conda:
        "../../envs/imaging.yaml"
    shell:
        "ctp-steps oracle register --series {input.series:q} --frames {input.frames:q}"
        " --upstream {input.upstream:q} --truth-dir {params.truth_dir:q} --out-dir {params.out_dir:q}"
        " > {log:q} 2>&1"


PATIENT_STAGES.append("register")
