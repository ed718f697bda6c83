rule text_features:
    """A caption encoder's text features of a dataset: the BiGRU's train-caption vocabulary (text_bigru/vocab.json);
    a transformer's last hidden state of every caption word piece of every split (text_<encoder>/<split>.h5)."""
    input:
        "data/{dataset}/dataset.json",
    output:
        directory("features/{dataset}/text_{text}"),
    params:
        fga=FGA,
        common=COMMON,
        # the encoder's own settings: the vocabulary's (not the transformers'), or the transformer's spec
        text=lambda w: {k: v for k, v in config["features"]["text"].items() if k != "encoders"}
        if w.text == "bigru" else config["features"]["text"].get("encoders", {}).get(w.text),
    log:
        "logs/features/{dataset}/text_{text}.log",
    benchmark:
        "benchmarks/logs/features/{dataset}/text_{text}.tsv"
    threads: lambda w: 1 if w.text == "bigru" else 2
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/fga.yaml"
    shell:
        "OMP_NUM_THREADS={threads} {params.fga} features text-encode --dataset {wildcards.dataset} "
        "--encoder {wildcards.text} {params.common} > {log} 2>&1"


def text_inputs(w):
    """The text features a run of encoder `{text}` reads: the BiGRU's vocabulary; a transformer's cached word
    pieces in frozen_features mode; none for a transformer in finetune mode, which tokenizes the captions itself
    (dvc.yaml's text_features stage, which cannot skip it, builds them anyway)."""
    if w.text != "bigru" and config["train"].get("mode", "frozen_features") != "frozen_features":
        return []
    return [f"features/{w.dataset}/text_{w.text}"]


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
    threads: config["features"].get("threads", 1)
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../envs/fga.yaml"
    shell:
        "OMP_NUM_THREADS={threads} {params.fga} features extract --dataset {wildcards.dataset} "
        "--backbone {wildcards.backbone} {params.common} > {log} 2>&1"
