"""Learning curves: validation rSum against epoch for every method x backbone (mean ± std band over seeds).

The curves come from the train runs' per-epoch history: MLflow's `val_rsum` metric history (logged with step =
epoch by `fga train`), or with `report.source: files` the history each run's checkpoint.safetensors carries
(<runs>/<dataset>/<backbone>/<method>/seed<k>/, fga.paths). Main grid only (no ablation variants)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from fga.grid import grid_cells
from fga.paths import output_roots
from fga.report.notes import say
from fga.report.runs import in_grid, reads_files

CURVE_COLUMNS = ["dataset", "backbone", "method", "seed", "epoch", "val_rsum"]
FIGURE = "learning_curves"


def _mlflow_curves(cfg: dict[str, Any]) -> pd.DataFrame:
    import mlflow

    from fga.tracking import runs_frame

    runs = runs_frame(cfg, cfg["grid"]["datasets"], "train")
    if runs.empty:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    runs = runs.rename(columns={f"tags.{k}": k for k in ("dataset", "backbone", "method", "seed")})
    runs = in_grid(cfg, runs.assign(seed=runs["seed"].astype(int)), ablation=False)
    client = mlflow.MlflowClient(tracking_uri=cfg["tracking"]["uri"])
    rows = [{"dataset": r.dataset, "backbone": r.backbone, "method": r.method, "seed": int(r.seed),
             "epoch": int(m.step), "val_rsum": float(m.value)}
            for r in runs.itertuples() for m in client.get_metric_history(r.run_id, "val_rsum")]
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def _file_curves(cfg: dict[str, Any]) -> pd.DataFrame:
    from fga.checkpoint import load_checkpoint

    rows = []
    for dataset, backbone, method, seed in grid_cells(cfg, ablation=False):
        path = Path(output_roots(cfg).runs) / dataset / backbone / method / f"seed{seed}" / "checkpoint.safetensors"
        if path.exists():
            rows += [{"dataset": dataset, "backbone": backbone, "method": method, "seed": seed,
                      "epoch": int(row["epoch"]), "val_rsum": float(row["val_rsum"])}
                     for row in load_checkpoint(path)["meta"].get("history", [])]
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def learning_curves(cfg: dict[str, Any]) -> pd.DataFrame:
    """One row per (run, epoch) of the main grid's train runs: CURVE_COLUMNS, sorted."""
    curves = _file_curves(cfg) if reads_files(cfg) else _mlflow_curves(cfg)
    return curves.sort_values(CURVE_COLUMNS[:5]).reset_index(drop=True)


def learning_curve_figure(cfg: dict[str, Any], figures: Path, quiet: bool) -> list[str]:
    """learning_curves.png/.pdf: one panel per dataset x backbone, one line per method (mean over seeds, ± std
    band); [] with a note when no train run has a per-epoch history."""
    from fga.report.figures import _plt, _save

    curves = learning_curves(cfg)
    if curves.empty:
        source = "checkpoints under " + output_roots(cfg).runs if reads_files(cfg) else "MLflow train runs"
        say(f"report: no per-epoch validation rSum in the {source}; learning-curve figure skipped", quiet)
        return []
    plt, sns = _plt()
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
