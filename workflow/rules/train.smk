rule train:
    """One run: frozen features in, best-val-rSum checkpoint out (GPU when the cluster gives one)."""
    priority: 1
    input:
        train="features/{dataset}/{backbone}/train.h5",
        val="features/{dataset}/{backbone}/val.h5",
        text=text_inputs,
    output:
        f"{RUNS}/{RUN}/checkpoint.safetensors",
    params:
        fga=FGA,
        common=COMMON,
        # the caption encoder is the run's {text} (--text-encoder), not train.text_encoder's default
        train={k: v for k, v in config["train"].items() if k != "text_encoder"},
        method=lambda w: config["methods"].get(w.method, {}),  # variants resolved (common.smk)
    log:
        f"{LOGS}/train/{RUN}.log",
    benchmark:
        f"{BENCHMARKS}/train/{RUN}.tsv"
    threads: config["train"].get("threads", 1)
    resources:
        mem_mb=6000,
        runtime=240,
        gpu=GPU,
    conda:
        "../envs/fga.yaml"
    shell:
        "{params.fga} train --dataset {wildcards.dataset} --backbone {wildcards.backbone} --method {wildcards.method} "
        "--seed {wildcards.seed} --text-encoder {wildcards.text} {params.common} > {log} 2>&1"
