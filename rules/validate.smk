# `snakemake validate`: every stage's outputs vs the phantom's hidden truth.
# Only these rules read the truth folder.

rule validate_conversion:
    input:
        truth=TRUTH,
        series=patient_file("series"),
        frames=patient_file("frames"),
        status=status_file("convert"),
    output:
        validation_metrics("conversion"),
    params:
        phantom=CFG.synthetic.phantom.model_dump_json(),
        truth_dir=lambda wc, input: str(Path(input.truth).parent),
        code=code_fingerprint("validate-conversion"),
    log:
        f"{LOGS}/validate/conversion/{{center}}/{{patient}}.log",
    resources:
        mem_mb=2000,
        runtime=10,
    group:
        "patient"
    conda:
        "../envs/ctp.yaml"
    shell:
        "ctp-steps validate-conversion --truth-dir {params.truth_dir:q}"
        " --series {input.series:q} --frames {input.frames:q} --status {input.status:q}"
        " --params-json {params.phantom:q} --out {output:q} > {log:q} 2>&1"


rule validate:
    input:
        metrics=lambda wc: validation_inputs(),
        cohort=f"{RESULTS}/cohort/patients.parquet",
        config=f"{RESULTS}/cohort/config.json",  # the summary's `family` column (synthetic.family)
    output:
        f"{RESULTS}/validation/summary.parquet",
    params:
        out_dir=lambda wc, output: str(Path(output[0]).parent),
        code=code_fingerprint("validation-summary"),
    log:
        f"{LOGS}/validation_summary.log",
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/ctp.yaml"
    shell:
        "ctp-steps validation-summary --inputs {input.metrics:q}"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"
