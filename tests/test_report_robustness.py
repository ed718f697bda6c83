"""fga.report.robustness: the clutter and distractor tables from robustness-run long frames."""
from __future__ import annotations

import pandas as pd
import pytest

from fga.report.robustness import clutter_table, distractor_table
from report_frames import recalls


def long_frame(level: str, values: list, with_n: bool = False) -> pd.DataFrame:
    rows = []
    for method in ("grm", "vse"):
        for seed in (0, 1):
            for i, v in enumerate(values):
                row = {"dataset": "d", "backbone": "b", "text": "bigru", "method": method, "seed": seed,
                       "run_id": f"{method}{seed}",
                       "result_file": f"results/d/b/bigru/{method}/seed{seed}/robustness.json", level: v,
                       **recalls(10.0 * i + seed + (5 if method == "grm" else 0))}
                if with_n:
                    row["n_images"] = 10 + i
                rows.append(row)
    return pd.DataFrame(rows)


def test_clutter_table_orders_bins_and_names_their_sizes(tmp_path):
    assert clutter_table(long_frame("bin", ["1-3", "4plus", "cluttered", "all"], with_n=True), tmp_path, quiet=True)
    data = pd.read_csv(tmp_path / "robustness_clutter.csv")
    assert list(data[data["method"] == "grm"]["bin"]) == ["1-3", "4plus", "cluttered", "all"]
    assert data["seeds"].tolist() == [2] * 8 and data["n_images"].tolist() == [10, 11, 12, 13] * 2
    md = (tmp_path / "robustness_clutter.md").read_text()
    assert "| Dataset | Backbone | Text | Method | Seeds | rSum 1-3 (n=10) | rSum 4plus (n=11) |" in md
    grm_all = data[(data["method"] == "grm") & (data["bin"] == "all")].iloc[0]
    assert grm_all["rsum_mean"] == pytest.approx((recalls(35.0)["rsum"] + recalls(36.0)["rsum"]) / 2)


def test_distractor_table_one_column_per_level(tmp_path, capsys):
    assert distractor_table(long_frame("n_extra", [0, 2, 4]), tmp_path, quiet=True)
    md = (tmp_path / "robustness_distractors.md").read_text()
    assert "| rSum +0 | rSum +2 | rSum +4 |" in md
    assert len(pd.read_csv(tmp_path / "robustness_distractors_provenance.csv")) == 12
    assert not distractor_table(pd.DataFrame(), tmp_path, quiet=False)
    assert not clutter_table(pd.DataFrame(), tmp_path, quiet=False)
    out = capsys.readouterr().out
    assert "distractor table and figure skipped" in out and "clutter table and figure skipped" in out
