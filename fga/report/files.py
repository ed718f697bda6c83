"""The report's runs read from the DVC-tracked result files instead of MLflow (`report.source: files`,
`fga report --from-files`): <results>/<dataset>/<backbone>/<text>/<method>/seed<k>/ (fga.grid.run_path; results/
for the default experiment, fga.paths) holds metrics.json, ranks.npz, attention.json and robustness.json, so a
`dvc pull` alone rebuilds the report, with the same numbers.

Each file becomes the row its stage would have logged: the same tags and the same flattening of its numbers
(fga.evaluate.run.mlflow_metrics, fga.evaluate.robustness_run.mlflow_metrics). A row's `run_id` is its
results directory (where its ranks.npz and attention.json are read); the provenance CSVs name every run by its key
and its result file (:func:`result_file`) from either source."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from fga.errors import UserError
from fga.io import read_json
from fga.grid import Cell, grid_cells, run_path
from fga.paths import output_roots

RESULT_FILES = {"evaluate": "metrics.json", "robustness": "robustness.json"}


def result_dir(cfg: dict[str, Any], dataset: str, backbone: str, text: str, method: str, seed: int) -> Path:
    """Where the evaluate and robustness stages of the params' experiment write a run's results."""
    return Path(output_roots(cfg).results) / run_path(dataset, backbone, text, method, seed)


def result_file(cfg: dict[str, Any], stage: str, dataset: str, backbone: str, text: str, method: str,
                seed: int) -> str:
    """The result file of a run (e.g. results/<dataset>/<backbone>/<text>/<method>/seed<k>/metrics.json): what the
    provenance CSVs name a run by, the same whichever source the report reads."""
    return (result_dir(cfg, dataset, backbone, text, method, int(seed)) / RESULT_FILES[stage]).as_posix()


def _flattener(stage: str) -> Callable[[dict[str, Any]], dict[str, float]]:
    if stage == "evaluate":
        from fga.evaluate.run import mlflow_metrics
    else:
        from fga.evaluate.robustness_run import mlflow_metrics
    return mlflow_metrics


def _row(run_dir: Path, stage: str, cell: Cell, result: dict[str, Any]) -> dict[str, Any]:
    """The runs-frame row of one result file: run_id, the stage's metrics and tags (as strings, like MLflow's), and
    the evaluate stage's tie rule param."""
    dataset, backbone, text, method, seed = cell
    metrics = _flattener(stage)(result)
    tags = {"dataset": dataset, "backbone": backbone, "text": text, "method": method, "seed": str(seed), "stage": stage,
            "protocol": result["protocol"], "split": result["split"], "weights_source": result["weights_source"]}
    params = {}
    if stage == "evaluate":
        tags["protocols"] = ",".join(result["protocols"])
        if "ties" in result:  # as the stage logs `evaluate.tie_rule` (fga.report.runs.TIE_RULE_PARAM)
            params["evaluate.tie_rule"] = result["ties"]
    return {"run_id": str(run_dir), **{f"metrics.{k}": v for k, v in sorted(metrics.items())},
            **{f"tags.{k}": v for k, v in tags.items()}, **{f"params.{k}": v for k, v in params.items()}}


def file_runs_frame(cfg: dict[str, Any], stage: str) -> pd.DataFrame:
    """The grid's `stage` runs (evaluate: ablation variants included; robustness: the main grid, as the
    pipeline runs it) from their result files, shaped like fga.tracking.runs_frame's; cells whose file is
    missing are left out, and named in one line on stderr with the fix (a UserError when no evaluate file is there)."""
    name = RESULT_FILES[stage]
    cells = grid_cells(cfg, ablation=stage == "evaluate")
    rows, missing = [], []
    for cell in cells:
        path = result_dir(cfg, *cell) / name
        if not path.exists():
            missing.append(str(path))
            continue
        try:
            rows.append(_row(path.parent, stage, cell, read_json(path)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"{path}: not a {stage} result ({exc!r}); `dvc pull {path}` or rerun its "
                            f"{stage} stage") from exc
    if not rows and stage == "evaluate":
        raise UserError(f"no {name} of the configured grid under {output_roots(cfg).results}/ (e.g. {missing[0]}); "
                        "`dvc pull` the results or run the pipeline (`snakemake --cores all`) first")
    if missing:  # even when quiet, as the MLflow source warns of cells without a run
        print(f"report: WARNING: {len(missing)} of {len(cells)} grid cell(s) lack their {name} "
              f"(e.g. {missing[0]}); the tables use the cells there are. Fetch them with `dvc pull` "
              f"or rerun their {stage} stage.", file=sys.stderr)
    return pd.DataFrame(rows)


def ranks_file(run_dir: str) -> Any:
    """The run's ranks.npz (fga.evaluate.run.RanksFile, its primary protocol), None when it has none."""
    from fga.evaluate.run import load_ranks

    path = Path(run_dir) / "ranks.npz"
    return load_ranks(path) if path.exists() else None


def attention_files(run_dir: str) -> list[str]:
    """The run's attention.json (its path relative to the run's results directory), when it has one."""
    return ["attention.json"] if (Path(run_dir) / "attention.json").exists() else []
