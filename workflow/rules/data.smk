# Downloads need the network, which cluster compute nodes often lack: with an executor (Slurm) this rule runs
# where snakemake runs (the login node), not as a batch job.
localrules: prepare_data


rule prepare_data:
    """Generate (synthetic) or download and prepare a dataset into the dataset.json/instances.json contract."""
    output:
        dataset="data/{dataset}/dataset.json",
        instances="data/{dataset}/instances.json",
    params:
        fga=FGA,
        common=COMMON,
        data=lambda w: config["data"].get(w.dataset, {}),
    log:
        "logs/data/{dataset}.log",
    benchmark:
        "benchmarks/logs/data/{dataset}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=120,
    conda:
        "../envs/fga.yaml"
    shell:
        "{params.fga} data prepare --dataset {wildcards.dataset} {params.common} > {log} 2>&1"
