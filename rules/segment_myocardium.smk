# Stage `segment_myocardium` (config `stages.segment_myocardium: vbnet`): VB-Net myocardium on the registered
# average (average.nii.gz of the register stage, whatever its method) → myocardium.nii.gz. ctp_steps/segmentation.
from ctp_steps.models import weights_path

SEGMENTATION_INFERENCE_CODE = code_fingerprint("segment-myocardium")
SEGMENTATION_INFERENCE_CONFIG = CFG.segmentation.model_dump_json(exclude={"network", "training"})
REGISTER_STATUS = previous_stage_status()  # the register stage: its record may name the reference frame


rule segment_myocardium:
    input:
        upstream=previous_stage_status(),
        average=f"{PATIENT_DIR}/average.nii.gz",
        weights=weights_path(CFG.segmentation.myocardium_model),
    output:
        myocardium=f"{PATIENT_DIR}/myocardium.nii.gz",
        status=f"{PATIENT_DIR}/segment_myocardium.status.json",
    params:
        out_dir=lambda wc, output: str(Path(output.status).parent),
        model=CFG.segmentation.myocardium_model,
        config=SEGMENTATION_INFERENCE_CONFIG,
        device=CFG.device,
        code=SEGMENTATION_INFERENCE_CODE,
    log:
        f"{LOGS}/segment_myocardium/{{center}}/{{patient}}.log",
    resources:
        mem_mb=2000,
        runtime=10,
        gpu=GPUS,
    threads: CFG.segmentation.threads
    group:
        "patient"
    conda:
        "../envs/imaging.yaml"
    shell:
        "ctp-steps segment-myocardium --average {input.average:q}"
        " --weights {input.weights:q} --model {params.model:q} --device {params.device}"
        " --upstream {input.upstream:q} --out-dir {params.out_dir:q} --config-json {params.config:q}"
        " > {log:q} 2>&1"


PATIENT_STAGES.append("segment_myocardium")
VALIDATION_METRICS.append(f"{RESULTS}/validation/patients/{{center}}/{{patient}}/segment_myocardium.parquet")


rule validate_segment_myocardium:
    input:
        truth=f"{SYNTHETIC_DIR}/truth/{{center}}/{{patient}}/truth.json",
        mask=f"{PATIENT_DIR}/myocardium.nii.gz",
        status=f"{PATIENT_DIR}/segment_myocardium.status.json",
        register_status=REGISTER_STATUS,
    output:
        f"{RESULTS}/validation/patients/{{center}}/{{patient}}/segment_myocardium.parquet",
    params:
        truth_dir=lambda wc, input: str(Path(input.truth).parent),
        code=code_fingerprint("validate-segmentation"),
    log:
        f"{LOGS}/validate/segment_myocardium/{{center}}/{{patient}}.log",
    resources:
        mem_mb=2000,
        runtime=5,
    group:
        "patient"
    conda:
        "../envs/imaging.yaml"
    shell:
        "ctp-steps validate-segmentation myocardium --truth-dir {params.truth_dir:q} --masks {input.mask:q}"
        " --status {input.status:q} --register-status {input.register_status:q} --out {output:q} > {log:q} 2>&1"
