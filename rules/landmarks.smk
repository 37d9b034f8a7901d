# Stage `landmarks` (config `stages.landmarks: heatmap`): the landmark heatmap net on the LV crop of the
# registered average → apex, mitral-valve centre (base), anterior RV insertion in world mm with
# confidences, and the AHA 17-segment map of the myocardium (ctp_steps/landmarks/stage.py, ctp_steps/aha.py).
from ctp_steps.models import weights_path


rule landmarks:
    input:
        upstream=upstream("landmarks"),
        average=patient_file("average"),
        myocardium=patient_file("myocardium"),
        weights=weights_path(CFG.landmarks.model),
    output:
        landmarks=patient_file("landmarks"),
        aha=patient_file("aha17"),
        png=qc_figure(patient_file("landmarks_qc"), "landmarks"),
        status=status_file("landmarks"),
    params:
        files=stage_files,
        config=CFG.landmarks.model_dump_json(exclude={"training"}),
        code=stage_fingerprint("landmarks"),
    benchmark:
        stage_benchmark("landmarks")
    log:
        stage_log("landmarks"),
    resources:
        mem_mb=study_mem_mb("landmarks"),
        runtime=study_runtime("landmarks"),
        gpu=GPUS,
    threads: patient_threads(1)
    group:
        "patient"
    conda:
        "../envs/ctp.yaml"
    shell:
        run_stage("landmarks")


rule validate_landmarks:
    input:
        truth=TRUTH,
        landmarks=patient_file("landmarks"),
        aha=patient_file("aha17"),
        status=status_file("landmarks"),
        register_status=status_file("register"),  # its record may name the reference frame
    output:
        validation_metrics("landmarks"),
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
        "../envs/ctp.yaml"
    shell:
        "ctp-steps validate-landmarks --truth-dir {params.truth_dir:q} --landmarks {input.landmarks:q}"
        " --aha {input.aha:q} --status {input.status:q} --register-status {input.register_status:q}"
        " --out {output:q} > {log:q} 2>&1"
