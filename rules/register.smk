# Stage `register` (config `stages.registration: learned | simpleitk | none`): every frame aligned to a
# reference frame (default: peak enhancement around the LV) inside a box around the LV, the field pasted back
# onto the whole grid → registered.nii.gz (4D float32 HU), average.nii.gz, displacement_mm.nii.gz (4D vector,
# world mm), registered_masks.nii.gz (the frame masks warped alike), registration_qc.json. Needs the per-frame
# LV masks of `segment_frames` (whatever made them). ctp_steps/registration.
from ctp_steps.models import weights_path

REGISTER_METHOD = CFG.stages.registration
REGISTER_CODE = code_fingerprint("register")
# Only the inference settings: new training or network settings do not rerun the cohort (new weights do).
REGISTER_CONFIG = CFG.registration.model_dump_json(
    exclude={"training", "network", "threads"} if REGISTER_METHOD == "learned" else {"training", "threads"}
)


rule register:
    input:
        upstream=previous_stage_status(),
        series=f"{PATIENT_DIR}/series.nii.gz",
        frame_masks=f"{PATIENT_DIR}/frame_masks.nii.gz",
        weights=[weights_path(CFG.registration.model)] if REGISTER_METHOD == "learned" else [],
    output:
        registered=f"{PATIENT_DIR}/registered.nii.gz",
        average=f"{PATIENT_DIR}/average.nii.gz",
        fields=f"{PATIENT_DIR}/displacement_mm.nii.gz",
        masks=f"{PATIENT_DIR}/registered_masks.nii.gz",
        qc=f"{PATIENT_DIR}/registration_qc.json",
        status=f"{PATIENT_DIR}/register.status.json",
    params:
        out_dir=lambda wc, output: str(Path(output.status).parent),
        method=REGISTER_METHOD,
        model=CFG.registration.model,
        config=REGISTER_CONFIG,
        device=CFG.device,
        code=REGISTER_CODE,
    log:
        f"{LOGS}/register/{{center}}/{{patient}}.log",
    resources:
        mem_mb=4000,
        runtime=lambda wc: 60 if REGISTER_METHOD == "simpleitk" else 15,
        gpu=GPUS if REGISTER_METHOD == "learned" else 0,
    threads: CFG.registration.threads
    group:
        "patient"
    conda:
        "../envs/imaging.yaml"
    shell:
        "ctp-steps register --method {params.method} --series {input.series:q}"
        " --frame-masks {input.frame_masks:q} --upstream {input.upstream:q} --out-dir {params.out_dir:q}"
        " --model {params.model:q} --config-json {params.config:q} --device {params.device} --threads {threads}"
        " > {log:q} 2>&1"


PATIENT_STAGES.append("register")
VALIDATION_METRICS.append(f"{RESULTS}/validation/patients/{{center}}/{{patient}}/registration.parquet")


rule validate_register:
    input:
        truth=f"{SYNTHETIC_DIR}/truth/{{center}}/{{patient}}/truth.json",
        fields=f"{PATIENT_DIR}/displacement_mm.nii.gz",
        qc=f"{PATIENT_DIR}/registration_qc.json",
        status=f"{PATIENT_DIR}/register.status.json",
    output:
        f"{RESULTS}/validation/patients/{{center}}/{{patient}}/registration.parquet",
    params:
        truth_dir=lambda wc, input: str(Path(input.truth).parent),
        patient_dir=lambda wc, input: str(Path(input.status).parent),
        code=code_fingerprint("validate-register"),
    log:
        f"{LOGS}/validate/register/{{center}}/{{patient}}.log",
    resources:
        mem_mb=2000,
        runtime=10,
    group:
        "patient"
    conda:
        "../envs/imaging.yaml"
    shell:
        "ctp-steps validate-register --truth-dir {params.truth_dir:q} --patient-dir {params.patient_dir:q}"
        " --status {input.status:q} --out {output:q} > {log:q} 2>&1"
