"""The robustness tables: rSum per clutter bin and against added distractors (fga.evaluate.robustness_run)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pandas as pd

from fga.report.notes import say
from fga.report.runs import COLUMNS, PROVENANCE, RUN_KEYS, bin_order, present
from fga.report.tables import DASH, pm, summarise, write_table


def _wide(summary: pd.DataFrame, level: str, fmt: Callable[[Any], str]) -> pd.DataFrame:
    """Rows (dataset, backbone, text encoder, method); one rSum column per level (mean ± std over seeds)."""
    levels = list(dict.fromkeys(summary[level]))
    rows = []
    for keys, cell in summary.groupby(RUN_KEYS, sort=True):
        row = dict(zip(RUN_KEYS, keys))
        row["seeds"] = int(cell["seeds"].max())
        by = {r[level]: r for _, r in cell.iterrows()}
        for lv in levels:
            r = by.get(lv)
            row[fmt(lv)] = DASH if r is None else pm(r["rsum_mean"], r["rsum_std"])
        rows.append(row)
    return pd.DataFrame(rows).rename(columns={k: k.capitalize() for k in RUN_KEYS + ["seeds"]})


def _clutter_summary(clutter: pd.DataFrame) -> pd.DataFrame:
    """Seed means per run key and bin, bins in bin_order, with the bin's mean number of test images."""
    summary = summarise(clutter, RUN_KEYS + ["bin"], COLUMNS)
    summary["order"] = summary["bin"].map(bin_order)
    summary = summary.sort_values(RUN_KEYS + ["order"]).drop(columns="order").reset_index(drop=True)
    if "n_images" in clutter:
        summary = summary.merge(clutter.groupby(RUN_KEYS + ["bin"])["n_images"].mean().rename("n_images").reset_index(),
                                on=RUN_KEYS + ["bin"], how="left")
    return summary


def clutter_table(clutter: pd.DataFrame, out: Path, quiet: bool, ties: str = "") -> bool:
    """robustness_clutter.*; False (and a note) without clutter metrics."""
    if clutter.empty:
        say("report: no robustness runs with <protocol>/clutter/<bin>/... metrics; clutter table and figure skipped", quiet)
        return False
    summary = _clutter_summary(clutter)
    sizes = (summary.groupby("bin", sort=False)["n_images"].first() if "n_images" in summary else {})

    def fmt(b: str) -> str:
        n = sizes.get(b) if len(sizes) else None
        return f"rSum {b}" + (f" (n={int(n)})" if n is not None and not pd.isna(n) else "")

    note = ("rSum per clutter bin (objects per test image); each bin's queries are ranked against the FULL test "
            "gallery, so bins differ only in which queries they hold. `cluttered` = the most cluttered images "
            "(top quantile), `all` = every test image. Mean ± sample std over seeds; n = test images in the bin. "
            "Per-recall means and stds in robustness_clutter.csv; runs in robustness_clutter_provenance.csv." + (f" {ties}" if ties else ""))
    prov = clutter[RUN_KEYS + ["bin"] + PROVENANCE + present(clutter, COLUMNS + ["n_images"])]
    write_table(out, "robustness_clutter", "Robustness: recall vs clutter", note, _wide(summary, "bin", fmt), summary,
                prov)
    return True


def distractor_table(distract: pd.DataFrame, out: Path, quiet: bool, ties: str = "") -> bool:
    """robustness_distractors.*; False (and a note) without distractor metrics."""
    if distract.empty:
        say("report: no robustness runs with <protocol>/distractors/<n>/... metrics; distractor table and figure "
            "skipped", quiet)
        return False
    summary = summarise(distract, RUN_KEYS + ["n_extra"], COLUMNS).sort_values(RUN_KEYS + ["n_extra"])
    shown = _wide(summary.reset_index(drop=True), "n_extra", lambda n: f"rSum +{n}")
    note = ("rSum when every test image gets n extra objects that no caption mentions (synthetic scenes "
            "re-rendered), mean ± sample std over seeds. Runs in robustness_distractors_provenance.csv." + (f" {ties}" if ties else ""))
    prov = distract[RUN_KEYS + ["n_extra"] + PROVENANCE + present(distract, COLUMNS)]
    write_table(out, "robustness_distractors", "Robustness: recall vs added distractors", note, shown,
                summary.reset_index(drop=True), prov)
    return True
