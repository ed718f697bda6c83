rule train:
    """One run: frozen features in, best-val-rSum checkpoint out (GPU when the cluster gives one)."""
    input:
        train="features/{dataset}/{backbone}/train.h5",
        val="features/{dataset}/{backbone}/val.h5",
        vocab="features/{dataset}/vocab.json",
    output:
        "runs/{dataset}/{backbone}/{method}/seed{seed}/checkpoint.pt",
    params:
        train=config["train"],
        method=lambda w: config["methods"].get(w.method, {}),
    log:
        "logs/train/{dataset}/{backbone}/{method}/seed{seed}.log",
    benchmark:
        "benchmarks/logs/train/{dataset}/{backbone}/{method}/seed{seed}.tsv"
    threads: config["train"].get("threads", 1)
    resources:
        mem_mb=6000,
        runtime=240,
        gpu=1 if config["train"].get("device") == "cuda" else 0,
    conda:
        "../envs/fga.yaml"
    shell:
        "{FGA} train --dataset {wildcards.dataset} --backbone {wildcards.backbone} --method {wildcards.method} "
        "--seed {wildcards.seed} {COMMON} > {log} 2>&1"
