"""fga.report.files: the report rebuilt from the DVC-tracked result files alone gives the MLflow source's tables.

The result files are made by the evaluate and robustness stages' own code (ranks, bootstrap CIs, clutter bins)
on random similarity matrices, then logged to MLflow exactly as `fga evaluate` / `fga robustness` log them; the grid
has two text encoders, whose runs every table keeps apart."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from fga.config import load_params
from fga.errors import UserError
from fga.evaluate.recall import query_ranks
from fga.evaluate.robustness import cluttered_bin, make_bins, per_bin_metrics, recall_block
from fga.evaluate.robustness_run import mlflow_metrics as robustness_metrics
from fga.evaluate.run import mlflow_metrics, rank_protocols, write_ranks
from fga.evaluate.stats import bootstrap_options
from fga.grid import run_path
from fga.io import write_json
from fga.report import write_report
from fga.report.runs import reads_files
from fga.tracking import log_run

ROOT = Path(__file__).resolve().parents[1]
DS, BK = "synthetic", "lite0_roi"
MAIN, VARIANT, SEEDS = ["grm", "vse_inf"], "grm_no_sa", [0, 1]
TEXTS = ["bigru", "minilm"]
N_IMAGES, CPI = 8, 5


def write_params(root: Path) -> Path:
    """The repo's params.yaml on a 2-text-encoder x 2-method x 2-seed grid (+ one ablation variant), its store under
    `root`."""
    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())
    cfg["grid"] = {"datasets": [DS], "backbones": [BK], "text_encoders": TEXTS, "methods": MAIN, "seeds": SEEDS,
                   "ablation": {"backbones": [BK], "methods": [VARIANT]}}
    cfg["evaluate"]["bootstrap"] = {"n_resamples": 50, "confidence": 0.95, "seed": 0}
    cfg["tracking"] = {"uri": f"sqlite:///{root / 'mlruns.db'}", "artifact_root": str(root / "mlartifacts")}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def similarity(method: str, seed: int, text: str) -> np.ndarray:
    """Random image x caption scores, the matching pairs lifted by a method-dependent margin."""
    rng = np.random.default_rng(100 * seed + len(method) + 1000 * TEXTS.index(text))
    sim = rng.standard_normal((N_IMAGES, N_IMAGES * CPI))
    for i in range(N_IMAGES):
        sim[i, i * CPI:(i + 1) * CPI] += 1.5 if method.startswith("grm") else 0.8
    return sim


def evaluate_result(cfg: dict, out: Path, method: str, seed: int, text: str) -> dict:
    """metrics.json, ranks.npz and attention.json of one run, as fga.evaluate.run writes them."""
    blocks, ranks = rank_protocols(cfg, similarity(method, seed, text), ["full"], CPI, None)
    metrics = {**blocks["full"], "protocol": "full", "protocols": blocks, "split": "test", "n_images": N_IMAGES,
               "caps_per_image": CPI, "weights_source": "random"}
    write_ranks(out / "ranks.npz", {**ranks, "i2t": ranks["full_i2t"], "t2i": ranks["full_t2i"]},
                list(range(N_IMAGES)), CPI, "full")
    maps = [{"words": ["a", "red", "cube"], "attention": [[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]], "image_id": 0,
             "caption": "a red cube"}] if method.startswith("grm") else []
    write_json(out / "attention.json", {"maps": maps})
    write_json(out / "metrics.json", metrics)
    return metrics


def robustness_result(cfg: dict, out: Path, method: str, seed: int, text: str) -> dict:
    """robustness.json of one run: clutter bins, the cluttered subset, the distractor curve."""
    bs = bootstrap_options(cfg)
    sim = similarity(method, seed, text)
    ranks = query_ranks(sim, CPI)
    ids = list(range(N_IMAGES))
    counts = {i: 1 + i % 6 for i in ids}
    clut = cluttered_bin(counts, 0.6667)
    overall = recall_block(*ranks, CPI, bs)
    harder = recall_block(*query_ranks(sim - np.eye(N_IMAGES).repeat(CPI, axis=1), CPI), CPI, bs)
    result = {"protocol": "full", "split": "test", "n_images": N_IMAGES, "caps_per_image": CPI,
              "weights_source": "random",
              "bins": per_bin_metrics(sim, ids, counts, make_bins(counts, {"equal_count": 2}), CPI, ranks=ranks,
                                      bootstrap=bs),
              "cluttered": per_bin_metrics(sim, ids, counts, [clut], CPI, ranks=ranks, bootstrap=bs)[clut.label],
              "overall": overall,
              "distractors": [{"n_extra": 0, "n_images": N_IMAGES, **overall},
                              {"n_extra": 2, "n_images": N_IMAGES, **harder}]}
    write_json(out / "robustness.json", result)
    return result


def run_stages(cfg: dict) -> None:
    """Every grid run's result files under results/, logged to MLflow as `fga evaluate` / `fga robustness` do."""
    cells = [(t, m, s) for t in TEXTS for m in MAIN + [VARIANT] for s in SEEDS]
    for text, method, seed in cells:
        out = Path("results") / run_path(DS, BK, text, method, seed)
        out.mkdir(parents=True)
        key = {"dataset": DS, "backbone": BK, "text": text, "method": method, "seed": seed}
        metrics = evaluate_result(cfg, out, method, seed, text)
        log_run(cfg, {**key, "stage": "evaluate"}, metrics=mlflow_metrics(metrics),
                tags={"protocol": "full", "protocols": "full", "split": "test", "weights_source": "random"},
                artifacts=[out / "metrics.json", out / "ranks.npz", out / "attention.json"])
        if method in MAIN:
            result = robustness_result(cfg, out, method, seed, text)
            log_run(cfg, {**key, "stage": "robustness"}, metrics=robustness_metrics(result),
                    tags={"protocol": "full", "split": "test", "weights_source": "random"},
                    artifacts=[out / "robustness.json"])


@pytest.fixture(scope="module")
def project(tmp_path_factory, _empty_store_template):
    """A project whose runs are both in MLflow and in results/, with the report built from each source."""
    root = tmp_path_factory.mktemp("report_files")
    shutil.copy(_empty_store_template, root / "mlruns.db")
    old = os.getcwd()
    os.chdir(root)
    try:
        cfg = load_params(write_params(root))
        run_stages(cfg)
        write_report({**cfg, "report": {"tables_dir": "mlflow/tables", "figures_dir": "mlflow/figures"}}, quiet=True)
        write_report({**cfg, "report": {"tables_dir": "files/tables", "figures_dir": "files/figures",
                                        "source": "files"}}, quiet=True)
        yield root, cfg
    finally:
        os.chdir(old)


def assert_same_tables(a: Path, b: Path) -> None:
    """Equal bytes for every table file, the provenance CSVs included: both sources name a run by its key and its
    result file, never by an MLflow run id."""
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_file_source_writes_the_mlflow_sources_tables(project):
    root, _ = project
    tables = sorted(p.name for p in (root / "mlflow/tables").iterdir())
    # every table family is exercised: main, ablation, significance (from ranks.npz), robustness
    for name in ("main.md", "ablation.csv", "significance.csv", "robustness_clutter.tex", "robustness_distractors.csv"):
        assert name in tables, name
    assert len(pd.read_csv(root / "mlflow/tables/significance_provenance.csv")) == len(TEXTS) * len(SEEDS)
    assert_same_tables(root / "mlflow/tables", root / "files/tables")
    figures = sorted(p.name for p in (root / "files/figures").iterdir())
    assert figures == sorted(p.name for p in (root / "mlflow/figures").iterdir())
    assert any(f.startswith("attention_") for f in figures)  # read from results/.../attention.json


def test_every_table_keeps_the_text_encoders_apart(project):
    root, _ = project
    tables = root / "files/tables"
    main = pd.read_csv(tables / "main.csv")
    assert list(zip(main["text"], main["method"])) == [(t, m) for t in TEXTS for m in MAIN]
    assert (main["seeds"] == len(SEEDS)).all() and main["rsum_mean"].is_unique
    for name in ("ablation", "significance", "robustness_clutter", "robustness_distractors"):
        assert set(pd.read_csv(tables / f"{name}.csv")["text"]) == set(TEXTS), name
        assert "| Backbone | Text |" in (tables / f"{name}.md").read_text(), name
    attention = sorted(p.name for p in (root / "files/figures").glob("attention_*.png"))
    for text in TEXTS:  # one map set per encoder
        assert f"attention_{DS}_{BK}_{text}_grm_0.png" in attention


def test_provenance_names_the_result_files_and_no_run_id(project):
    root, cfg = project
    prov = pd.read_csv(root / "files/tables/main_provenance.csv")
    assert sorted(prov["result_file"]) == sorted(f"results/{DS}/{BK}/{t}/{m}/seed{s}/metrics.json"
                                                 for t in TEXTS for m in MAIN for s in SEEDS)
    assert all(Path(f).is_file() for f in prov["result_file"])
    assert list(prov.columns[:6]) == ["dataset", "protocol", "backbone", "text", "method", "seed"]
    clutter = pd.read_csv(root / "mlflow/tables/robustness_clutter_provenance.csv")
    assert set(clutter["result_file"]) == {f"results/{DS}/{BK}/{t}/{m}/seed{s}/robustness.json"
                                           for t in TEXTS for m in MAIN for s in SEEDS}
    import mlflow

    mlflow.set_tracking_uri(cfg["tracking"]["uri"])
    run_ids = set(mlflow.search_runs(search_all_experiments=True)["run_id"])
    for source in ("mlflow", "files"):
        for path in (root / source / "tables").iterdir():
            text = path.read_text()
            assert not any(run_id in text for run_id in run_ids), path


def colleague_copy(project_root: Path, dst: Path) -> Path:
    """What a colleague has after `git clone` + `dvc pull`: params.yaml and results/, no MLflow store."""
    dst.mkdir()
    shutil.copy(project_root / "params.yaml", dst / "params.yaml")
    shutil.copytree(project_root / "results", dst / "results")
    return dst


def colleague_report(root: Path, *args: str) -> int:
    from fga.cli import main

    return main(["report", "--params", "params.yaml", "--quiet", "--from-files",
                 "--set", f"tracking.uri=sqlite:///{root / 'mlruns.db'}", *args])


def test_colleague_rebuilds_the_report_from_results_alone(project, tmp_path, monkeypatch):
    root, _ = project
    mine = colleague_copy(root, tmp_path / "colleague")
    monkeypatch.chdir(mine)
    assert colleague_report(mine) == 0
    assert_same_tables(root / "mlflow/tables", mine / "reports/tables")
    assert not (mine / "mlruns.db").exists() and not (mine / "mlartifacts").exists()  # no report run logged


def test_missing_result_files_are_one_line_each_with_the_fix(project, tmp_path, monkeypatch, capsys):
    root, _ = project
    mine = colleague_copy(root, tmp_path / "colleague")
    lost = mine / "results" / run_path(DS, BK, "minilm", "vse_inf", 1)
    (lost / "metrics.json").unlink()
    (lost / "robustness.json").unlink()
    (lost / "ranks.npz").unlink()
    monkeypatch.chdir(mine)
    assert colleague_report(mine) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "WARNING" in line]
    assert len(warnings) == 2
    for line, name in zip(warnings, ("metrics.json", "robustness.json")):
        assert f"results/{DS}/{BK}/minilm/vse_inf/seed1/{name}" in line and "dvc pull" in line and "rerun" in line
    main = pd.read_csv(mine / "reports/tables/main_provenance.csv")
    assert f"results/{DS}/{BK}/minilm/vse_inf/seed1/metrics.json" not in set(main["result_file"])
    assert f"results/{DS}/{BK}/minilm/vse_inf/seed0/metrics.json" in set(main["result_file"])
    assert f"results/{DS}/{BK}/bigru/vse_inf/seed1/metrics.json" in set(main["result_file"])


def test_no_result_files_is_one_clear_error(project, tmp_path, monkeypatch, capsys):
    root, _ = project
    mine = colleague_copy(root, tmp_path / "colleague")
    shutil.rmtree(mine / "results")
    monkeypatch.chdir(mine)
    assert colleague_report(mine) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metrics.json" in err and "dvc pull" in err


def test_unknown_source_is_a_user_error():
    assert not reads_files({"report": {"tables_dir": "t", "figures_dir": "f"}})
    with pytest.raises(UserError, match="report.source"):
        reads_files({"report": {"source": "wandb"}})


def test_a_second_report_from_mlflow_is_byte_identical(project):
    """reports/tables and reports/figures are DVC outputs: a rerun on the same runs gives the same bytes (no run
    ids, no wall-clock values), tables and figures alike."""
    root, cfg = project
    write_report({**cfg, "report": {"tables_dir": "mlflow2/tables", "figures_dir": "mlflow2/figures"}}, quiet=True)
    assert_same_tables(root / "mlflow/tables", root / "mlflow2/tables")
    assert_same_tables(root / "mlflow/figures", root / "mlflow2/figures")
