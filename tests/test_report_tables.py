"""fga.report.tables: seed summaries, "mean ± std" cells, Markdown / LaTeX / CSV writing."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fga.report.tables import display, latex, markdown, mean_std_table, summarise, weights_legend, write_table
from report_frames import evaluation_frame, recalls


def test_summarise_means_stds_ci_and_weights():
    runs = evaluation_frame([("grm", 0, 30.0), ("grm", 1, 32.0), ("vse", 0, 20.0)])
    summary = summarise(runs)
    assert list(summary["method"]) == ["grm", "vse"] and list(summary["seeds"]) == [2, 1]
    assert summary["rsum_mean"].tolist() == [recalls(31.0)["rsum"], recalls(20.0)["rsum"]]
    assert summary["rsum_std"].tolist() == pytest.approx([np.std([195.0, 207.0], ddof=1), 0.0])
    assert summary["rsum_ci_lo_mean"].tolist() == pytest.approx((summary["rsum_mean"] - 2).tolist())
    cols = list(summary.columns)
    assert cols.index("rsum_std") < cols.index("i2t_R1_ci_lo_mean") < cols.index("seeds") < cols.index("weights")
    no_ci = summarise(evaluation_frame([("grm", 0, 30.0)], ci=False))
    assert not [c for c in no_ci if "_ci_" in c]


def test_display_cells_and_ci_column():
    summary = summarise(evaluation_frame([("grm", 0, 30.0), ("grm", 1, 32.0)]))
    summary.loc[0, "i2t_R1_mean"] = np.nan
    shown = display(summary, confidence=0.9)
    assert list(shown.columns[:6]) == ["Dataset", "Backbone", "Text", "Method", "Seeds", "i2t R@1"]
    row = shown.iloc[0]
    assert row["Dataset"] == "synthetic (full)" and row["Text"] == "bigru"
    assert row["rSum"] == "201.0 ± 8.5" and row["i2t R@1"] == "—" and row["rSum 90% CI"] == "[199.0, 203.0]"


def test_mean_std_table_keys_seeds_then_one_cell_per_header():
    summary = summarise(evaluation_frame([("grm", 0, 30.0), ("grm", 1, 32.0), ("vse", 0, 20.0)]),
                        ["dataset", "method"], ["rsum", "i2t_R1"])
    summary.loc[1, "i2t_R1_mean"] = np.nan
    shown = mean_std_table(summary, ["dataset", "method"], {"rsum": "rSum", "i2t_R1": "R@1"}, {"i2t_R1": 3})
    assert list(shown.columns) == ["Dataset", "Method", "Seeds", "rSum", "R@1"]
    assert shown["rSum"].tolist() == ["201.0 ± 8.5", "135.0 ± 0.0"]
    assert shown["R@1"].tolist() == ["31.000 ± 1.414", "—"]


def test_markdown_and_latex():
    table = pd.DataFrame({"Model": ["a_b"], "ΔrSum": ["+1.0 ± 0.5"], "x": ["—"]})
    assert markdown(table) == "| Model | ΔrSum | x |\n|---|---|---|\n| a_b | +1.0 ± 0.5 | — |\n"
    tex = latex(table, "Recall in %")
    assert r"\toprule" in tex and r"Recall in \%" in tex and r"a\_b" in tex
    assert r"$\Delta$rSum" in tex and r"$\pm$" in tex and "--" in tex and "—" not in tex


def test_write_table_writes_the_four_files(tmp_path):
    shown = pd.DataFrame({"A": ["1.0 ± 0.0"]})
    data = pd.DataFrame({"a": [1.0 / 3]})
    names = write_table(tmp_path, "t", "Title", "A note.", shown, data, pd.DataFrame({"run_id": ["r"]}))
    assert names == ["t.md", "t.csv", "t.tex", "t_provenance.csv"]
    assert (tmp_path / "t.md").read_text() == "# Title\n\nA note.\n\n| A |\n|---|\n| 1.0 ± 0.0 |\n"
    assert (tmp_path / "t.csv").read_text() == "a\n0.3333\n"
    assert (tmp_path / "t_provenance.csv").read_text() == "run_id\nr\n"


def test_weights_legend_groups_backbones_by_source():
    summary = pd.DataFrame({"backbone": ["roi", "grid", "vit", "roi"], "weights": ["imnet", "imnet", "", "imnet"]})
    assert weights_legend(summary) == "Weights: grid, roi = imnet."
    assert weights_legend(summary.drop(columns="weights")) == ""
    assert weights_legend(summary.assign(weights="")) == ""


def test_write_table_puts_the_legend_under_the_table(tmp_path):
    shown = pd.DataFrame({"A": ["1.0"]})
    write_table(tmp_path, "t", "Title", "A note.", shown, shown, shown, legend="Weights: a_b = x (50%).")
    assert (tmp_path / "t.md").read_text() == "# Title\n\nA note.\n\n| A |\n|---|\n| 1.0 |\n\nWeights: a_b = x (50%).\n"
    tex = (tmp_path / "t.tex").read_text()
    assert tex.index(r"\end{tabular}") < tex.index(r"Weights: a\_b = x (50\%).") < tex.index(r"\end{table}")
