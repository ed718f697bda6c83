# GRM's ablation and sensitivity grid (params.yaml `sweeps`: the paper's Tables 2-3, Fig. 4a/b), a target of its
# own: `snakemake --cores all grm_sweeps`. Never part of the default target. It trains and evaluates grm and
# every listed variant (the train and evaluate rules), then rebuilds the report, which adds the sweep tables and
# figures (fga/report/grm.py) for the runs there are.
from fga.grid import sweep_cells

SWEEP_CELLS = sweep_cells(config)


def sweep_runs(pattern):
    """`pattern` for every (dataset, backbone, text encoder, method, seed) of the sweeps."""
    return [pattern.format(dataset=d, backbone=b, text=t, method=m, seed=s) for d, b, t, m, s in SWEEP_CELLS]


rule grm_sweeps:
    """Every sweep run evaluated, then `fga report` (no declared output: it rewrites the report's directories,
    so it runs whenever it is asked for)."""
    input:
        sweep_runs(f"{RESULTS}/{RUN}/metrics.json"),
    params:
        fga=FGA,
        common=COMMON,
    log:
        f"{LOGS}/grm_sweeps_report.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/fga.yaml"
    shell:
        "{params.fga} report {params.common} > {log} 2>&1"
