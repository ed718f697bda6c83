rule report:
    """MLflow runs -> paper-style tables (md, tex, csv + provenance) and seaborn figures; logged as a report run."""
    input:
        # the report reads MLflow, not these files: they are the outputs of the jobs that logged the runs it
        # reads, so it runs after all of them and again when any of them reran
        metrics=grid_runs(f"results/{RUN}/metrics.json"),
        robustness=main_runs(f"results/{RUN}/robustness.json"),
    output:
        tables=directory(config["report"]["tables_dir"]),
        figures=directory(config["report"]["figures_dir"]),
    params:
        report=config["report"],
        bootstrap=config["evaluate"]["bootstrap"],  # the significance table's paired tests
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
