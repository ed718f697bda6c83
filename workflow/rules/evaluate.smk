rule evaluate:
    """Recall@1/5/10 both ways and rSum of one run on the test split."""
    input:
        checkpoint="runs/{dataset}/{backbone}/{method}/seed{seed}/checkpoint.pt",
        test="features/{dataset}/{backbone}/test.h5",
    output:
        "results/{dataset}/{backbone}/{method}/seed{seed}/metrics.json",
    params:
        evaluate=config["evaluate"],
    log:
        "logs/evaluate/{dataset}/{backbone}/{method}/seed{seed}.log",
    benchmark:
        "benchmarks/logs/evaluate/{dataset}/{backbone}/{method}/seed{seed}.tsv"
    threads: config["train"].get("threads", 1)
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../envs/fga.yaml"
    shell:
        "{FGA} evaluate --dataset {wildcards.dataset} --backbone {wildcards.backbone} --method {wildcards.method} "
        "--seed {wildcards.seed} {COMMON} > {log} 2>&1"
