# `snakemake train`: the two VB-Nets (aorta + LV blood pool on frames; myocardium on the aligned average) on
# phantom patients made for training only (roles train / validation, seeds disjoint from the cohort's).
# Writes under results/training/vbnet_*/, never into models/: ship with
#   python -m ctp_steps ship-segmentation vbnet_frames --checkpoint results/training/vbnet_frames/vbnet_frames.pt \
#       --report results/training/vbnet_frames/report.json
import json

from ctp_steps.segmentation.data import training_specs

SEG_TRAINING = CFG.segmentation.training
SEG_DATA_DIR = f"{RESULTS}/training/segmentation/data"
SEG_SPECS = training_specs(SEG_TRAINING.n_patients, SEG_TRAINING.n_validation_patients, SEG_TRAINING.seed)
SEG_CASES = {role: [s.patient_id for s in specs] for role, specs in SEG_SPECS.items()}
# Only what changes the cases: new steps, widths or crops do not regenerate the phantoms.
SEG_DATA_CONFIG = json.dumps(
    {"training": SEG_TRAINING.model_dump(mode="json", include={"n_patients", "n_validation_patients", "seed", "phantom"})}
)


rule segmentation_training_case:
    output:
        f"{SEG_DATA_DIR}/{{case}}.npz",
    wildcard_constraints:
        case=r"[TV]\d{4}",
    params:
        out_dir=lambda wc, output: str(Path(output[0]).parent),
        config=SEG_DATA_CONFIG,
        code=code_fingerprint("segmentation-data"),
    log:
        f"{LOGS}/training/segmentation/data_{{case}}.log",
    resources:
        mem_mb=3000,
        runtime=15,
    threads: 1
    conda:
        "../../envs/ctp.yaml"
    shell:
        "ctp-steps segmentation-data --patients {wildcards.case} --out-dir {params.out_dir:q}"
        " --config-json {params.config:q} > {log:q} 2>&1"


rule train_vbnet:
    input:
        train=expand(f"{SEG_DATA_DIR}/{{case}}.npz", case=SEG_CASES["train"]),
        val=expand(f"{SEG_DATA_DIR}/{{case}}.npz", case=SEG_CASES["validation"]),
    output:
        weights=f"{RESULTS}/training/vbnet_{{task}}/vbnet_{{task}}.pt",
        report=f"{RESULTS}/training/vbnet_{{task}}/report.json",
    wildcard_constraints:
        task="frames|myocardium",
    params:
        # the network and training sections only: inference settings do not retrain
        config=CFG.segmentation.model_dump_json(include={"network", "training"}),
        device=CFG.device,
        code=code_fingerprint("train-segmentation"),
    log:
        f"{LOGS}/training/vbnet_{{task}}.log",
    resources:
        mem_mb=6000,
        runtime=180,
        gpu=GPUS,
    threads: SEG_TRAINING.threads
    conda:
        "../../envs/ctp.yaml"
    shell:
        "ctp-steps train-segmentation {wildcards.task} --train {input.train:q} --val {input.val:q}"
        " --out {output.weights:q} --report {output.report:q} --device {params.device}"
        " --config-json {params.config:q} --command-line 'snakemake train (rule train_vbnet, task {wildcards.task})'"
        " > {log:q} 2>&1"


TRAIN_TARGETS.extend(f"{RESULTS}/training/vbnet_{task}/vbnet_{task}.pt" for task in ("frames", "myocardium"))
