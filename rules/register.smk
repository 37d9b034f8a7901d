# Stage `register` (config `stages.registration: learned | simpleitk | none`): every frame aligned to a
# reference frame (default: peak enhancement around the LV) inside a box around the LV, the field pasted back
# onto the whole grid → the registered frames (4D float32 HU), their average, the displacement fields (4D vector,
# world mm), the frame masks warped alike, and a QC record. Needs the per-frame
# LV masks of `segment_frames` (whatever made them). ctp_steps/registration.
from ctp_steps.models import weights_path

REGISTER_METHOD = CFG.stages.registration
# SimpleITK, as the method or the learned net's fallback, takes ~20x the net's time (BENCHMARKS.md).
REGISTER_SLOWER = 20 if "simpleitk" in (REGISTER_METHOD, CFG.registration.fallback if REGISTER_METHOD == "learned" else None) else 1
# Only the inference settings: new training or network settings do not rerun the cohort (new weights do).
REGISTER_CONFIG = CFG.registration.model_dump_json(
    exclude={"training", "network", "threads"} if REGISTER_METHOD == "learned" else {"training", "threads"}
)


rule register:
    input:
        upstream=upstream("register"),
        series=patient_file("series"),
        frame_masks=patient_file("frame_masks"),
        weights=[weights_path(CFG.registration.model)] if REGISTER_METHOD == "learned" else [],
    output:
        registered=patient_file("registered"),
        average=patient_file("average"),
        fields=patient_file("displacement"),
        masks=patient_file("registered_masks"),
        qc=patient_file("registration_qc"),
        png=qc_figure(patient_file("registration_figure"), "register"),
        status=status_file("register"),
    params:
        files=stage_files,
        config=REGISTER_CONFIG,
        code=stage_fingerprint("register"),
    benchmark:
        stage_benchmark("register")
    log:
        stage_log("register"),
    resources:
        mem_mb=study_mem_mb("register"),
        runtime=study_runtime("register", slower=REGISTER_SLOWER),
        gpu=GPUS if REGISTER_METHOD == "learned" else 0,
    threads: patient_threads(CFG.registration.threads)
    group:
        "patient"
    conda:
        "../envs/ctp.yaml"
    shell:
        run_stage("register")


rule validate_register:
    input:
        truth=TRUTH,
        fields=patient_file("displacement"),
        qc=patient_file("registration_qc"),
        status=status_file("register"),
    output:
        validation_metrics("registration"),
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
        "../envs/ctp.yaml"
    shell:
        "ctp-steps validate-register --truth-dir {params.truth_dir:q} --patient-dir {params.patient_dir:q}"
        " --status {input.status:q} --out {output:q} > {log:q} 2>&1"
