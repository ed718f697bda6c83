# data/synthetic_distract<n>/ and its features are made by the distractor rules, never by prepare_data/extract_features
ruleorder: distractor_data > prepare_data
ruleorder: distractor_features > extract_features

wildcard_constraints:
    n=r"\d+",


rule evaluate:
    """Recall@1/5/10 both ways and rSum of one run (+ bootstrap CIs, QB-Norm column, per-query ranks)."""
    input:
        checkpoint=f"{RUNS}/{RUN}/checkpoint.safetensors",
        test=f"features/{{dataset}}/{{backbone}}/{EVAL_SPLIT}.h5",
        bank=qbnorm_bank_of,
        text=text_inputs,
    output:
        metrics=f"{RESULTS}/{RUN}/metrics.json",
        ranks=f"{RESULTS}/{RUN}/ranks.npz",
        attention=f"{RESULTS}/{RUN}/attention.json",
        **({"matrix": f"{RESULTS}/{RUN}/sim_{EVAL_SPLIT}.npy"} if SAVE_MATRIX else {}),
    params:
        fga=FGA,
        common=COMMON,
        evaluate=evaluate_params,  # the dataset's own settings (evaluate.per_dataset)
    log:
        f"{LOGS}/evaluate/{RUN}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{RUN}.tsv"
    threads: config["train"].get("threads", 1)
    resources:
        mem_mb=eval_mem_mb,
        runtime=60,
        gpu=GPU,
    conda:
        "../envs/fga.yaml"
    shell:
        "{params.fga} evaluate --dataset {wildcards.dataset} --backbone {wildcards.backbone} --method {wildcards.method} "
        "--seed {wildcards.seed} --text-encoder {wildcards.text} {params.common} > {log} 2>&1"


rule distractor_data:
    """The synthetic test images re-rendered with n extra, never-mentioned objects."""
    input:
        dataset="data/synthetic/dataset.json",
        instances="data/synthetic/instances.json",
    output:
        dataset="data/synthetic_distract{n}/dataset.json",
        instances="data/synthetic_distract{n}/instances.json",
    params:
        fga=FGA,
        common=COMMON,
        data=config["data"].get("synthetic", {}),
        seed=ROBUST.get("distractor_seed", 0),
    log:
        "logs/data/synthetic_distract{n}.log",
    benchmark:
        "benchmarks/logs/data/synthetic_distract{n}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/fga.yaml"
    shell:
        "{params.fga} robustness distractors --n {wildcards.n} {params.common} > {log} 2>&1"


rule distractor_features:
    """Test features of one distractor level (shared by every method and seed of the backbone)."""
    input:
        dataset="data/synthetic_distract{n}/dataset.json",
        instances="data/synthetic_distract{n}/instances.json",
    output:
        "features/synthetic_distract{n}/{backbone}/test.h5",
    params:
        fga=FGA,
        common=COMMON,
        backbone=lambda w: config["features"]["backbones"][w.backbone],
    log:
        "logs/features/synthetic_distract{n}/{backbone}.log",
    benchmark:
        "benchmarks/logs/features/synthetic_distract{n}/{backbone}.tsv"
    threads: config["features"].get("threads", 1)
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/fga.yaml"
    shell:
        "OMP_NUM_THREADS={threads} {params.fga} robustness distractors --n {wildcards.n} --backbone {wildcards.backbone} "
        "{params.common} > {log} 2>&1"


rule robustness:
    """Recall per clutter bin (full gallery), on the cluttered subset, and against added distractors."""
    input:
        checkpoint=f"{RUNS}/{RUN}/checkpoint.safetensors",
        test=f"features/{{dataset}}/{{backbone}}/{EVAL_SPLIT}.h5",
        text=text_inputs,
        instances="data/{dataset}/instances.json",
        distractors=distractor_features_of,
        # the evaluate stage's saved matrix is reused when there is one
        **({"matrix": f"{RESULTS}/{RUN}/sim_{EVAL_SPLIT}.npy", "metrics": f"{RESULTS}/{RUN}/metrics.json"}
           if SAVE_MATRIX else {}),
    output:
        f"{RESULTS}/{RUN}/robustness.json",
    params:
        fga=FGA,
        common=COMMON,
        robustness=ROBUST,
        evaluate=evaluate_params,  # the dataset's own settings (evaluate.per_dataset)
    log:
        f"{LOGS}/robustness/{RUN}.log",
    benchmark:
        f"{BENCHMARKS}/robustness/{RUN}.tsv"
    threads: config["train"].get("threads", 1)
    resources:
        mem_mb=eval_mem_mb,
        runtime=60,
        gpu=GPU,
    conda:
        "../envs/fga.yaml"
    shell:
        "{params.fga} robustness --dataset {wildcards.dataset} --backbone {wildcards.backbone} --method {wildcards.method} "
        "--seed {wildcards.seed} --text-encoder {wildcards.text} {params.common} > {log} 2>&1"
