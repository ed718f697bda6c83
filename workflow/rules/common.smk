# Shared definitions of the rules: the config (typed, validated, variants resolved), the params file jobs read, the grid.
import sys

if workflow.basedir not in sys.path:
    sys.path.insert(0, workflow.basedir)  # this checkout's fga, also when the environment running snakemake lacks it

from fga.config import evaluation_section, load_params, snakemake_config, write_resolved
from fga.errors import UserError
from fga.grid import text_encoders
from fga.paths import output_roots, shared_sections_problem

try:
    # params.yaml + --configfile overlays + --config values, as the fga CLI reads a params file: the --config
    # strings typed by the schema, one schema error as one line naming the file, `arch:` variants resolved
    # over the final config (so train's `method` param below changes when the base method changes)
    config.update(snakemake_config(config, workflow.configfiles, workflow.config_settings.configfiles,
                                   workflow.config_settings.config))
    # an experiment other than the default shares data/ and features/ with it: it may not rebuild them
    problem = shared_sections_problem(config, load_params("params.yaml"), "params.yaml")
    if problem is not None:
        raise UserError(problem)
except UserError as exc:
    print(f"fga: error: {exc}", file=sys.stderr)
    sys.exit(2)  # the fga CLI's status for bad input, without Snakemake's traceback and schema dump

# Jobs import fga from this checkout even when the active environment (e.g. a --use-conda env) lacks it.
shell.prefix('set -euo pipefail; export PYTHONPATH="{workflow.basedir}${{PYTHONPATH:+:$PYTHONPATH}}"; ')


class Untracked:
    """A rule param that Snakemake formats into the shell command but leaves out of its params trigger.

    Snakemake compares the repr of params it knows (str, dict, ...) and skips other objects. The params file's
    name is the hash of the whole config, and the rules list the sections they depend on as params of their
    own, so tracking the name too would rerun every job on any change of any key.
    """

    def __init__(self, text):
        self.text = text

    def __str__(self):
        return self.text


FGA = "python -m fga"
# content-addressed and never rewritten: a dry run or a second workflow with other params cannot change what
# a running job reads (the files are tiny; delete .snakemake/fga/ when no workflow is running to tidy up).
# --defer-tracking: jobs keep their MLflow runs in LOGS/tracking_pending/ instead of importing MLflow (~2-3 s a
# job); the report job and the Snakefile's onsuccess/onerror handlers log them (`fga tracking sync`)
COMMON = Untracked(f"--params {write_resolved(config, '.snakemake/fga')} --quiet --defer-tracking")
GRID = config["grid"]
SPLITS = ["train", "val", "test"]
RUN = "{dataset}/{backbone}/{text}/{method}/seed{seed}"  # fga.grid.run_path
# the experiment's output roots (fga/paths.py): runs/, results/, logs/... for `experiment: default`,
# experiments/<name>/runs/, ... for any other, so experiments run side by side; data/ and features/ are shared
ROOTS = output_roots(config)
RUNS = ROOTS.runs
RESULTS = ROOTS.results
LOGS = ROOTS.logs
BENCHMARKS = ROOTS.benchmarks

EVAL = config["evaluate"]
ROBUST = config.get("robustness", {})
# split and save_matrix are global (they name the stages' files); the rest may differ per dataset
SAVE_MATRIX = EVAL.get("save_matrix", "none") != "none"
EVAL_SPLIT = EVAL.get("split", "test")
DISTRACTORS = ROBUST.get("distractors", [2, 4, 8])
GPU = 1 if config["train"].get("device") == "cuda" else 0
ABLATION = GRID.get("ablation") or {"backbones": [], "methods": []}
TEXTS = text_encoders(config)  # grid.text_encoders


def sync_kept_runs():
    """The Snakefile's onsuccess/onerror: log the runs the jobs kept (--defer-tracking) into MLflow, when there are
    some (a directory listing otherwise). A failed sync (tracking server down) says so and keeps them for the next."""
    from fga.tracking_sync import kept_records

    if kept_records(LOGS):
        shell(f"{FGA} tracking sync {COMMON} || true")


def main_runs(pattern):
    """`pattern` for each dataset x backbone x text encoder x method x seed of the grid (the runs the robustness
    stage scores)."""
    return expand(pattern, dataset=GRID["datasets"], backbone=GRID["backbones"], text=TEXTS, method=GRID["methods"],
                  seed=GRID["seeds"])


def grid_runs(pattern):
    """`pattern` for every run of the grid: the main runs, then the ablation variants' (every seed and encoder)."""
    main = main_runs(pattern)
    variants = expand(pattern, dataset=GRID["datasets"], backbone=ABLATION["backbones"], text=TEXTS,
                      method=ABLATION["methods"], seed=GRID["seeds"])
    return main + [p for p in variants if p not in main]


def distractor_features_of(w):
    """The distractor levels' test features a robustness run scores (synthetic test split only)."""
    if w.dataset != "synthetic" or EVAL_SPLIT != "test":
        return []
    return expand("features/synthetic_distract{n}/{backbone}/test.h5", n=DISTRACTORS, backbone=w.backbone)


def evaluate_params(w):
    """The dataset's evaluate settings (evaluate.per_dataset merged in): a change for coco reruns only coco jobs."""
    return evaluation_section(config, w.dataset)


def qbnorm_bank_of(w):
    """The train features QB-Norm takes its query bank from, when the dataset's evaluation uses QB-Norm."""
    enabled = evaluate_params(w).get("qbnorm", {}).get("enabled", True)
    return f"features/{w.dataset}/{w.backbone}/train.h5" if enabled else []


def eval_mem_mb(w):
    """Evaluation memory: the dataset's similarity block budget plus the encodings and the result matrix."""
    return int(evaluate_params(w).get("memory_budget_mb", 4096)) + 4000
