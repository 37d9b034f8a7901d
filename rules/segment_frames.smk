# Stage `segment_frames` (config `stages.segment_frames: vbnet`): VB-Net aorta (1) + LV blood pool (2) on every
# frame of the unregistered series → frame masks (4D uint8), and the arterial input function (mean HU in
# the eroded aorta per frame: frame, time_s, hu, enhancement_hu). ctp_steps/segmentation/segment_frames.py.
from ctp_steps.models import weights_path

# Only the inference settings: new training settings do not rerun the cohort (new weights do).
SEGMENTATION_INFERENCE_CONFIG = CFG.segmentation.model_dump_json(exclude={"network", "training"})


rule segment_frames:
    input:
        upstream=upstream("segment_frames"),
        series=patient_file("series"),
        frames=patient_file("frames"),
        weights=weights_path(CFG.segmentation.frames_model),
    output:
        frame_masks=patient_file("frame_masks"),
        aif=patient_file("aif"),
        status=status_file("segment_frames"),
    params:
        files=stage_files,
        config=SEGMENTATION_INFERENCE_CONFIG,
        code=stage_fingerprint("segment_frames"),
    benchmark:
        stage_benchmark("segment_frames")
    log:
        stage_log("segment_frames"),
    resources:
        mem_mb=study_mem_mb("segment_frames"),
        runtime=study_runtime("segment_frames"),
        gpu=GPUS,
    threads: patient_threads(CFG.segmentation.threads)
    group:
        "patient"
    conda:
        "../envs/ctp.yaml"
    shell:
        run_stage("segment_frames")


rule validate_segment_frames:
    input:
        truth=TRUTH,
        masks=patient_file("frame_masks"),
        aif=patient_file("aif"),
        status=status_file("segment_frames"),
    output:
        validation_metrics("segment_frames"),
    params:
        truth_dir=lambda wc, input: str(Path(input.truth).parent),
        code=code_fingerprint("validate-segmentation"),
    log:
        f"{LOGS}/validate/segment_frames/{{center}}/{{patient}}.log",
    resources:
        mem_mb=2000,
        runtime=5,
    group:
        "patient"
    conda:
        "../envs/ctp.yaml"
    shell:
        "ctp-steps validate-segmentation frames --truth-dir {params.truth_dir:q} --masks {input.masks:q}"
        " --aif {input.aif:q} --status {input.status:q} --out {output:q} > {log:q} 2>&1"
