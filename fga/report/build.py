"""`fga report`: read the runs, write every table and figure, and log them as a `report` run per dataset."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from fga.errors import UserError
from fga.evaluate.stats import bootstrap_options
from fga.io import atomic_dir
from fga.paths import output_roots
from fga.report.ablation import ablation_table
from fga.report.figures import attention_figures, clutter_figure, distractor_figure, seed_spread_figure
from fga.report.files import file_runs_frame
from fga.report.grm import grm_figures, grm_tables
from fga.report.curves import learning_curve_figure
from fga.report.notes import say, tie_rules, ties_note
from fga.report.paper import paper_table
from fga.report.positives import scene_graph_tables
from fga.report.retrieval import main_table, qbnorm_table, sortable_main_table
from fga.report.robustness import clutter_table, distractor_table
from fga.report.runs import (RESULT_FILE, RUN_KEYS, evaluation_runs, in_grid, missing_runs, reads_files,
                             robustness_runs)
from fga.report.significance import significance_table
from fga.report.tables import display, markdown, summarise, weights_legend


class Runs(NamedTuple):
    """The runs a report reads, restricted to the configured grid."""

    every: pd.DataFrame  # evaluate runs, ablation variants included
    main: pd.DataFrame  # evaluate runs of the main grid
    missing: list[str]  # grid cells without an evaluate run
    clutter: pd.DataFrame  # robustness runs, one row per clutter bin
    distract: pd.DataFrame  # robustness runs, one row per distractor level


def read_runs(cfg: dict[str, Any]) -> Runs:
    """The grid's evaluate and robustness runs (after repairing any race the parallel jobs left in the store), or
    with `report.source: files` the rows their result files make (fga.report.files)."""
    from fga.tracking import reconcile, runs_frame

    datasets = cfg["grid"]["datasets"]
    if reads_files(cfg):  # the DVC-tracked result files; they warn of the cells they lack themselves
        evaluate, robustness = file_runs_frame(cfg, "evaluate"), file_runs_frame(cfg, "robustness")
    else:
        reconcile(cfg, datasets)  # single writer after all runs: repair any race the parallel jobs left
        evaluate, robustness = runs_frame(cfg, datasets, "evaluate"), runs_frame(cfg, datasets, "robustness")
    every_run = in_grid(cfg, evaluation_runs(cfg, evaluate))  # incl. the ablation variants
    runs = in_grid(cfg, every_run, ablation=False)
    if every_run.empty:
        raise UserError("no evaluate runs of the configured grid in the MLflow store "
                        f"({cfg['tracking']['uri']}); run the pipeline first or check `grid` and `tracking.uri`")
    missing = missing_runs(cfg, every_run)
    if missing and not reads_files(cfg):
        print(f"report: WARNING: {len(missing)} grid cell(s) have no evaluate run in {cfg['tracking']['uri']} "
              f"(e.g. {missing[0]}); the tables average the runs there are. The report reads MLflow: point "
              "tracking.uri at the store the runs were logged to, or rerun their evaluate stage to log them.",
              file=sys.stderr)
    clutter, distract = (in_grid(cfg, f, ablation=False) for f in robustness_runs(cfg, robustness))
    return Runs(every_run, runs, missing, clutter, distract)


def write_tables(cfg: dict[str, Any], runs: Runs, out: Path, quiet: bool) -> tuple[pd.DataFrame, bool, bool]:
    """Every table into `out`; (the main table's summary, whether the clutter and the distractor tables exist)."""
    ties = ties_note(tie_rules(runs.main))  # robustness ranks with the evaluate stage's rule
    summary = main_table(runs.main, out, runs.missing, bootstrap_options(cfg)["confidence"], ties)
    ablation_table(cfg, runs.every, summarise(runs.every), out, quiet)
    qbnorm_table(runs.main, out, quiet, ties)
    significance_table(cfg, runs.main, out, quiet, ties=ties)
    has_clutter = clutter_table(runs.clutter, out, quiet, ties)
    has_distract = distractor_table(runs.distract, out, quiet, ties)
    paper_table(out)
    scene_graph_tables(cfg, runs.main, out, quiet)  # positives.*, binding.* (datasets with scene graphs)
    grm_tables(cfg, out, quiet)  # GRM's diagnostics and its ablation/sensitivity sweeps (`sweeps`)
    return summary, has_clutter, has_distract


def write_figures(cfg: dict[str, Any], runs: Runs, figs: Path, clutter: bool, distract: bool, quiet: bool) -> None:
    seed_spread_figure(runs.main, figs)
    if clutter:
        clutter_figure(runs.clutter, figs)
    if distract:
        distractor_figure(runs.distract, figs)
    attention_figures(cfg, runs.main, figs, quiet)
    learning_curve_figure(cfg, figs, quiet)
    grm_figures(cfg, figs, quiet)


RUN_ID_MAP = "provenance_run_ids.csv"
MAIN_TABLE_VIEW = "main_table.json"


def run_id_map(runs: Runs, dataset: str) -> pd.DataFrame:
    """The MLflow run id of every run of `dataset` that the provenance CSVs name (by key and result file); logged
    with the report run only, since run ids are random and reports/tables must be reproducible."""
    cols = RUN_KEYS + ["seed", RESULT_FILE, "run_id"]
    parts = [runs.every[cols].assign(stage="evaluate")]
    parts += [frame[cols].assign(stage="robustness") for frame in (runs.clutter, runs.distract) if not frame.empty]
    every = pd.concat(parts, ignore_index=True).drop_duplicates()
    every = every[every["dataset"] == dataset][["stage"] + cols]
    return every.sort_values(["stage"] + RUN_KEYS + ["seed"]).reset_index(drop=True)


def log_report_runs(cfg: dict[str, Any], runs: Runs, summary: pd.DataFrame, tables_dir: Path,
                    figures_dir: Path) -> None:
    """One `report` run per dataset with evaluate runs, holding the tables and figures as artifacts, the main table
    as an MLflow table (sortable in the UI) and the run-id map of the provenance CSVs."""
    from fga.tracking import log_run

    for dataset in cfg["grid"]["datasets"]:
        if dataset not in set(runs.every["dataset"]):
            continue
        clutter = runs.clutter
        with tempfile.TemporaryDirectory() as tmp:
            id_map = Path(tmp) / RUN_ID_MAP
            run_id_map(runs, dataset).to_csv(id_map, index=False)
            log_run(cfg, {"dataset": dataset, "backbone": "all", "text": "all", "method": "all", "seed": "all",
                         "stage": "report"},
                    params={"report": cfg["report"], "grid": cfg["grid"]},
                    metrics={"n_evaluate_runs": int((runs.every["dataset"] == dataset).sum()),
                             "n_robustness_runs": int(clutter[clutter["dataset"] == dataset]["run_id"].nunique())
                             if not clutter.empty else 0},
                    artifacts=[(tables_dir, "tables"), (figures_dir, "figures"), id_map],
                    tables={MAIN_TABLE_VIEW: sortable_main_table(summary)})


def write_report(cfg: dict[str, Any], quiet: bool = False) -> None:
    """Read the params' experiment's runs, write every table and figure (replacing both directories as a whole,
    so nothing stale survives), and log them as artifacts of a `report` run per dataset."""
    runs = read_runs(cfg)
    roots = output_roots(cfg)  # the experiment's own report dirs (reports/<experiment>/... unless configured)
    tables_dir, figures_dir = Path(roots.tables), Path(roots.figures)
    with atomic_dir(tables_dir) as out:
        summary, has_clutter, has_distract = write_tables(cfg, runs, out, quiet)
    with atomic_dir(figures_dir) as figs:
        write_figures(cfg, runs, figs, has_clutter, has_distract, quiet)
    if reads_files(cfg):  # no store to log to: the tables and figures are the report stage's DVC outputs
        say("report: read the result files (report.source: files); no MLflow report run logged", quiet)
    else:
        log_report_runs(cfg, runs, summary, tables_dir, figures_dir)
    if not quiet:
        print(markdown(display(summary, confidence=bootstrap_options(cfg)["confidence"])))
        print(weights_legend(summary))
        print(f"report: tables in {tables_dir}/, figures in {figures_dir}/")
