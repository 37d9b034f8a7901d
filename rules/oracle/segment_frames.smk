# Validation-only oracle for `segment_frames`: frame masks (aorta, LV) and the AIF from the true moved labels, from the phantom's
# hidden truth (ctp_steps/oracle.py). Chosen by config `stages.segment_frames: oracle`; synthetic cohort only.


rule segment_frames:
    input:
        upstream=previous_stage_status(),
        series=f"{PATIENT_DIR}/series.nii.gz",
        frames=f"{PATIENT_DIR}/frames.json",
        truth=f"{SYNTHETIC_DIR}/truth/{{center}}/{{patient}}/truth.json",
    output:
        frame_masks=f"{PATIENT_DIR}/frame_masks.nii.gz",
        aif=f"{PATIENT_DIR}/aif.parquet",
        status=f"{PATIENT_DIR}/segment_frames.status.json",
    params:
        truth_dir=lambda wc, input: str(Path(input.truth).parent),
        out_dir=lambda wc, output: str(Path(output.status).parent),
        code=code_fingerprint("oracle"),
    log:
        f"{LOGS}/segment_frames/{{center}}/{{patient}}.log",
    resources:
        mem_mb=3000,
        runtime=10,
    group:
        "patient"
    conda:
        "../../envs/imaging.yaml"
    shell:
        "ctp-steps oracle segment_frames --series {input.series:q} --frames {input.frames:q}"
        " --upstream {input.upstream:q} --truth-dir {params.truth_dir:q} --out-dir {params.out_dir:q}"
        " > {log:q} 2>&1"


PATIENT_STAGES.append("segment_frames")
