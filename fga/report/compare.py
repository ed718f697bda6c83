"""`fga report --compare a,b,...`: the main table of several experiments side by side (an Experiment column),
each row with its rSum difference to the first experiment's same cell (dataset, protocol, backbone, text encoder,
method)."""
from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd

from fga.errors import UserError
from fga.evaluate.stats import bootstrap_options
from fga.paths import compare_dir
from fga.report.runs import COLUMNS, KEYS, PROVENANCE, evaluation_runs, in_grid
from fga.report.tables import DASH, display, markdown, summarise, weights_legend, write_table

EXPERIMENT = "experiment"


def experiment_names(text: str) -> list[str]:
    """The experiments of `--compare a,b,...`: two or more different valid names, in the order given."""
    from fga.config import load_schema

    names = [n.strip() for n in text.split(",") if n.strip()]
    pattern = load_schema()["properties"][EXPERIMENT]["pattern"]
    bad = [n for n in names if not re.fullmatch(pattern, n)]
    if bad:
        raise UserError(f"--compare: {bad[0]!r} is not an experiment name (letters, digits, _ . -); "
                        "e.g. --compare default,k8")
    if len(names) < 2 or len(set(names)) != len(names):
        raise UserError(f"--compare {text!r}: list two or more different experiments, e.g. --compare default,k8")
    return names


def experiment_runs(cfg: dict[str, Any], experiment: str) -> pd.DataFrame:
    """The evaluate runs of one experiment in the cells of the params' main grid (read only: no repair)."""
    from fga.tracking import runs_frame

    of_experiment = {**cfg, EXPERIMENT: experiment}
    found = runs_frame(of_experiment, cfg["grid"]["datasets"], "evaluate")
    runs = found if found.empty else in_grid(cfg, evaluation_runs(of_experiment, found), ablation=False)
    if runs.empty:
        raise UserError(f"experiment {experiment!r} has no evaluate runs of the configured grid in the MLflow store "
                        f"({cfg['tracking']['uri']}); run it first or check the name and `grid`")
    return runs.assign(**{EXPERIMENT: experiment})


def compare_summary(runs: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """The main table's summary per experiment (in the order of `names`) with `delta_rsum`: the row's mean rSum
    minus the first experiment's for the same cell (NaN for the first experiment and cells it lacks)."""
    summary = summarise(runs, keys=[EXPERIMENT] + KEYS)
    order = summary[EXPERIMENT].map(names.index)
    summary = summary.assign(_order=order).sort_values(["_order"] + KEYS, kind="stable").drop(columns="_order")
    first = summary[summary[EXPERIMENT] == names[0]].set_index(KEYS)["rsum_mean"].to_dict()
    summary["delta_rsum"] = [math.nan if exp == names[0] else rsum - first.get(cell, math.nan)
                             for exp, rsum, cell in zip(summary[EXPERIMENT], summary["rsum_mean"],
                                                        summary[KEYS].itertuples(index=False, name=None))]
    return summary.reset_index(drop=True)


def write_comparison(cfg: dict[str, Any], names: list[str], quiet: bool = False) -> list[str]:
    """compare_<a>_vs_<b>.{md,csv,tex} (+ provenance) in reports/compare/; returns the files' names."""
    runs = pd.concat([experiment_runs(cfg, n) for n in names], ignore_index=True)
    summary = compare_summary(runs, names)
    confidence = bootstrap_options(cfg)["confidence"]
    shown = display(summary, keys=[EXPERIMENT] + KEYS, confidence=confidence)
    shown[f"ΔrSum vs {names[0]}"] = [DASH if math.isnan(d) else f"{d:+.1f}" for d in summary["delta_rsum"]]
    note = (f"The main retrieval table of each experiment (Recall@K in %, mean ± sample std over seeds), read from "
            f"its MLflow evaluate runs (the provenance CSV names each by its key and result file); ΔrSum = the row's "
            f"mean rSum − experiment {names[0]!r}'s for the same dataset, protocol, backbone, text encoder and "
            f"method ({DASH} where it has none).")
    out = compare_dir(cfg)
    name = "compare_" + "_vs_".join(names)
    provenance = runs[[EXPERIMENT] + KEYS + PROVENANCE + COLUMNS]
    files = write_table(out, name, f"Experiments compared: {', '.join(names)}", note, shown, summary, provenance,
                        weights_legend(summary))
    if not quiet:
        print(markdown(shown))
        print(f"report: comparison in {out}/{name}.md (.csv, .tex)")
    return files
