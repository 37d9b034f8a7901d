# Cohort risk models of MACE from patients.parquet (ctp_steps/risk.py).

RISK_DIR = f"{RESULTS}/cohort/risk"


rule risk:
    input:
        f"{RESULTS}/cohort/patients.parquet",
    output:
        cox=f"{RISK_DIR}/cox.parquet",
        concordance=f"{RISK_DIR}/concordance.parquet",
        ph=f"{RISK_DIR}/ph_test.parquet",
        measurement_error=f"{RISK_DIR}/measurement_error.parquet",
        km=report(f"{RISK_DIR}/km.png", caption="../report/km.rst", category="risk"),
        forest=report(f"{RISK_DIR}/forest.png", caption="../report/forest.rst", category="risk"),
        report=f"{RISK_DIR}/report.md",
        summary=f"{RISK_DIR}/summary.txt",
    params:
        out_dir=lambda wc, output: str(Path(output.summary).parent),
        covariates=CFG.covariates,
        risk=CFG.risk.model_dump_json(),
        code=code_fingerprint("risk"),
    log:
        f"{LOGS}/risk.log",
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/ctp.yaml"
    shell:
        "ctp-steps risk --patients {input:q} --covariates {params.covariates}"
        " --risk-json {params.risk:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"
