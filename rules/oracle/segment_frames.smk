# Validation-only oracle for `segment_frames`: frame masks (aorta, LV) and the AIF from the true moved labels, from the phantom's hidden truth
# (ctp_steps/oracle/segment_frames.py). Chosen by config `stages.segment_frames: oracle`; synthetic cohort only.


rule segment_frames:
    input:
        upstream=upstream("segment_frames"),
        series=patient_file("series"),
        frames=patient_file("frames"),
        truth=TRUTH,
    output:
        frame_masks=patient_file("frame_masks"),
        aif=patient_file("aif"),
        status=status_file("segment_frames"),
    params:
        files=stage_files,
        code=stage_fingerprint("segment_frames", "oracle"),
    log:
        stage_log("segment_frames"),
    resources:
        mem_mb=3000,
        runtime=10,
    group:
        "patient"
    conda:
        "../../envs/ctp.yaml"
    shell:
        run_stage("segment_frames", "oracle")
