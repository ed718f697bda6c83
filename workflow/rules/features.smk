rule vocabulary:
    """Word vocabulary from the train captions only (the BiGRU text path)."""
    input:
        "data/{dataset}/dataset.json",
    output:
        "features/{dataset}/vocab.json",
    params:
        fga=FGA,
        common=COMMON,
        text=config["features"]["text"],
    log:
        "logs/features/{dataset}/vocab.log",
    benchmark:
        "benchmarks/logs/features/{dataset}/vocab.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/fga.yaml"
    shell:
        "{params.fga} features text --dataset {wildcards.dataset} {params.common} > {log} 2>&1"


rule extract_features:
    """Frozen backbone -> region features of every split in the HDF5 store."""
    # first: every training job waits for it (the distractor sets are needed only by the last stage)
    priority: 2
    input:
        dataset="data/{dataset}/dataset.json",
        instances="data/{dataset}/instances.json",
        # a `regions: boxes` backbone may read its boxes from a file instead: rerun when it changes
        boxes_file=lambda w: [f] if (f := config["features"]["backbones"].get(w.backbone, {}).get("boxes_file")) else [],
    output:
        expand("features/{{dataset}}/{{backbone}}/{split}.h5", split=SPLITS),
    params:
        fga=FGA,
        common=COMMON,
        backbone=lambda w: config["features"]["backbones"].get(w.backbone)
        or config["features"].get("precomp", {}).get(w.backbone),
        data=lambda w: config["data"].get(w.dataset, {}),
    log:
        "logs/features/{dataset}/{backbone}.log",
    benchmark:
        "benchmarks/logs/features/{dataset}/{backbone}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../envs/fga.yaml"
    shell:
        "OMP_NUM_THREADS={threads} {params.fga} features extract --dataset {wildcards.dataset} "
        "--backbone {wildcards.backbone} {params.common} > {log} 2>&1"
