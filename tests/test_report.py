"""fga.report on MLflow runs logged here with fga.tracking.log_run: tables, provenance, figures, report run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fga.errors import UserError
from fga.report import write_report
from fga.report.paper import PAPER_GRM_RSUM
from fga.report.runs import COLUMNS
from fga.tracking import experiment_name, log_run

SEEDS = (0, 1, 2)
METHODS = {"grm": {"embed_dim": 8}, "grm_no_sa": {"arch": "grm", "use_saliency": False},
           "grm_no_rp": {"arch": "grm", "use_region_prompt": False}, "vse_mean": {"embed_dim": 8}}
TEXT = "bigru"  # the caption encoder of these runs (grid.text_encoders)
BINS = {"1-3": 40, "4-6": 35, "7plus": 25, "cluttered": 30, "all": 100}
DISTRACTORS = (0, 2, 4)


def make_cfg(tmp: Path, uri: str, methods=tuple(METHODS)) -> dict:
    return {"grid": {"datasets": ["synthetic"], "backbones": ["lite0_roi"], "text_encoders": [TEXT],
                     "methods": list(methods), "seeds": list(SEEDS)},
            "methods": METHODS,
            "tracking": {"uri": uri, "artifact_root": str(tmp / "mlartifacts")},
            "report": {"tables_dir": str(tmp / "reports/tables"), "figures_dir": str(tmp / "reports/figures")}}


def recall(method: str, seed: int, shift: float = 0.0) -> dict[str, float]:
    base = {"grm": 30.0, "grm_no_sa": 25.0, "grm_no_rp": 27.0, "vse_mean": 20.0, "vse_inf": 22.0}[method] + seed + shift
    vals = {c: base + i for i, c in enumerate(COLUMNS[:-1])}
    vals["rsum"] = sum(vals.values())
    return vals


def key(method, seed, stage, text=TEXT):
    return {"dataset": "synthetic", "backbone": "lite0_roi", "text": text, "method": method, "seed": seed,
            "stage": stage}


def log_evaluate(cfg, method, seed, *, ci=True, qbnorm=True, artifacts=None, text=TEXT, shift=0.0):
    vals = recall(method, seed, shift)
    metrics = {f"full/{k}": v for k, v in vals.items()}
    if ci:
        metrics.update({f"full/ci/{k}_lo": v - 2 for k, v in vals.items()})
        metrics.update({f"full/ci/{k}_hi": v + 2 for k, v in vals.items()})
    if qbnorm:
        qb = {k: v + 1 for k, v in vals.items() if k != "rsum"}  # +1 on each recall: +6 rSum
        metrics.update({f"qbnorm/full/{k}": v for k, v in {**qb, "rsum": sum(qb.values())}.items()})
    return log_run(cfg, key(method, seed, "evaluate", text), metrics=metrics, artifacts=artifacts,
                   tags={"protocol": "full", "split": "test", "weights_source": "packaged"})


def log_robustness(cfg, method, seed, prefix="full/", text=TEXT):
    """The keys fga.evaluate.robustness_run.mlflow_metrics logs (prefix "": runs logged before the protocol prefix)."""
    metrics = {}
    for i, (label, n) in enumerate(BINS.items()):
        metrics[f"{prefix}clutter/{label}/n_images"] = n
        metrics.update({f"{prefix}clutter/{label}/{k}": v for k, v in recall(method, seed, shift=-3 * i).items()})
        metrics[f"{prefix}clutter/{label}/ci/rsum_lo"] = 0.0  # CI bounds are not rows of the table
    for n in DISTRACTORS:
        metrics.update({f"{prefix}distractors/{n}/{k}": v for k, v in recall(method, seed, shift=-n).items()})
    # another protocol's blocks never mix into the run's own
    metrics.update({f"coco1k/clutter/{label}/rsum": 1.0 for label in BINS})
    metrics.update({f"coco1k/distractors/{n}/rsum": 1.0 for n in DISTRACTORS})
    return log_run(cfg, key(method, seed, "robustness", text), metrics=metrics, tags={"protocol": "full"})


@pytest.fixture(scope="module")
def full_report(tmp_path_factory, _empty_store_template):
    """Evaluate + robustness runs for 4 methods x 3 seeds (2 ablation variants), then the report."""
    import shutil

    tmp = tmp_path_factory.mktemp("report")
    shutil.copy(_empty_store_template, tmp / "mlruns.db")
    cfg = make_cfg(tmp, f"sqlite:///{tmp / 'mlruns.db'}")
    ids = {}
    for method in METHODS:
        for seed in SEEDS:
            ids[(method, seed, "evaluate")] = log_evaluate(cfg, method, seed)
            ids[(method, seed, "robustness")] = log_robustness(cfg, method, seed)
    write_report(cfg, quiet=True)
    return tmp, cfg, ids


def test_main_table_means_ci_and_provenance(full_report):
    tmp, _, ids = full_report
    tables = tmp / "reports/tables"
    main = pd.read_csv(tables / "main.csv")
    assert sorted(main["method"]) == sorted(METHODS) and (main["seeds"] == 3).all()
    for _, row in main.iterrows():
        per_seed = [recall(row["method"], s) for s in SEEDS]
        for c in COLUMNS:
            assert row[f"{c}_mean"] == pytest.approx(sum(p[c] for p in per_seed) / 3, abs=1e-3)
        assert row["rsum_std"] == pytest.approx(pd.Series([p["rsum"] for p in per_seed]).std(), abs=1e-3)
        assert row["rsum_ci_lo_mean"] == pytest.approx(row["rsum_mean"] - 2, abs=1e-3)
        assert row["rsum_ci_hi_mean"] == pytest.approx(row["rsum_mean"] + 2, abs=1e-3)
    md = (tables / "main.md").read_text()
    assert "rSum 95% CI" in md and "±" in md
    assert "\\toprule" in (tables / "main.tex").read_text() and "$\\pm$" in (tables / "main.tex").read_text()
    prov = pd.read_csv(tables / "main_provenance.csv")
    assert sorted(prov["result_file"]) == sorted(f"results/synthetic/lite0_roi/{TEXT}/{m}/seed{s}/metrics.json"
                                                 for (m, s, st) in ids if st == "evaluate")
    assert (prov["weights"] == "packaged").all() and "run_id" not in prov
    assert "Weights: lite0_roi = packaged." in md and "| Weights |" not in md
    # measured tables never carry the paper's numbers
    for name in ("main", "ablation", "robustness_clutter"):
        assert "516.2" not in (tables / f"{name}.md").read_text()


def test_ablation_table_rows_and_deltas(full_report):
    tmp, _, ids = full_report
    abl = pd.read_csv(tmp / "reports/tables/ablation.csv")
    assert list(abl["method"]) == ["grm", "grm_no_rp", "grm_no_sa"]
    assert list(abl["model"]) == ["GRM (full)", "w/o RP", "w/o SA/GA"]
    full = abl.set_index("method")["rsum_mean"]["grm"]
    for _, row in abl.iterrows():
        assert row["delta_rsum"] == pytest.approx(row["rsum_mean"] - full, abs=1e-3)
    # variants score 5 and 3 points lower per recall -> 30 and 18 rSum
    assert abl.set_index("method")["delta_rsum"].to_dict() == pytest.approx({"grm": 0, "grm_no_rp": -18, "grm_no_sa": -30})
    md = (tmp / "reports/tables/ablation.md").read_text()
    assert "w/o SA/GA" in md and "-30.0" in md and "vse_mean" not in md
    prov = pd.read_csv(tmp / "reports/tables/ablation_provenance.csv")
    assert set(prov["method"]) == {"grm", "grm_no_rp", "grm_no_sa"} and len(prov) == 9



def test_grid_ablation_variants_fill_the_ablation_table_not_the_main_one(tmp_path, mlflow_store):
    """`grid.ablation` variants (a backbone subset, every seed) are read for the ablation table only."""
    cfg = make_cfg(tmp_path, mlflow_store, methods=("grm", "vse_mean"))
    cfg["grid"]["ablation"] = {"backbones": ["lite0_roi"], "methods": ["grm_no_rp", "grm_no_sa"]}
    for method in ("grm", "vse_mean", "grm_no_rp"):  # grm_no_sa never ran
        for seed in SEEDS:
            log_evaluate(cfg, method, seed)
    write_report(cfg, quiet=True)
    tables = tmp_path / "reports/tables"
    assert sorted(pd.read_csv(tables / "main.csv")["method"]) == ["grm", "vse_mean"]
    abl = pd.read_csv(tables / "ablation.csv")
    assert list(abl["method"]) == ["grm", "grm_no_rp"] and (abl["seeds"] == 3).all()
    assert "grid/lite0_roi/grm_no_sa/seed0" not in (tables / "main.md").read_text()
    assert "synthetic/lite0_roi/bigru/grm_no_sa/seed0" in (tables / "main.md").read_text()  # named as missing

def test_two_text_encoders_stay_apart_in_every_table(tmp_path, mlflow_store):
    """grid.text_encoders [bigru, minilm]: each (method, encoder) is a row of its own (minilm's runs score 10 points
    more per recall), the provenance names runs by their encoder's results path, and a run logged before the `text`
    tag existed counts as the BiGRU's."""
    import mlflow

    cfg = make_cfg(tmp_path, mlflow_store, methods=("grm", "vse_mean"))
    cfg["methods"] = {"grm": {}, "vse_mean": {}}
    cfg["grid"]["text_encoders"] = [TEXT, "minilm"]
    legacy = None
    for text, shift in ((TEXT, 0.0), ("minilm", 10.0)):
        for method in ("grm", "vse_mean"):
            for seed in SEEDS:
                run_id = log_evaluate(cfg, method, seed, text=text, shift=shift)
                log_robustness(cfg, method, seed, text=text)
                legacy = legacy or run_id  # bigru grm seed 0
    mlflow.MlflowClient(tracking_uri=cfg["tracking"]["uri"]).delete_tag(legacy, "text")
    write_report(cfg, quiet=True)
    tables = tmp_path / "reports/tables"
    main = pd.read_csv(tables / "main.csv")
    assert list(zip(main["text"], main["method"], main["seeds"])) == [
        (TEXT, "grm", 3), (TEXT, "vse_mean", 3), ("minilm", "grm", 3), ("minilm", "vse_mean", 3)]
    rsum = main.set_index(["text", "method"])["rsum_mean"]
    for method in ("grm", "vse_mean"):
        mean = sum(recall(method, s)["rsum"] for s in SEEDS) / 3
        assert rsum[(TEXT, method)] == pytest.approx(mean, abs=1e-3)
        assert rsum[("minilm", method)] == pytest.approx(mean + 60, abs=1e-3)
    assert "| Dataset | Backbone | Text | Method | Seeds |" in (tables / "main.md").read_text()
    assert "Incomplete grid" not in (tables / "main.md").read_text()  # the untagged run fills bigru's cell
    prov = pd.read_csv(tables / "main_provenance.csv")
    assert sorted(prov["result_file"]) == sorted(f"results/synthetic/lite0_roi/{t}/{m}/seed{s}/metrics.json"
                                                 for t in (TEXT, "minilm") for m in ("grm", "vse_mean") for s in SEEDS)
    assert (prov["result_file"].str.split("/").str[3] == prov["text"]).all()
    clutter = pd.read_csv(tables / "robustness_clutter.csv")
    assert set(zip(clutter["text"], clutter["method"])) == {(t, m) for t in (TEXT, "minilm")
                                                            for m in ("grm", "vse_mean")}
    assert "| Dataset | Backbone | Text | Method | Seeds |" in (tables / "robustness_clutter.md").read_text()
    qb = pd.read_csv(tables / "qbnorm.csv")
    assert list(qb["text"]) == [TEXT, TEXT, "minilm", "minilm"]
    assert (tmp_path / "reports/figures/seed_spread.png").stat().st_size > 5000


def test_robustness_tables(full_report):
    tmp, _, ids = full_report
    tables = tmp / "reports/tables"
    clutter = pd.read_csv(tables / "robustness_clutter.csv")
    grm = clutter[clutter["method"] == "grm"]
    assert list(grm["bin"]) == list(BINS)  # ranges by lower edge, then cluttered, then all
    for i, (label, n) in enumerate(BINS.items()):
        row = grm[grm["bin"] == label].iloc[0]
        expected = [recall("grm", s, shift=-3 * i)["rsum"] for s in SEEDS]
        assert row["rsum_mean"] == pytest.approx(sum(expected) / 3, abs=1e-3)
        assert row["rsum_std"] == pytest.approx(pd.Series(expected).std(), abs=1e-3)
        assert row["n_images"] == n and row["seeds"] == 3
    md = (tables / "robustness_clutter.md").read_text()
    assert "rSum 1-3 (n=40)" in md and "rSum 7plus (n=25)" in md
    prov = pd.read_csv(tables / "robustness_clutter_provenance.csv")
    assert set(prov["result_file"]) == {f"results/synthetic/lite0_roi/{TEXT}/{m}/seed{s}/robustness.json"
                                        for (m, s, st) in ids if st == "robustness"}
    dis = pd.read_csv(tables / "robustness_distractors.csv")
    assert sorted(dis["n_extra"].unique()) == list(DISTRACTORS)
    row = dis[(dis["method"] == "vse_mean") & (dis["n_extra"] == 4)].iloc[0]
    assert row["rsum_mean"] == pytest.approx(sum(recall("vse_mean", s, shift=-4)["rsum"] for s in SEEDS) / 3, abs=1e-3)
    qb = pd.read_csv(tables / "qbnorm.csv")
    assert qb["delta_rsum"].tolist() == pytest.approx([6.0] * 4)
    assert "rsum_ci_lo_mean" not in qb and "CI" not in (tables / "qbnorm.md").read_text()


def test_robustness_runs_logged_before_the_protocol_prefix_still_read(tmp_path, mlflow_store):
    cfg = make_cfg(tmp_path, mlflow_store, methods=("grm",))
    for seed in SEEDS:
        log_evaluate(cfg, "grm", seed)
        log_robustness(cfg, "grm", seed, prefix="")
    write_report(cfg, quiet=True)
    clutter = pd.read_csv(tmp_path / "reports/tables/robustness_clutter.csv")
    assert list(clutter["bin"]) == list(BINS)
    assert clutter["rsum_mean"].iloc[0] == pytest.approx(sum(recall("grm", s)["rsum"] for s in SEEDS) / 3)
    dis = pd.read_csv(tmp_path / "reports/tables/robustness_distractors.csv")
    assert list(dis["n_extra"]) == list(DISTRACTORS) and (dis["rsum_mean"] > 100).all()


def _ranks_file(path: Path, i2t, t2i) -> Path:
    """ranks.npz as the evaluate stage writes it (primary protocol `full`, 5 captions per image)."""
    from fga.evaluate.run import write_ranks

    write_ranks(path / "ranks.npz", {"full_i2t": i2t, "full_t2i": t2i, "i2t": i2t, "t2i": t2i},
                list(range(100, 100 + len(i2t))), 5, "full")
    return path / "ranks.npz"


def test_significance_table_from_the_runs_ranks(tmp_path, mlflow_store):
    """Seed 0: GRM ranks every query at least as well as vse_mean (p < 0.05); seed 1: the two swapped (p > 0.5);
    vse_inf has seed 0 only; the `all` row takes the largest per-seed p."""
    from fga.evaluate.recall import metrics_from_ranks
    from fga.evaluate.stats import paired_test

    cfg = make_cfg(tmp_path, mlflow_store, methods=("grm", "vse_mean", "vse_inf"))
    cfg["methods"] = {"grm": {}, "vse_mean": {}, "vse_inf": {}}
    cfg["evaluate"] = {"bootstrap": {"n_resamples": 500, "seed": 1}}
    rng = np.random.default_rng(0)
    n = 120
    weak = (rng.integers(1, 30, n), rng.integers(1, 60, 5 * n))
    strong = (np.maximum(1, weak[0] - rng.integers(0, 8, n)), np.maximum(1, weak[1] - rng.integers(0, 12, 5 * n)))
    ranks = {("grm", 0): strong, ("vse_mean", 0): weak, ("grm", 1): weak, ("vse_mean", 1): strong,
             ("vse_inf", 0): weak}
    for (method, seed), r in ranks.items():
        (tmp_path / f"{method}{seed}").mkdir()
        log_evaluate(cfg, method, seed, artifacts=[_ranks_file(tmp_path / f"{method}{seed}", *r)])
    write_report(cfg, quiet=True)
    tables = tmp_path / "reports/tables"
    sig = pd.read_csv(tables / "significance.csv", dtype={"seed": str})
    assert list(zip(sig["baseline"], sig["seed"])) == [("vse_inf", "0"), ("vse_mean", "0"), ("vse_mean", "1"),
                                                        ("vse_mean", "all")]
    row = sig.set_index(["baseline", "seed"])
    delta = metrics_from_ranks(*strong)["rsum"] - metrics_from_ranks(*weak)["rsum"]
    assert delta > 10
    assert row.loc[("vse_mean", "0"), "delta_rsum"] == pytest.approx(delta, abs=1e-3)
    assert row.loc[("vse_mean", "1"), "delta_rsum"] == pytest.approx(-delta, abs=1e-3)
    assert row.loc[("vse_mean", "0"), "p_value"] < 0.05 and row.loc[("vse_mean", "1"), "p_value"] > 0.5
    assert row.loc[("vse_mean", "0"), "ci_lo"] > 0 and row.loc[("vse_mean", "0"), "n_resamples"] == 500
    # the params' resamples and seed: exactly paired_test on the runs' ranks
    ref = paired_test(strong, weak, 5, n_resamples=500, seed=1)
    assert row.loc[("vse_mean", "0"), "p_value"] == pytest.approx(ref["p_value"], abs=1e-4)  # CSVs hold 4 decimals
    assert row.loc[("vse_mean", "0"), "ci_hi"] == pytest.approx(ref["ci"][1], abs=1e-3)
    combined = row.loc[("vse_mean", "all")]
    assert combined["delta_rsum"] == pytest.approx(0.0, abs=1e-3) and combined["p_value"] > 0.5
    assert combined["p_value"] == row.loc[("vse_mean", "1"), "p_value"] and pd.isna(combined["ci_lo"])
    md = (tables / "significance.md").read_text()
    assert "LARGEST per-seed p" in md and "| vse_mean | 0 | +" in md and "| 0.002 |" in md and "| 1 |" in md
    assert r"$\Delta$rSum" in (tables / "significance.tex").read_text()
    prov = pd.read_csv(tables / "significance_provenance.csv")
    assert len(prov) == 3 and set(prov.columns) >= {"result_file", "baseline_result_file"}
    # logged with the other tables as the report run's artifacts
    import mlflow

    mlflow.set_tracking_uri(cfg["tracking"]["uri"])
    report = mlflow.search_runs(experiment_names=[experiment_name("synthetic")], filter_string="tags.stage = 'report'")
    paths = {a.path for a in mlflow.MlflowClient().list_artifacts(report["run_id"][0], "tables")}
    assert {"tables/significance.md", "tables/significance.csv", "tables/significance.tex"} <= paths


def test_significance_table_skipped_without_grm(tmp_path, mlflow_store, capsys):
    cfg = make_cfg(tmp_path, mlflow_store, methods=("vse_mean", "vse_inf"))
    cfg["methods"] = {"vse_mean": {}, "vse_inf": {}}
    rng = np.random.default_rng(1)
    for method in ("vse_mean", "vse_inf"):
        (tmp_path / method).mkdir()
        r = (rng.integers(1, 30, 20), rng.integers(1, 30, 100))
        log_evaluate(cfg, method, 0, artifacts=[_ranks_file(tmp_path / method, *r)])
    write_report(cfg)
    assert "significance table needs grm and a baseline among the evaluate runs; skipped" in capsys.readouterr().out
    assert (tmp_path / "reports/tables/main.md").exists()
    assert not list((tmp_path / "reports/tables").glob("significance*"))


def test_paper_reference_is_separate_and_labelled(full_report):
    tmp, _, _ = full_report
    tables = tmp / "reports/tables"
    md = (tables / "paper_reference.md").read_text()
    assert "paper (not measured here)" in md
    for value in ("516.2", "532.5", "443.0", "531.8", "538.2", "451.2", "546.0", "547.5", "470.8", "550.7",
                  "548.0", "478.3"):
        assert value in md
    csv = pd.read_csv(tables / "paper_reference.csv")
    assert (csv["source"] == "paper (not measured here)").all()
    assert csv[["flickr30k_1k", "coco_1k", "coco_5k"]].to_numpy().tolist() == \
        PAPER_GRM_RSUM[["flickr30k_1k", "coco_1k", "coco_5k"]].to_numpy().tolist()
    assert "not measured here" in (tables / "paper_reference.tex").read_text()


def test_figures_and_report_run(full_report):
    tmp, cfg, _ = full_report
    figures = tmp / "reports/figures"
    for name in ("clutter_recall", "distractor_recall", "seed_spread"):
        for ext in ("png", "pdf"):
            path = figures / f"{name}.{ext}"
            assert path.stat().st_size > 5000, path
    import mlflow

    mlflow.set_tracking_uri(cfg["tracking"]["uri"])
    report = mlflow.search_runs(experiment_names=[experiment_name("synthetic")], filter_string="tags.stage = 'report'")
    assert len(report) == 1
    client = mlflow.MlflowClient()
    run_id = report["run_id"][0]
    tables = {a.path for a in client.list_artifacts(run_id, "tables")}
    assert {"tables/main.md", "tables/ablation.csv", "tables/paper_reference.md", "tables/main_provenance.csv"} <= tables
    assert "figures/seed_spread.png" in {a.path for a in client.list_artifacts(run_id, "figures")}
    assert report["metrics.n_evaluate_runs"][0] == 12


def test_report_run_holds_the_run_id_map_and_the_sortable_main_table(full_report):
    """Run ids stay traceable from the report run (not from reports/tables); the main table is an MLflow table."""
    tmp, cfg, ids = full_report
    import mlflow

    mlflow.set_tracking_uri(cfg["tracking"]["uri"])
    report = mlflow.search_runs(experiment_names=[experiment_name("synthetic")], filter_string="tags.stage = 'report'")
    client = mlflow.MlflowClient()
    run_id = report["run_id"][0]
    id_map = pd.read_csv(client.download_artifacts(run_id, "provenance_run_ids.csv", str(tmp / "dl")))
    assert list(id_map.columns) == ["stage", "dataset", "backbone", "text", "method", "seed", "result_file", "run_id"]
    # every run the report read: the evaluate and the robustness runs
    assert {(m, s, st): r for st, m, s, r in zip(id_map["stage"], id_map["method"], id_map["seed"], id_map["run_id"])} \
        == ids
    prov = pd.read_csv(tmp / "reports/tables/main_provenance.csv")
    assert set(prov["result_file"]) <= set(id_map["result_file"])
    assert not (tmp / "reports/tables/provenance_run_ids.csv").exists()
    logged = json.loads(client.get_run(run_id).data.tags["mlflow.loggedArtifacts"])
    assert {"path": "main_table.json", "type": "table"} in logged
    table = pd.read_json(client.download_artifacts(run_id, "main_table.json", str(tmp / "dl")), orient="split")
    main = pd.read_csv(tmp / "reports/tables/main.csv")
    assert table["rSum"].tolist() == main["rsum_mean"].round(1).tolist()
    assert table["Method"].tolist() == main["method"].tolist()


def test_rerun_replaces_outputs_and_report_run(full_report):
    tmp, cfg, _ = full_report
    cfg = {**cfg, "grid": {**cfg["grid"], "methods": ["grm", "vse_mean"]}}
    stale = tmp / "reports/tables/stale.md"
    stale.write_text("old")
    write_report(cfg, quiet=True)
    assert not stale.exists()  # the directory is replaced as a whole
    # runs of methods no longer in the grid stay in the store but not in the tables
    assert sorted(pd.read_csv(tmp / "reports/tables/main.csv")["method"]) == ["grm", "vse_mean"]
    assert not (tmp / "reports/tables/ablation.md").exists()
    import mlflow

    mlflow.set_tracking_uri(cfg["tracking"]["uri"])
    assert len(mlflow.search_runs(experiment_names=[experiment_name("synthetic")],
                                  filter_string="tags.stage = 'report'")) == 1


def test_degrades_without_robustness_variants_or_ci(tmp_path, mlflow_store, capsys):
    cfg = make_cfg(tmp_path, mlflow_store, methods=("grm", "vse_mean"))
    cfg["methods"] = {"grm": {}, "vse_mean": {}}
    for method in ("grm", "vse_mean"):
        for seed in (0, 1):
            log_evaluate(cfg, method, seed, ci=False, qbnorm=False)
    write_report(cfg)
    captured = capsys.readouterr()
    out = captured.out
    assert "WARNING: 2 grid cell(s) have no evaluate run" in captured.err  # grid seeds 0-2, runs of seeds 0-1
    assert "Incomplete grid" in (tmp_path / "reports/tables/main.md").read_text()
    for what in ("ablation table skipped", "QB-Norm table skipped", "clutter table and figure skipped",
                 "distractor table and figure skipped", "heat maps skipped", "no ranks.npz artifact in the evaluate "
                 "run of synthetic/lite0_roi/bigru/grm/seed0", "significance table skipped"):
        assert what in out
    tables = {p.name for p in (tmp_path / "reports/tables").iterdir()}
    assert tables == {f"{n}{s}" for n in ("main", "paper_reference") for s in (".md", ".csv", ".tex", "_provenance.csv")}
    assert {p.name for p in (tmp_path / "reports/figures").iterdir()} == {"seed_spread.png", "seed_spread.pdf"}
    main = pd.read_csv(tmp_path / "reports/tables/main.csv")
    assert "rsum_ci_lo_mean" not in main and "rSum 95% CI" not in (tmp_path / "reports/tables/main.md").read_text()


def test_region_word_heat_maps_from_artifacts(tmp_path, mlflow_store, capsys):
    """One heat map per entry of `maps` in an evaluate run's attention.json (fga.evaluate.attention), at most 4,
    for the lowest seed of each GRM-arch method; an empty `maps` (no region attention) draws nothing."""
    cfg = make_cfg(tmp_path, mlflow_store, methods=("grm", "grm_no_sa", "vse_mean"))
    one = {"words": ["a", "red", "circle"], "regions": ["prompt 0: cell 1", "prompt 1: cell 3"], "image_id": 7,
           "attention": [[0.1, 0.9], [0.8, 0.2], [0.5, 0.5]], "caption": "a red circle", "temperature": 0.1}
    for method, seed, maps in (("grm", 0, [one] * 5), ("grm", 1, [one]), ("grm_no_sa", 0, [one, {"words": []}]),
                               ("vse_mean", 0, [])):
        run_dir = tmp_path / f"{method}{seed}"
        run_dir.mkdir()
        att = run_dir / "attention.json"
        record = {"method": method, "arch": METHODS[method].get("arch", method), "maps": maps}
        att.write_text(json.dumps(record if maps else {**record, "reason": "no region attention"}))
        log_evaluate(cfg, method, seed, artifacts=[att])
    write_report(cfg)
    figures = tmp_path / "reports/figures"
    drawn = sorted(p.name for p in figures.glob("attention_*.png"))
    assert drawn == [f"attention_synthetic_lite0_roi_grm_{k}.png" for k in range(4)] + [
        "attention_synthetic_lite0_roi_grm_no_sa_0.png"]  # grm: limit 4 of seed 0's 5 maps; a bad map is skipped
    assert all((figures / name).stat().st_size > 3000 for name in drawn)
    assert "attention.json map 1 is not a region-word map" in capsys.readouterr().out  # the bad map is noted
    assert not list((tmp_path / "reports").glob(".*artifacts"))


def test_older_single_map_artifacts_still_draw(tmp_path, mlflow_store):
    cfg = make_cfg(tmp_path, mlflow_store, methods=("grm",))
    att = tmp_path / "region_attention_0.json"
    att.write_text(json.dumps({"words": ["a", "red", "circle"], "regions": ["p0", "p1"],
                               "attention": [[0.1, 0.9], [0.8, 0.2], [0.5, 0.5]], "caption": "a red circle"}))
    log_evaluate(cfg, "grm", 0, artifacts=[(att, "attention")])
    write_report(cfg, quiet=True)
    assert (tmp_path / "reports/figures/attention_synthetic_lite0_roi_grm_0.png").stat().st_size > 3000


def test_no_maps_in_attention_json_keeps_the_skip_note(tmp_path, mlflow_store, capsys):
    cfg = make_cfg(tmp_path, mlflow_store, methods=("grm",))
    att = tmp_path / "attention.json"
    att.write_text(json.dumps({"method": "grm", "arch": "grm", "maps": [], "reason": "evaluate.attention_maps is 0"}))
    log_evaluate(cfg, "grm", 0, artifacts=[att])
    write_report(cfg)
    assert "saved no region-word attention maps; heat maps skipped" in capsys.readouterr().out
    assert not list((tmp_path / "reports/figures").glob("attention_*"))


def test_no_evaluate_runs_is_one_clear_error(tmp_path, mlflow_store):
    with pytest.raises(UserError, match="no evaluate runs"):
        write_report(make_cfg(tmp_path, mlflow_store), quiet=True)
    assert not (tmp_path / "reports/tables").exists()
