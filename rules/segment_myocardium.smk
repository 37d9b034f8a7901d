# Stage `segment_myocardium` (config `stages.segment_myocardium: vbnet`): VB-Net myocardium on the registered
# average (average.nii.gz of the register stage, whatever its method) → the myocardium mask.
# ctp_steps/segmentation/segment_myocardium.py.
from ctp_steps.models import weights_path

SEGMENTATION_INFERENCE_CONFIG = CFG.segmentation.model_dump_json(exclude={"network", "training"})


rule segment_myocardium:
    input:
        upstream=upstream("segment_myocardium"),
        average=patient_file("average"),
        weights=weights_path(CFG.segmentation.myocardium_model),
    output:
        myocardium=patient_file("myocardium"),
        status=status_file("segment_myocardium"),
    params:
        files=stage_files,
        config=SEGMENTATION_INFERENCE_CONFIG,
        code=stage_fingerprint("segment_myocardium"),
    benchmark:
        stage_benchmark("segment_myocardium")
    log:
        stage_log("segment_myocardium"),
    resources:
        mem_mb=study_mem_mb("segment_myocardium"),
        runtime=study_runtime("segment_myocardium"),
        gpu=GPUS,
    threads: patient_threads(CFG.segmentation.threads)
    group:
        "patient"
    conda:
        "../envs/ctp.yaml"
    shell:
        run_stage("segment_myocardium")


rule validate_segment_myocardium:
    input:
        truth=TRUTH,
        mask=patient_file("myocardium"),
        status=status_file("segment_myocardium"),
        register_status=status_file("register"),  # its record may name the reference frame
    output:
        validation_metrics("segment_myocardium"),
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
        "../envs/ctp.yaml"
    shell:
        "ctp-steps validate-segmentation myocardium --truth-dir {params.truth_dir:q} --masks {input.mask:q}"
        " --status {input.status:q} --register-status {input.register_status:q} --out {output:q} > {log:q} 2>&1"
