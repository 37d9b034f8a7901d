# Stage `segment_frames` (config `stages.segment_frames: vbnet`): VB-Net aorta (1) + LV blood pool (2) on every
# frame of the unregistered series → frame_masks.nii.gz (4D uint8), and the arterial input function (mean HU in
# the eroded aorta per frame) → aif.parquet (frame, time_s, hu, enhancement_hu). ctp_steps/segmentation.
from ctp_steps.models import weights_path

SEGMENTATION_INFERENCE_CODE = code_fingerprint("segment-frames")
# Only the inference settings: new training settings do not rerun the cohort (new weights do).
SEGMENTATION_INFERENCE_CONFIG = CFG.segmentation.model_dump_json(exclude={"network", "training"})


rule segment_frames:
    input:
        upstream=previous_stage_status(),
        series=f"{PATIENT_DIR}/series.nii.gz",
        frames=f"{PATIENT_DIR}/frames.json",
        weights=weights_path(CFG.segmentation.frames_model),
    output:
        frame_masks=f"{PATIENT_DIR}/frame_masks.nii.gz",
        aif=f"{PATIENT_DIR}/aif.parquet",
        status=f"{PATIENT_DIR}/segment_frames.status.json",
    params:
        out_dir=lambda wc, output: str(Path(output.status).parent),
        model=CFG.segmentation.frames_model,
        config=SEGMENTATION_INFERENCE_CONFIG,
        device=CFG.device,
        code=SEGMENTATION_INFERENCE_CODE,
    log:
        f"{LOGS}/segment_frames/{{center}}/{{patient}}.log",
    resources:
        mem_mb=3000,
        runtime=20,
        gpu=GPUS,
    threads: CFG.segmentation.threads
    group:
        "patient"
    conda:
        "../envs/imaging.yaml"
    shell:
        "ctp-steps segment-frames --series {input.series:q} --frames {input.frames:q}"
        " --weights {input.weights:q} --model {params.model:q} --device {params.device}"
        " --upstream {input.upstream:q} --out-dir {params.out_dir:q} --config-json {params.config:q}"
        " > {log:q} 2>&1"


PATIENT_STAGES.append("segment_frames")
VALIDATION_METRICS.append(f"{RESULTS}/validation/patients/{{center}}/{{patient}}/segment_frames.parquet")


rule validate_segment_frames:
    input:
        truth=f"{SYNTHETIC_DIR}/truth/{{center}}/{{patient}}/truth.json",
        masks=f"{PATIENT_DIR}/frame_masks.nii.gz",
        aif=f"{PATIENT_DIR}/aif.parquet",
        status=f"{PATIENT_DIR}/segment_frames.status.json",
    output:
        f"{RESULTS}/validation/patients/{{center}}/{{patient}}/segment_frames.parquet",
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
        "../envs/imaging.yaml"
    shell:
        "ctp-steps validate-segmentation frames --truth-dir {params.truth_dir:q} --masks {input.masks:q}"
        " --aif {input.aif:q} --status {input.status:q} --out {output:q} > {log:q} 2>&1"
