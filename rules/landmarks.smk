# Stage `landmarks` (config `stages.landmarks: heatmap`): the landmark heatmap net on the LV crop of the
# registered average → apex, mitral-valve centre (base), anterior RV insertion in world mm with
# confidences, and the AHA 17-segment map of the myocardium (ctp_steps/landmarks, ctp_steps/aha.py).
from ctp_steps.models import weights_path


rule landmarks:
    input:
        upstream=previous_stage_status(),
        average=f"{PATIENT_DIR}/average.nii.gz",
        myocardium=f"{PATIENT_DIR}/myocardium.nii.gz",
        weights=weights_path(CFG.landmarks.model),
    output:
        landmarks=f"{PATIENT_DIR}/landmarks.json",
        aha=f"{PATIENT_DIR}/aha17.nii.gz",
        png=f"{PATIENT_DIR}/landmarks.png",
        status=f"{PATIENT_DIR}/landmarks.status.json",
    params:
        config=CFG.landmarks.model_dump_json(exclude={"training"}),
        model=CFG.landmarks.model,
        device=CFG.device,
        code=code_fingerprint("landmarks"),
    log:
        f"{LOGS}/landmarks/{{center}}/{{patient}}.log",
    resources:
        mem_mb=2000,
        runtime=10,
        gpu=GPUS,
    threads: 1
    group:
        "patient"
    conda:
        "../envs/imaging.yaml"
    shell:
        "ctp-steps landmarks --average {input.average:q} --myocardium {input.myocardium:q}"
        " --upstream {input.upstream:q} --landmarks {output.landmarks:q} --aha {output.aha:q}"
        " --png {output.png:q} --status {output.status:q} --model {params.model:q}"
        " --config-json {params.config:q} --device {params.device} --title '{wildcards.center}/{wildcards.patient}'"
        " > {log:q} 2>&1"


PATIENT_STAGES.append("landmarks")
VALIDATION_METRICS.append(f"{RESULTS}/validation/patients/{{center}}/{{patient}}/landmarks.parquet")


rule validate_landmarks:
    input:
        truth=f"{SYNTHETIC_DIR}/truth/{{center}}/{{patient}}/truth.json",
        landmarks=f"{PATIENT_DIR}/landmarks.json",
        aha=f"{PATIENT_DIR}/aha17.nii.gz",
        status=f"{PATIENT_DIR}/landmarks.status.json",
        register_status=f"{PATIENT_DIR}/register.status.json",  # its record may name the reference frame
    output:
        f"{RESULTS}/validation/patients/{{center}}/{{patient}}/landmarks.parquet",
    params:
        truth_dir=lambda wc, input: str(Path(input.truth).parent),
        code=code_fingerprint("validate-landmarks"),
    log:
        f"{LOGS}/validate/landmarks/{{center}}/{{patient}}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    group:
        "patient"
    conda:
        "../envs/imaging.yaml"
    shell:
        "ctp-steps validate-landmarks --truth-dir {params.truth_dir:q} --landmarks {input.landmarks:q}"
        " --aha {input.aha:q} --status {input.status:q} --register-status {input.register_status:q}"
        " --out {output:q} > {log:q} 2>&1"
