"""fga.report.compare on MLflow runs of two experiments logged here with fga.tracking.log_run."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest

from fga.errors import UserError
from fga.report.compare import experiment_names, write_comparison
from fga.tracking import log_run
from test_report import SEEDS, TEXT, key, log_evaluate, make_cfg, recall

SHIFT = 2.0  # the k8 experiment's grm scores 2 points more per recall: +12 rSum


@pytest.fixture(scope="module")
def two_experiments(tmp_path_factory, _empty_store_template):
    """default: grm and vse_mean x 3 seeds; k8: grm x 3 seeds (+SHIFT per recall), a method and a text encoder
    outside the grid."""
    tmp = tmp_path_factory.mktemp("compare")
    shutil.copy(_empty_store_template, tmp / "mlruns.db")
    cfg = make_cfg(tmp, f"sqlite:///{tmp / 'mlruns.db'}", methods=("grm", "vse_mean"))
    k8 = {**cfg, "experiment": "k8"}
    ids = {("default", m, s): log_evaluate(cfg, m, s) for m in ("grm", "vse_mean") for s in SEEDS}
    for method in ("grm", "grm_no_sa"):
        for seed in SEEDS:
            metrics = {f"full/{k}": v for k, v in recall(method, seed, shift=SHIFT).items()}
            ids[("k8", method, seed)] = log_run(k8, key(method, seed, "evaluate"), metrics=metrics,
                                                tags={"protocol": "full", "split": "test", "weights_source": "packaged"})
    log_evaluate(k8, "grm", 0, text="minilm", shift=50.0)  # not in grid.text_encoders: in no table
    return tmp, cfg, ids


def test_comparison_rows_and_rsum_delta(two_experiments):
    tmp, cfg, ids = two_experiments
    files = write_comparison(cfg, ["default", "k8"], quiet=True)
    out = tmp / "reports/compare"
    assert files == [f"compare_default_vs_k8.{e}" for e in ("md", "csv", "tex")] + ["compare_default_vs_k8_provenance.csv"]
    table = pd.read_csv(out / "compare_default_vs_k8.csv")
    assert list(zip(table["experiment"], table["method"])) == [("default", "grm"), ("default", "vse_mean"), ("k8", "grm")]
    assert (table["seeds"] == 3).all()
    rsum = table.set_index(["experiment", "method"])["rsum_mean"]
    assert rsum[("default", "grm")] == pytest.approx(sum(recall("grm", s)["rsum"] for s in SEEDS) / 3, abs=1e-3)
    delta = table.set_index(["experiment", "method"])["delta_rsum"]
    assert delta[("k8", "grm")] == pytest.approx(6 * SHIFT, abs=1e-3)
    assert delta[["default"]].isna().all()  # the reference experiment has no difference to itself
    md = (out / "compare_default_vs_k8.md").read_text()
    assert "| Experiment | Dataset | Backbone | Text | Method |" in md and "ΔrSum vs default" in md and "+12.0" in md
    assert (table["text"] == TEXT).all()
    assert "\\toprule" in (out / "compare_default_vs_k8.tex").read_text()
    prov = pd.read_csv(out / "compare_default_vs_k8_provenance.csv")
    # the runs of both experiments in the grid's cells (k8's grm_no_sa is not one), by their result files
    roots = {"default": "results", "k8": "experiments/k8/results"}
    assert sorted(prov["result_file"]) == sorted(f"{roots[e]}/synthetic/lite0_roi/{TEXT}/{m}/seed{s}/metrics.json"
                                                 for (e, m, s) in ids if m != "grm_no_sa")
    assert list(prov[["experiment", "method", "seed"]].itertuples(index=False, name=None)) == \
        sorted((e, m, s) for (e, m, s) in ids if m != "grm_no_sa")


def test_comparison_keeps_the_listed_order(two_experiments):
    tmp, cfg, _ = two_experiments
    write_comparison(cfg, ["k8", "default"], quiet=True)
    table = pd.read_csv(tmp / "reports/compare/compare_k8_vs_default.csv")
    assert list(table["experiment"]) == ["k8", "default", "default"]
    delta = table.set_index(["experiment", "method"])["delta_rsum"]
    assert delta[("default", "grm")] == pytest.approx(-6 * SHIFT, abs=1e-3)
    assert pd.isna(delta[("default", "vse_mean")])  # k8 has no vse_mean cell to compare with


def test_an_experiment_without_runs_is_one_user_error(two_experiments):
    _, cfg, _ = two_experiments
    with pytest.raises(UserError, match="experiment 'k16' has no evaluate runs"):
        write_comparison(cfg, ["default", "k16"], quiet=True)


@pytest.mark.parametrize("text", ["default", "default,default", "default,bad name", ","])
def test_compare_needs_two_valid_different_names(text):
    with pytest.raises(UserError, match="--compare"):
        experiment_names(text)


def test_compare_names_in_order():
    assert experiment_names(" default, k8 ,lr.1") == ["default", "k8", "lr.1"]
