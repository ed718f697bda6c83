"""fga.report.significance: paired tests per seed from the runs' ranks (stubbed here), one verdict over seeds."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fga.evaluate.run import RanksFile
from fga.evaluate.stats import paired_test
from fga.report.significance import significance_table
from report_frames import evaluation_frame

RNG = np.random.default_rng(0)
N = 60
WEAK = (RNG.integers(1, 30, N), RNG.integers(1, 60, 5 * N))
STRONG = (np.maximum(1, WEAK[0] - RNG.integers(0, 8, N)), np.maximum(1, WEAK[1] - RNG.integers(0, 12, 5 * N)))
CFG = {"evaluate": {"bootstrap": {"n_resamples": 200, "seed": 2, "confidence": 0.9}}}


def stub_ranks(monkeypatch, by_run: dict) -> None:
    monkeypatch.setattr("fga.report.significance.run_ranks", lambda cfg, run_id, tmp: by_run.get(run_id))


def ranks(pair, ids=range(N)) -> RanksFile:
    return RanksFile(pair[0], pair[1], 5, np.asarray(list(ids)))


def test_per_seed_rows_and_the_over_seeds_row(tmp_path, monkeypatch):
    runs = evaluation_frame([("grm", 0, 30.0), ("grm", 1, 30.0), ("vse", 0, 20.0), ("vse", 1, 20.0)])
    stub_ranks(monkeypatch, {"grm-0-bigru": ranks(STRONG), "vse-0-bigru": ranks(WEAK), "grm-1-bigru": ranks(STRONG),
                             "vse-1-bigru": ranks(WEAK)})
    assert significance_table(CFG, runs, tmp_path, quiet=True)
    data = pd.read_csv(tmp_path / "significance.csv", dtype={"seed": str})
    assert list(data["seed"]) == ["0", "1", "all"]
    ref = paired_test(STRONG, WEAK, 5, n_resamples=200, seed=2, confidence=0.9)
    assert data["delta_rsum"].tolist() == pytest.approx([ref["delta_rsum"]] * 3, abs=1e-3)
    assert data["p_value"].iloc[2] == data["p_value"].iloc[:2].max() and pd.isna(data["ci_lo"].iloc[2])
    md = (tmp_path / "significance.md").read_text()
    assert "ΔrSum 90% CI" in md and "200 resamples, seed 2" in md
    prov = pd.read_csv(tmp_path / "significance_provenance.csv")
    assert list(prov["baseline_result_file"]) == [f"results/synthetic/b/bigru/vse/seed{s}/metrics.json" for s in (0, 1)]
    assert list(prov["result_file"]) == [f"results/synthetic/b/bigru/grm/seed{s}/metrics.json" for s in (0, 1)]
    assert not [c for c in data if "run_id" in c]  # the table's CSV names runs by their result files too


def test_rows_without_ranks_or_on_other_queries_are_skipped(tmp_path, monkeypatch, capsys):
    runs = evaluation_frame([("grm", 0, 30.0), ("grm", 1, 30.0), ("vse", 0, 20.0), ("vse", 1, 20.0)])
    stub_ranks(monkeypatch, {"grm-0-bigru": ranks(STRONG), "vse-0-bigru": ranks(WEAK, ids=range(1, N + 1)),
                             "grm-1-bigru": ranks(STRONG)})
    assert not significance_table(CFG, runs, tmp_path, quiet=False)
    out = capsys.readouterr().out
    assert "synthetic/b/bigru/grm/seed0 and synthetic/b/bigru/vse/seed0 ranked different test queries" in out
    assert "no ranks.npz artifact in the evaluate run of synthetic/b/bigru/vse/seed1" in out
    assert "significance table skipped" in out and not list(tmp_path.iterdir())
    assert not significance_table(CFG, evaluation_frame([("vse", 0, 20.0)]), tmp_path, quiet=True)
