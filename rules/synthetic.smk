# The embedded default cohort: phantom patients as DICOM, hidden truth, a manifest.
import json
from dataclasses import asdict

from ctp_steps.workflow import synthetic_specs

SYNTHETIC_SPECS = (
    {(s.center, s.patient_id): asdict(s) for s in synthetic_specs(CFG)}
    if CFG.uses_synthetic_cohort
    else {}
)


rule synthesize_patient:
    output:
        dicom=directory(f"{SYNTHETIC_DIR}/dicom/{{center}}/{{patient}}"),
        truth=f"{SYNTHETIC_DIR}/truth/{{center}}/{{patient}}/truth.json",
    params:
        spec=lambda wc: json.dumps(SYNTHETIC_SPECS[(wc.center, wc.patient)]),
        phantom=CFG.synthetic.phantom.model_dump_json(),
        native=CFG.synthetic.native_grid.model_dump_json() if CFG.synthetic.native_grid else "",
        family=CFG.synthetic.family,
        truth_dir=lambda wc, output: str(Path(output.truth).parent),
        code=code_fingerprint("synthesize"),
    log:
        f"{LOGS}/synthesize/{{center}}/{{patient}}.log",
    resources:
        mem_mb=2000,
        runtime=10,
    group:
        "patient"
    conda:
        "../envs/ctp.yaml"
    shell:
        "ctp-steps synthesize --spec-json {params.spec:q} --params-json {params.phantom:q}"
        " --dicom-dir {output.dicom:q} --truth-dir {params.truth_dir:q} --native-json={params.native:q}"
        " --family {params.family} > {log:q} 2>&1"


rule synthetic_manifest:
    input:
        truth=per_patient(f"{SYNTHETIC_DIR}/truth/{{center}}/{{patient}}/truth.json"),
    output:
        f"{SYNTHETIC_DIR}/manifest.csv",
    params:
        outcome=CFG.synthetic.outcome.model_dump_json(),
        seed=CFG.synthetic.seed,
        code=code_fingerprint("synthetic-manifest"),
    log:
        f"{LOGS}/synthetic_manifest.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/ctp.yaml"
    shell:
        "ctp-steps synthetic-manifest --truth {input.truth:q} --outcome-json {params.outcome:q}"
        " --seed {params.seed} --out {output:q} > {log:q} 2>&1"
