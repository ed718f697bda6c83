"""The tables only a dataset with known scene graphs gives (the embedded synthetic one; fga.evaluate.scene_graphs):

* positives.*: recall where any true item counts and mAP@R over the exhaustive positives (every test image a
  caption is true of), beside the standard one-ground-truth rSum of the same runs;
* binding.*: how often each method scores an image's true caption above its near miss (same words, swapped
  attribute binding or relation sides), per probe kind; 50 % is chance.

Both read the evaluate runs of the main grid (MLflow, or the result files with `report.source: files`) and are
skipped with a note when no run carries the metrics (other datasets, or runs evaluated before they existed)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from fga.data.synthetic import PROBE_KINDS
from fga.report.notes import say, tie_rules, ties_note
from fga.report.runs import PROVENANCE, RUN_KEYS as KEYS, reads_files
from fga.report.tables import mean_std_table, summarise, write_table

POSITIVE_HEADERS = {**{f"{d}_{k}": f"{d} {k.replace('R', 'R@') if k != 'mAPR' else 'mAP@R'}"
                       for d in ("i2t", "t2i") for k in ("R1", "R5", "R10", "mAPR")},
                    "rsum": "rSum (any true)", "standard_rsum": "rSum (own GT)"}
BINDING_KINDS = list(PROBE_KINDS) + ["all"]
BINDING_HEADERS = {**{f"{k}_accuracy": f"{k} acc." for k in BINDING_KINDS},
                   **{f"{k}_ties": f"{k} ties" for k in BINDING_KINDS}, "all_n": "triples"}


def _evaluate_frame(cfg: dict[str, Any], run_ids: list[str]) -> pd.DataFrame:
    """`run_id` and `metrics.<name>` columns of the evaluate runs: MLflow's runs frame, or each run's metrics.json
    (report.source: files, a run id is its results directory) flattened as the stage logs it."""
    from fga.evaluate.scene_graphs import scene_graph_mlflow
    from fga.io import read_json
    from fga.tracking import runs_frame

    if not reads_files(cfg):
        return runs_frame(cfg, cfg["grid"]["datasets"], "evaluate")
    rows = [{"run_id": r, **{f"metrics.{k}": v for k, v in
                             scene_graph_mlflow(read_json(Path(r) / "metrics.json", "metrics.json")).items()}}
            for r in run_ids]
    return pd.DataFrame(rows)


def scene_graph_runs(cfg: dict[str, Any], main: pd.DataFrame) -> pd.DataFrame:
    """The main grid's runs (`main`: fga.report.runs.evaluation_runs rows) with their `positives/...` and
    `binding/...` metrics as columns, NaN where absent."""
    raw = _evaluate_frame(cfg, list(main["run_id"]))
    metrics = {f"positives/{n}": n for n in POSITIVE_HEADERS if n != "standard_rsum"}
    metrics.update({f"binding/{k}/{v}": f"{k}_{v}" for k in BINDING_KINDS for v in ("accuracy", "ties", "n")})
    picked = pd.DataFrame({"run_id": raw["run_id"]}) if not raw.empty else pd.DataFrame(columns=["run_id"])
    for key, name in metrics.items():
        picked[name] = raw[f"metrics.{key}"].astype(float) if f"metrics.{key}" in raw else math.nan
    frame = main[KEYS + ["run_id", *PROVENANCE, "tie_rule", "rsum"]].rename(columns={"rsum": "standard_rsum"})
    return frame.merge(picked, on="run_id", how="left")


def positives_table(runs: pd.DataFrame, out: Path, quiet: bool) -> bool:
    """positives.*: mean ± std over seeds of recall (any true item) and mAP@R; False when no run has them."""
    have = runs[runs["rsum"].notna()] if "rsum" in runs else runs.iloc[0:0]
    if have.empty:
        say("report: no exhaustive-positives metrics (positives/...) in the evaluate runs; positives table skipped",
            quiet)
        return False
    columns = list(POSITIVE_HEADERS)
    summary = summarise(have, KEYS, columns)
    shown = mean_std_table(summary, KEYS, POSITIVE_HEADERS)
    note = ("Every test caption judged against every test image's scene graph: a caption's positives are all the "
            "test images it is true of (its own included), an image's all the captions true of it. Recall@K counts a "
            "query as found when ANY positive is in the top K; mAP@R (ECCV Caption) averages precision over the top R "
            "ranks, R = the query's number of positives. rSum (own GT) is the standard protocol of the same runs. "
            f"Mean ± sample std over seeds, in %. {ties_note(tie_rules(have))}")
    write_table(out, "positives", "Retrieval against exhaustive positives (test split)", note, shown, summary,
                have[KEYS + PROVENANCE + columns])
    return True


def binding_table(runs: pd.DataFrame, out: Path, quiet: bool) -> bool:
    """binding.*: per probe kind, the share of triples the true caption wins (ties half) and the share tied."""
    have = runs[runs["all_accuracy"].notna()] if "all_accuracy" in runs else runs.iloc[0:0]
    if have.empty:
        say("report: no binding-probe metrics (binding/...) in the evaluate runs; binding table skipped", quiet)
        return False
    columns = [c for c in BINDING_HEADERS if c != "all_n"]
    summary = summarise(have, KEYS, columns + ["all_n"])
    shown = mean_std_table(summary, KEYS, {c: BINDING_HEADERS[c] for c in columns})
    # the number of triples after the seeds: a count per cell, not a spread
    shown.insert(len(KEYS) + 1, BINDING_HEADERS["all_n"], summary["all_n_mean"].round().astype(int))
    note = ("Near-miss probes: for each test image and true caption, a caption with the same words that is false of "
            "the image: `attribute` swaps the colours of two described objects, `relation` swaps a relation's two "
            "sides. acc. = % of (image, true caption, near miss) triples where the true caption scores higher, a tie "
            "counting half (chance = 50); ties = % of exact ties (a model blind to word order ties every swap). "
            "Mean ± sample std over seeds.")
    write_table(out, "binding", "Binding probes: true caption vs its near miss (test split)", note, shown, summary,
                have[KEYS + PROVENANCE + columns + ["all_n"]])
    return True


def scene_graph_tables(cfg: dict[str, Any], main: pd.DataFrame, out: Path, quiet: bool) -> None:
    """positives.* and binding.* of the main grid's evaluate runs (each skipped with a note when absent)."""
    if main.empty:
        return
    runs = scene_graph_runs(cfg, main)
    positives_table(runs, out, quiet)
    binding_table(runs, out, quiet)
