# DICOM folder → 4D NIfTI in HU + frames.json, or a per-patient exclusion reason.

rule convert:
    input:
        dicom=lambda wc: DICOM_DIRS[(wc.center, wc.patient)],
    output:
        series=f"{PATIENT_DIR}/series.nii.gz",
        frames=f"{PATIENT_DIR}/frames.json",
        status=f"{PATIENT_DIR}/convert.status.json",
    params:
        min_frames=CFG.conversion.min_frames,
        code=code_fingerprint("convert"),
    log:
        f"{LOGS}/convert/{{center}}/{{patient}}.log",
    resources:
        mem_mb=2000,
        runtime=10,
    group:
        "patient"
    conda:
        "../envs/imaging.yaml"
    shell:
        "ctp-steps convert --dicom-dir {input.dicom:q} --series {output.series:q}"
        " --frames {output.frames:q} --status {output.status:q} --min-frames {params.min_frames}"
        " > {log:q} 2>&1"


PATIENT_STAGES.append("convert")
