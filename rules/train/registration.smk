# `snakemake train`: the registration net, unsupervised, on LV-box crops of phantom patients (roles train /
# validation, seeds disjoint from the cohort; the true motion is never used). Writes under
# results/training/regnet/, never into models/: ship with
#   python -m ctp_steps register-ship --weights results/training/regnet/regnet.pt --report results/training/regnet/training_report.json
REGNET_TRAIN_DIR = f"{RESULTS}/training/regnet"
# only what changes the crops: new step counts or widths do not regenerate the phantoms
REGNET_DATA_KEYS = {
    "network": {"spacing_mm", "output_size"},
    "training": {"n_patients", "frames_per_patient", "n_validation_patients", "seed"},
}
REGNET_DATA_CONFIG = CFG.registration.model_dump_json(**{"include": REGNET_DATA_KEYS})  # `include` is a Snakemake keyword


rule regnet_training_data:
    output:
        f"{REGNET_TRAIN_DIR}/data/{{role}}.npz",
    wildcard_constraints:
        role="train|validation",
    params:
        config=REGNET_DATA_CONFIG,
        phantom=CFG.synthetic.phantom.model_dump_json(),
        code=code_fingerprint("register-data"),
    log:
        f"{LOGS}/training/regnet/data_{{role}}.log",
    resources:
        mem_mb=4000,
        runtime=60,
    threads: 1
    conda:
        "../../envs/ctp.yaml"
    shell:
        "ctp-steps register-data --role {wildcards.role} --config-json {params.config:q}"
        " --phantom-json {params.phantom:q} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule train_regnet:
    input:
        train=f"{REGNET_TRAIN_DIR}/data/train.npz",
        val=f"{REGNET_TRAIN_DIR}/data/validation.npz",
    output:
        weights=f"{REGNET_TRAIN_DIR}/regnet.pt",
        report=f"{REGNET_TRAIN_DIR}/training_report.json",
    params:
        config=CFG.registration.model_dump_json(),
        device=CFG.device,
        code=code_fingerprint("register-train"),
    log:
        f"{LOGS}/training/regnet/train.log",
    resources:
        mem_mb=6000,
        runtime=120,
        gpu=GPUS,
    threads: CFG.registration.training.threads
    conda:
        "../../envs/ctp.yaml"
    shell:
        "ctp-steps register-train --train {input.train:q} --val {input.val:q} --config-json {params.config:q}"
        " --device {params.device} --out {output.weights:q} --report {output.report:q} > {log:q} 2>&1"


TRAIN_TARGETS.append(f"{REGNET_TRAIN_DIR}/regnet.pt")
