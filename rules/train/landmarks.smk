# `snakemake train`: the landmark heatmap net on phantom patients made for training only (roles train /
# validation, seeds disjoint from the cohort's). Writes under results/training/landmark_net/, never into
# models/: ship with
#   ctp-steps landmarks-ship --weights results/training/landmark_net/landmark_net.pt \
#       --metrics results/training/landmark_net/metrics.json

from ctp_steps.landmarks.data import training_plan

LANDMARK_TRAINING = CFG.landmarks.training
LANDMARK_TRAIN_DIR = f"{RESULTS}/training/landmark_net"
LANDMARK_CASES = sorted(training_plan(LANDMARK_TRAINING))
# Only what changes the cases: new steps, widths or crops do not regenerate the phantoms.
LANDMARK_DATA_CONFIG = LANDMARK_TRAINING.model_dump_json(include={"train_patients", "val_patients", "seed", "grids", "anatomy"})


rule landmark_training_case:
    output:
        f"{LANDMARK_TRAIN_DIR}/data/{{case}}.npz",
    wildcard_constraints:
        case=r"[TV]\d{4}",
    params:
        config=LANDMARK_DATA_CONFIG,
        apex_cap_fraction=CFG.landmarks.apex_cap_fraction,
        out_dir=lambda wc, output: str(Path(output[0]).parent),
        code=code_fingerprint("landmarks-data"),
    log:
        f"{LOGS}/training/landmark_net/data_{{case}}.log",
    resources:
        mem_mb=3000,
        runtime=15,
    threads: 1
    conda:
        "../../envs/ctp.yaml"
    shell:
        "ctp-steps landmarks-data --cases {wildcards.case} --config-json {params.config:q}"
        " --apex-cap-fraction {params.apex_cap_fraction} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule train_landmark_net:
    input:
        train=[f"{LANDMARK_TRAIN_DIR}/data/{c}.npz" for c in LANDMARK_CASES if c.startswith("T")],
        val=[f"{LANDMARK_TRAIN_DIR}/data/{c}.npz" for c in LANDMARK_CASES if c.startswith("V")],
    output:
        weights=f"{LANDMARK_TRAIN_DIR}/landmark_net.pt",
        metrics=f"{LANDMARK_TRAIN_DIR}/metrics.json",
    params:
        config=LANDMARK_TRAINING.model_dump_json(),
        apex_cap_fraction=CFG.landmarks.apex_cap_fraction,
        device=CFG.device,
        code=code_fingerprint("landmarks-train"),
    log:
        f"{LOGS}/training/landmark_net/train.log",
    resources:
        mem_mb=6000,
        runtime=120,
        gpu=GPUS,
    threads: LANDMARK_TRAINING.threads
    conda:
        "../../envs/ctp.yaml"
    shell:
        "ctp-steps landmarks-train --train {input.train:q} --val {input.val:q}"
        " --config-json {params.config:q} --apex-cap-fraction {params.apex_cap_fraction} --device {params.device}"
        " --out {output.weights:q} --metrics {output.metrics:q} > {log:q} 2>&1"


TRAIN_TARGETS.append(f"{LANDMARK_TRAIN_DIR}/landmark_net.pt")
