# fga workflow: dataset -> region features -> training per backbone x method x seed -> recall -> report.
# Rules only declare; every step is an `fga` CLI verb (python -m fga), so dvc.yaml runs the same commands.
import os
from pathlib import Path

import yaml

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "params.yaml"


validate(config, "workflow/schemas/params.schema.yaml")

# Jobs import fga from this checkout even when the active environment (e.g. a --use-conda env) lacks it.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")]))


def resolved_params_file():
    """The CLI reads a params file: hand it exactly the config Snakemake sees (incl. --config overrides)."""
    path = Path(".snakemake/fga/params.resolved.yaml")
    text = yaml.safe_dump(config, sort_keys=True)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(path)


PARAMS = resolved_params_file()
FGA = "python -m fga"
COMMON = f"--params {PARAMS} --quiet"
GRID = config["grid"]
SPLITS = ["train", "val", "test"]

wildcard_constraints:
    dataset="[a-z0-9_]+",
    backbone="[A-Za-z0-9_]+",
    method="[a-z0-9_]+",
    seed=r"\d+",


include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        rules.report.output,
        expand(
            "results/{dataset}/{backbone}/{method}/seed{seed}/robustness.json",
            dataset=GRID["datasets"],
            backbone=GRID["backbones"],
            method=GRID["methods"],
            seed=GRID["seeds"],
        ),
