rule report:
    """MLflow runs -> paper-style tables (md, tex, csv + provenance) and seaborn figures; logged as a report run."""
    input:
        # the report reads MLflow, not these files: they are the outputs of the jobs that logged the runs it
        # reads, so it runs after all of them and again when any of them reran
        metrics=grid_runs(f"{RESULTS}/{RUN}/metrics.json"),
        robustness=main_runs(f"{RESULTS}/{RUN}/robustness.json"),
    output:
        tables=directory(ROOTS.tables),
        figures=directory(ROOTS.figures),
    params:
        report=config["report"],
        bootstrap=config["evaluate"]["bootstrap"],  # the significance table's paired tests
        # the ablation table's variants and labels come from the methods sections (`arch:`, switches)
        methods=config["methods"],
        fga=FGA,
        common=COMMON,
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCHMARKS}/report.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/fga.yaml"
    shell:
        "{params.fga} report {params.common} > {log} 2>&1"
