rule vocabulary:
    """Word vocabulary from the train captions only (the BiGRU text path)."""
    input:
        "data/{dataset}/dataset.json",
    output:
        "features/{dataset}/vocab.json",
    params:
        fga=FGA,
        common=COMMON,
        # the vocabulary's own settings (not the transformer encoders')
        text={k: v for k, v in config["features"]["text"].items() if k not in ("encoders", "stores")},
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


def text_store_name():
    """The text encoder whose cached word-piece features a run reads (train.text_encoder, a transformer, in
    frozen_features mode; fga.inputs.text_encoder_name), else None: the BiGRU reads vocab.json, finetune the
    captions themselves."""
    name = config["train"].get("text_encoder") or "bigru"
    frozen = config["train"].get("mode", "frozen_features") == "frozen_features"
    return name if name != "bigru" and frozen else None


def text_store_of(*splits):
    """Input function: the run's text-store files of `splits` (none with the BiGRU, the default)."""

    def files(w):
        name = text_store_name()
        return [f"features/{w.dataset}/text_{name}/{split}.h5" for split in splits] if name else []

    return files


# features/<dataset>/text_<encoder>/ is a text store, not a backbone's region store
ruleorder: text_encode > extract_features


rule text_encode:
    """Pretrained transformer -> last hidden state of every caption word piece of every split (frozen_features)."""
    input:
        "data/{dataset}/dataset.json",
    output:
        expand("features/{{dataset}}/text_{{encoder}}/{split}.h5", split=SPLITS),
    params:
        fga=FGA,
        common=COMMON,
        encoder=lambda w: config["features"]["text"].get("encoders", {}).get(w.encoder),
    log:
        "logs/features/{dataset}/text_{encoder}.log",
    benchmark:
        "benchmarks/logs/features/{dataset}/text_{encoder}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/fga.yaml"
    shell:
        "OMP_NUM_THREADS={threads} {params.fga} features text-encode --dataset {wildcards.dataset} "
        "--encoder {wildcards.encoder} {params.common} > {log} 2>&1"


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
