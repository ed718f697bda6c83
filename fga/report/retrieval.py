"""The main retrieval table (recall per protocol, mean ± std over seeds, bootstrap CI) and its QB-Norm twin."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from fga.report.notes import say
from fga.report.runs import COLUMNS, KEYS, PROVENANCE, present
from fga.report.tables import HEADERS, display, summarise, weights_legend, write_table


def main_table(runs: pd.DataFrame, out: Path, missing: list[str] | None = None,
               confidence: float = 0.95, ties: str = "") -> pd.DataFrame:
    """main.*: one row per dataset/protocol/backbone/text encoder/method; returns the summary it shows."""
    summary = summarise(runs)
    ci = f" The rSum {confidence:.0%} CI is the seed-mean of each run's percentile bootstrap interval (test images resampled " \
         "with their captions); CSV columns `<name>_ci_lo_mean`/`_hi_mean` hold every recall's." \
        if "rsum_ci_lo_mean" in summary else ""
    ci += f" {ties}" if ties else ""
    note = ("Recall@K in %, mean ± sample std over seeds (Seeds = number of runs per cell); rSum = sum of the six "
            "recalls; Text = the caption encoder (`grid.text_encoders`). Every number comes from an evaluate run: "
            "main_provenance.csv names each by its key and its result file (`.../seed<k>/metrics.json`, the numbers "
            "the run also logged to MLflow)." + ci)
    if missing:
        note += (f"\n\n**Incomplete grid**: no evaluate run for {len(missing)} cell(s) of `grid` "
                 f"({', '.join(missing[:8])}{', ...' if len(missing) > 8 else ''}); their rows average fewer seeds.")
    prov_cols = (KEYS + PROVENANCE + present(runs, ["weights"]) + COLUMNS
                 + present(runs, [f"rsum_ci_{b}" for b in ("lo", "hi")]))
    write_table(out, "main", "Image-text retrieval (test split)", note, display(summary, confidence=confidence),
                summary, runs[prov_cols], weights_legend(summary))
    return summary


def sortable_main_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The main table for MLflow's table view (`log_table`: sortable, filterable in the UI): its keys and seeds, and
    each recall's seed mean as a number (rounded as in main.md), plus the rSum std."""
    table = summary[KEYS + ["seeds"]].rename(columns={k: k.capitalize() for k in KEYS + ["seeds"]})
    for c in COLUMNS:
        table[HEADERS[c]] = summary[f"{c}_mean"].round(1)
    table["rSum std"] = summary["rsum_std"].round(1)
    return table.reset_index(drop=True)


def qbnorm_table(runs: pd.DataFrame, out: Path, quiet: bool, ties: str = "") -> bool:
    """qbnorm.*: the recalls with QB-Norm and ΔrSum against the same runs' plain recalls; False when none ran it."""
    qb = [f"qb_{c}" for c in COLUMNS]
    if not present(runs, qb):
        say("report: no QB-Norm metrics (qbnorm/<protocol>/...) in the evaluate runs; QB-Norm table skipped", quiet)
        return False
    have = runs[runs["qb_rsum"].notna()].copy()
    plain = summarise(have)
    ci = [c for c in have if "_ci_" in c]  # the plain recalls' intervals; QB-Norm's have none
    renamed = have.drop(columns=COLUMNS + ci).rename(columns={f"qb_{c}": c for c in COLUMNS})
    summary = summarise(renamed)
    summary["delta_rsum"] = summary["rsum_mean"].to_numpy() - plain["rsum_mean"].to_numpy()
    shown = display(summary)
    shown["ΔrSum vs plain"] = [f"{d:+.1f}" for d in summary["delta_rsum"]]
    note = ("Recall with QB-Norm (querybank normalisation, Bogolin et al. 2022; the bank is built from TRAIN "
            "queries), mean ± std over seeds; ΔrSum = QB-Norm − plain rSum of the same runs." + (f" {ties}" if ties else ""))
    prov = have[KEYS + PROVENANCE + qb]
    write_table(out, "qbnorm", "Image-text retrieval with QB-Norm (test split)", note, shown, summary, prov,
                weights_legend(summary))
    return True
