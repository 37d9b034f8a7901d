# Stage `mbf`: myocardial blood flow from the registered frames, the myocardium mask, the AHA map and
# the AIF (ctp_steps/mbf): regularised and voxel-wise maps, segment table, curves, QC figure.
# Validation: every method vs the phantom's truth per patient, and the cohort's segment agreement (ICC).

MBF_BLOOD_VOLUME = (
    {"blood_volume": f"{PATIENT_DIR}/blood_volume.nii.gz"} if CFG.mbf.method == "one_compartment" else {}
)


rule mbf:
    input:
        upstream=previous_stage_status(),
        frames=f"{PATIENT_DIR}/frames.json",
        series=f"{PATIENT_DIR}/registered.nii.gz",
        myocardium=f"{PATIENT_DIR}/myocardium.nii.gz",
        aha=f"{PATIENT_DIR}/aha17.nii.gz",
        aif=f"{PATIENT_DIR}/aif.parquet",
    output:
        mbf=f"{PATIENT_DIR}/mbf.nii.gz",
        mbf_raw=f"{PATIENT_DIR}/mbf_raw.nii.gz",
        tac=f"{PATIENT_DIR}/tac.parquet",
        segments=f"{PATIENT_DIR}/segments_mbf.parquet",
        qc=f"{PATIENT_DIR}/mbf_qc.png",
        status=f"{PATIENT_DIR}/mbf.status.json",
        **MBF_BLOOD_VOLUME,
    params:
        config=CFG.mbf.model_dump_json(),
        device=CFG.device,
        blood_volume=lambda wc, output: f"--blood-volume {output.blood_volume}" if MBF_BLOOD_VOLUME else "",
        code=code_fingerprint("mbf"),
    log:
        f"{LOGS}/mbf/{{center}}/{{patient}}.log",
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=GPUS,
    threads: 1
    group:
        "patient"
    conda:
        "../envs/imaging.yaml"
    shell:
        "ctp-steps mbf --frames {input.frames:q} --series {input.series:q} --myocardium {input.myocardium:q}"
        " --aha {input.aha:q} --aif {input.aif:q} --upstream {input.upstream:q} --config-json {params.config:q}"
        " --mbf {output.mbf:q} --mbf-raw {output.mbf_raw:q} --tac {output.tac:q} --segments {output.segments:q}"
        " --qc {output.qc:q} --status {output.status:q} {params.blood_volume} --device {params.device} --threads {threads} > {log:q} 2>&1"


PATIENT_STAGES.append("mbf")
VALIDATION_METRICS.append(f"{RESULTS}/validation/patients/{{center}}/{{patient}}/mbf.parquet")


rule validate_mbf:
    input:
        truth=f"{SYNTHETIC_DIR}/truth/{{center}}/{{patient}}/truth.json",
        frames=f"{PATIENT_DIR}/frames.json",
        series=f"{PATIENT_DIR}/registered.nii.gz",
        myocardium=f"{PATIENT_DIR}/myocardium.nii.gz",
        aha=f"{PATIENT_DIR}/aha17.nii.gz",
        aif=f"{PATIENT_DIR}/aif.parquet",
        mbf=f"{PATIENT_DIR}/mbf.nii.gz",
        mbf_raw=f"{PATIENT_DIR}/mbf_raw.nii.gz",
        register=f"{PATIENT_DIR}/register.status.json",
        status=f"{PATIENT_DIR}/mbf.status.json",
    output:
        metrics=f"{RESULTS}/validation/patients/{{center}}/{{patient}}/mbf.parquet",
        segments=f"{RESULTS}/validation/patients/{{center}}/{{patient}}/mbf_segments.parquet",
    params:
        config=CFG.mbf.model_dump_json(),
        device=CFG.device,
        truth_dir=lambda wc, input: str(Path(input.truth).parent),
        patient_dir=lambda wc, input: str(Path(input.status).parent),
        code=code_fingerprint("validate-mbf"),
    log:
        f"{LOGS}/validate/mbf/{{center}}/{{patient}}.log",
    resources:
        mem_mb=4000,
        runtime=30,
    threads: 1
    group:
        "patient"
    conda:
        "../envs/imaging.yaml"
    shell:
        "ctp-steps validate-mbf --truth-dir {params.truth_dir:q} --patient-dir {params.patient_dir:q}"
        " --config-json {params.config:q} --out {output.metrics:q} --segments-out {output.segments:q}"
        " --device {params.device} --threads {threads} > {log:q} 2>&1"


VALIDATION_COHORT_METRICS.append(f"{RESULTS}/validation/cohort/mbf_segments.parquet")


rule validate_mbf_cohort:
    input:
        per_patient(f"{RESULTS}/validation/patients/{{center}}/{{patient}}/mbf_segments.parquet"),
    output:
        f"{RESULTS}/validation/cohort/mbf_segments.parquet",
    params:
        code=code_fingerprint("validate-mbf-cohort"),
    log:
        f"{LOGS}/validate/mbf_cohort.log",
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/stats.yaml"
    shell:
        "ctp-steps validate-mbf-cohort --inputs {input:q} --out {output:q} > {log:q} 2>&1"
