"""MLflow runs -> the paper's tables: mean ± std over seeds per dataset x backbone x method."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from fga.errors import UserError
from fga.io import atomic_path

RECALLS = [f"{d}_R{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)]
COLUMNS = RECALLS + ["rsum"]
HEADERS = {"i2t_R1": "i2t R@1", "i2t_R5": "i2t R@5", "i2t_R10": "i2t R@10",
           "t2i_R1": "t2i R@1", "t2i_R5": "t2i R@5", "t2i_R10": "t2i R@10", "rsum": "rSum"}
KEYS = ["dataset", "protocol", "backbone", "method"]


def evaluation_runs(cfg: dict[str, Any]) -> pd.DataFrame:
    """One row per evaluate run: key tags, weights source, run id and the protocol's metrics."""
    from fga.tracking import runs_frame

    runs = runs_frame(cfg, cfg["grid"]["datasets"], "evaluate")
    if runs.empty:
        raise UserError("no evaluate runs in the MLflow store; run the pipeline (`snakemake --cores all`) first")
    rows = []
    for _, r in runs.iterrows():
        protocol = r["tags.protocol"]
        row = {k: r[f"tags.{k}"] for k in ("dataset", "backbone", "method", "seed")}
        row.update(protocol=protocol, run_id=r["run_id"], weights=r.get("tags.weights_source", ""))
        row.update({c: r.get(f"metrics.{protocol}/{c}") for c in COLUMNS})
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["seed"] = frame["seed"].astype(int)
    return frame.sort_values(KEYS + ["seed"]).reset_index(drop=True)


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std over seeds, with the number of seeds per cell."""
    grouped = runs.groupby(KEYS, sort=True)
    mean = grouped[COLUMNS].mean()
    std = grouped[COLUMNS].std(ddof=1).fillna(0.0)
    out = mean.add_suffix("_mean").join(std.add_suffix("_std"))
    out["seeds"] = grouped.size()
    out["weights"] = grouped["weights"].first()
    return out.reset_index()


def _display(summary: pd.DataFrame) -> pd.DataFrame:
    table = summary[KEYS + ["weights", "seeds"]].copy()
    for c in COLUMNS:
        table[HEADERS[c]] = [f"{m:.1f} ± {s:.1f}" for m, s in zip(summary[f"{c}_mean"], summary[f"{c}_std"])]
    return table.rename(columns={k: k.capitalize() for k in KEYS + ["weights", "seeds"]})


def _markdown(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(table.columns) + " |\n|" + "|".join("---" for _ in table.columns) + "|\n"
    return header + "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in table.itertuples(index=False))


def write_report(cfg: dict[str, Any], quiet: bool = False) -> None:
    runs = evaluation_runs(cfg)
    summary = summarise(runs)
    out = Path(cfg["report"]["tables_dir"])
    table = _display(summary)
    note = ("Recall@K in %, mean ± sample std over seeds (Seeds = number of runs per cell); rSum = sum of the six "
            "recalls. Every number comes from an MLflow evaluate run listed in main_provenance.csv.\n\n")
    with atomic_path(out / "main.md") as tmp:
        tmp.write_text("# Image-text retrieval (test split)\n\n" + note + _markdown(table))
    with atomic_path(out / "main.csv") as tmp:
        summary.to_csv(tmp, index=False, float_format="%.4f")
    with atomic_path(out / "main.tex") as tmp:
        styler = table.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
        tmp.write_text(styler.to_latex(hrules=True).replace("±", r"$\pm$"))
    with atomic_path(out / "main_provenance.csv") as tmp:
        runs[KEYS + ["seed", "run_id"] + COLUMNS].to_csv(tmp, index=False, float_format="%.4f")
    if not quiet:
        print(_markdown(table))
