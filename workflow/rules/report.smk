# The report reads MLflow, not these files: its inputs are the outputs of the jobs that logged the runs it reads
# (evaluate, and robustness where that rule exists), so it runs after all of them and again when any reran.
REPORT_RUN_OUTPUTS = [rules.evaluate.output.metrics] + (
    [rules.robustness.output[0]] if rules.has("robustness") else []
)


rule report:
    """MLflow runs -> paper-style tables (md, tex, csv + provenance) and seaborn figures; logged as a report run."""
    input:
        expand(
            REPORT_RUN_OUTPUTS,
            dataset=GRID["datasets"],
            backbone=GRID["backbones"],
            method=GRID["methods"],
            seed=GRID["seeds"],
        ),
    output:
        tables=directory(config["report"]["tables_dir"]),
        figures=directory(config["report"]["figures_dir"]),
    params:
        report=config["report"],
        # ablation variants are recognised by their methods' `arch:` key
        variants={m: s["arch"] for m, s in config["methods"].items() if isinstance(s, dict) and "arch" in s},
        fga=FGA,
        common=COMMON,
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
        "{params.fga} report {params.common} > {log} 2>&1"
