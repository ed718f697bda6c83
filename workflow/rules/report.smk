rule report:
    """MLflow evaluate runs -> the paper-style tables (mean ± std over seeds)."""
    input:
        expand(
            "results/{dataset}/{backbone}/{method}/seed{seed}/metrics.json",
            dataset=GRID["datasets"],
            backbone=GRID["backbones"],
            method=GRID["methods"],
            seed=GRID["seeds"],
        ),
    output:
        expand("{tables}/main.{ext}", tables=config["report"]["tables_dir"], ext=["md", "csv", "tex"]),
    log:
        "logs/report.log",
    benchmark:
        "benchmarks/logs/report.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/fga.yaml"
    shell:
        "{FGA} report {COMMON} > {log} 2>&1"
