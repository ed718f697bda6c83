"""Learning curves: validation rSum against epoch for every method x backbone x text encoder (mean ± std band over
seeds).

The curves come from the train runs' per-epoch history: MLflow's `val_rsum` metric history (logged with step =
epoch by `fga train`), or with `report.source: files` the history each run's checkpoint.safetensors carries
(<runs>/<dataset>/<backbone>/<text>/<method>/seed<k>/: fga.grid.run_path under fga.paths' runs root). Main grid
only (no ablation variants)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from fga.grid import grid_cells, run_path
from fga.paths import output_roots
from fga.report.notes import say
from fga.report.runs import RUN_KEYS, in_grid, key_tags, reads_files, series_label

CURVE_COLUMNS = RUN_KEYS + ["seed", "epoch", "val_rsum"]
FIGURE = "learning_curves"


def _mlflow_curves(cfg: dict[str, Any]) -> pd.DataFrame:
    import mlflow

    from fga.tracking import runs_frame

    runs = runs_frame(cfg, cfg["grid"]["datasets"], "train")
    if runs.empty:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    keys = pd.DataFrame([key_tags(r) for _, r in runs.iterrows()], index=runs.index)
    runs = in_grid(cfg, keys.assign(seed=keys["seed"].astype(int), run_id=runs["run_id"]), ablation=False)
    client = mlflow.MlflowClient(tracking_uri=cfg["tracking"]["uri"])
    rows = [{**{k: r[k] for k in RUN_KEYS}, "seed": int(r["seed"]), "epoch": int(m.step), "val_rsum": float(m.value)}
            for _, r in runs.iterrows() for m in client.get_metric_history(r["run_id"], "val_rsum")]
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def _file_curves(cfg: dict[str, Any]) -> pd.DataFrame:
    from fga.checkpoint import load_checkpoint

    rows = []
    for cell in grid_cells(cfg, ablation=False):
        path = Path(output_roots(cfg).runs) / run_path(*cell) / "checkpoint.safetensors"
        if path.exists():
            rows += [{**dict(zip(RUN_KEYS + ["seed"], cell)), "epoch": int(row["epoch"]),
                      "val_rsum": float(row["val_rsum"])}
                     for row in load_checkpoint(path)["meta"].get("history", [])]
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def learning_curves(cfg: dict[str, Any]) -> pd.DataFrame:
    """One row per (run, epoch) of the main grid's train runs: CURVE_COLUMNS, sorted."""
    curves = _file_curves(cfg) if reads_files(cfg) else _mlflow_curves(cfg)
    return curves.sort_values(RUN_KEYS + ["seed", "epoch"]).reset_index(drop=True)


def learning_curve_figure(cfg: dict[str, Any], figures: Path, quiet: bool) -> list[str]:
    """learning_curves.png/.pdf: one panel per dataset x backbone, one line per method (per method + text encoder
    when the grid has several; mean over seeds, ± std band); [] with a note when no train run has a per-epoch
    history."""
    from fga.report.figures import _plt, _save

    curves = learning_curves(cfg)
    if curves.empty:
        source = "checkpoints under " + output_roots(cfg).runs if reads_files(cfg) else "MLflow train runs"
        say(f"report: no per-epoch validation rSum in the {source}; learning-curve figure skipped", quiet)
        return []
    plt, sns = _plt()
    curves = curves.assign(method=series_label(curves))  # "grm + minilm" when text encoders differ
    panels = curves[["dataset", "backbone"]].drop_duplicates().itertuples(index=False)
    panels = list(panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False, sharey=True)
    for k, (ax, (dataset, backbone)) in enumerate(zip(axes[0], panels)):
        data = curves[(curves["dataset"] == dataset) & (curves["backbone"] == backbone)]
        sns.lineplot(data=data, x="epoch", y="val_rsum", hue="method", style="method", markers=True, dashes=False,
                     errorbar="sd", ax=ax, legend=k == len(panels) - 1)
        ax.set_title(f"{dataset} / {backbone}")
        ax.set_xlabel("epoch (0 = first)")
        ax.set_ylabel("validation rSum")
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle("Learning curves (mean ± std over seeds)")
    return _save(fig, figures, FIGURE)
