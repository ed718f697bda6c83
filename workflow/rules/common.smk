# Shared definitions of the rules: the validated config, the resolved params file every job reads, the grid.
from pathlib import Path

import yaml

from snakemake.utils import validate


validate(config, "../schemas/params.schema.yaml")

# Jobs import fga from this checkout even when the active environment (e.g. a --use-conda env) lacks it.
shell.prefix('set -euo pipefail; export PYTHONPATH="{workflow.basedir}${{PYTHONPATH:+:$PYTHONPATH}}"; ')


def resolved_params_file():
    """The CLI reads a params file: hand it exactly the config Snakemake sees (incl. --config overrides)."""
    path = Path(".snakemake/fga/params.resolved.yaml")
    text = yaml.safe_dump(config, sort_keys=True)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(path)


FGA = "python -m fga"
COMMON = f"--params {resolved_params_file()} --quiet"
GRID = config["grid"]
SPLITS = ["train", "val", "test"]
RUN = "{dataset}/{backbone}/{method}/seed{seed}"

EVAL = config["evaluate"]
ROBUST = config.get("robustness", {})
SAVE_MATRIX = EVAL.get("save_matrix", "none") != "none"
QBNORM = EVAL.get("qbnorm", {}).get("enabled", True)
EVAL_SPLIT = EVAL.get("split", "test")
DISTRACTORS = ROBUST.get("distractors", [2, 4, 8])
# evaluation memory: the similarity block budget plus the encodings and the result matrix
EVAL_MEM_MB = int(EVAL.get("memory_budget_mb", 4096)) + 4000
GPU = 1 if config["train"].get("device") == "cuda" else 0
ABLATION = GRID.get("ablation") or {"backbones": [], "methods": []}


def main_runs(pattern):
    """`pattern` for each dataset x backbone x method x seed of the grid (the runs the robustness stage scores)."""
    return expand(pattern, dataset=GRID["datasets"], backbone=GRID["backbones"], method=GRID["methods"],
                  seed=GRID["seeds"])


def grid_runs(pattern):
    """`pattern` for every run of the grid: the main runs, then the ablation variants' (every seed)."""
    main = main_runs(pattern)
    variants = expand(pattern, dataset=GRID["datasets"], backbone=ABLATION["backbones"],
                      method=ABLATION["methods"], seed=GRID["seeds"])
    return main + [p for p in variants if p not in main]


def distractor_features_of(w):
    """The distractor levels' test features a robustness run scores (synthetic test split only)."""
    if w.dataset != "synthetic" or EVAL_SPLIT != "test":
        return []
    return expand("features/synthetic_distract{n}/{backbone}/test.h5", n=DISTRACTORS, backbone=w.backbone)
