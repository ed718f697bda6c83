"""fga.report.grm: GRM's diagnostics table, the sweep tables shaped like the paper's Tables 2-3, the Fig. 4 line
plots (synthetic frames, ranks stubbed), the file source, and the `grm_sweeps` Snakemake target (dry runs)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fga.config import load_params
from fga.evaluate.run import RanksFile
from fga.grid import SWEEP_LISTS, run_path, sweep_cells, text_encoders
from fga.report.grm import SWEEPS, grm_figures, grm_runs, grm_tables, sweep_frame, sweep_table, variant_label
from report_frames import evaluation_frame

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)
N = 40
WEAK = (RNG.integers(1, 30, N), RNG.integers(1, 60, 5 * N))
STRONG = (np.maximum(1, WEAK[0] - RNG.integers(0, 8, N)), np.maximum(1, WEAK[1] - RNG.integers(0, 12, 5 * N)))
BK = "lite0_grid"


@pytest.fixture(scope="module")
def cfg():
    out = load_params(ROOT / "params.yaml")
    out["evaluate"]["bootstrap"] = {"n_resamples": 200, "seed": 1, "confidence": 0.95}
    return out


def frame(rows, diag: bool = True) -> pd.DataFrame:
    """evaluation_runs' frame for (method, seed, recall base) rows, with a diag/ column or two."""
    runs = evaluation_frame(rows, backbone=BK)
    if diag:
        runs["diag/region_cos"] = [0.9 + 0.01 * s for s in runs["seed"]]
        runs["diag/unc_i2t_R1_train"] = [20.0 + s for s in runs["seed"]]
    return runs


def stub(monkeypatch, runs: pd.DataFrame, strong: str = "grm") -> None:
    """Every run's ranks: the full model's are the better ones."""
    by_run = {r: RanksFile(*(STRONG if r.startswith(strong + "-") else WEAK), 5, np.arange(N)) for r in runs["run_id"]}
    monkeypatch.setattr("fga.report.significance.run_ranks", lambda cfg, run_id, tmp: by_run.get(run_id))
    monkeypatch.setattr("fga.report.grm.grm_runs", lambda cfg: runs)


@pytest.mark.parametrize("method,label", [
    ("grm", "GRM (full)"), ("grm_no_visual_adapter", "−SA"), ("grm_no_text_adapter", "−GA"),
    ("grm_no_sa", "−SA/GA"), ("grm_no_rp", "−RP"), ("grm_no_um", "−UM"), ("grm_no_reg", "−L_reg"),
    ("grm_literal", "literal adapters (saliency_pooling none)"), ("grm_no_l_ori", "−L_ori"),
    ("grm_no_l_key", "−L_key"), ("grm_no_l_unc", "−L_unc"), ("grm_no_l_recon", "−L_recon"), ("grm_k10", "K = 10"),
    ("grm_w_50_50_0", "(a, b, c) = (0.5, 0.5, 0)"), ("grm_w_20_60_20", "(a, b, c) = (0.2, 0.6, 0.2)"),
])
def test_every_params_variant_has_the_papers_name(cfg, method, label):
    assert variant_label(cfg, method, BK) == label


def test_every_sweep_variant_is_a_grm_variant_in_params(cfg):
    cells = sweep_cells(cfg)
    methods = {m for _, _, _, m, _ in cells}
    assert {t for _, _, t, _, _ in cells} == {text_encoders(cfg)[0]}  # the sweeps run on the grid's first encoder
    assert "grm" in methods and all(cfg["methods"][m].get("arch") == "grm" for m in methods - {"grm"})
    assert len(cells) == len(methods) * len(cfg["sweeps"]["backbones"]) * len(cfg["sweeps"]["seeds"])
    assert tuple(SWEEPS) == SWEEP_LISTS and set(SWEEP_LISTS) <= set(cfg["sweeps"])


def test_module_table_has_delta_and_paired_p_against_full_grm(cfg, tmp_path, monkeypatch):
    runs = frame([("grm", 0, 30.0), ("grm", 1, 31.0), ("grm_no_rp", 0, 20.0), ("grm_no_rp", 1, 22.0),
                  ("grm_no_um", 0, 29.0), ("grm_k10", 0, 25.0)])
    stub(monkeypatch, runs)
    summary = sweep_table(cfg, runs, "modules", tmp_path, quiet=True)
    assert list(summary["method"]) == ["grm", "grm_no_rp", "grm_no_um"]  # full first, then the list's order
    assert list(summary["variant"]) == ["GRM (full)", "−RP", "−UM"]
    # recalls base b -> rSum 6b + 15: full 195/201, -RP 135/147
    assert summary["delta_rsum"].tolist() == pytest.approx([0.0, 141.0 - 198.0, 189.0 - 198.0])
    p = summary.set_index("method")["p_value"]
    assert pd.isna(p["grm"]) and p["grm_no_rp"] < 0.05 and summary.set_index("method").loc["grm_no_rp", "seed"] == "all"
    assert summary.set_index("method").loc["grm_no_um", "seed"] == "0"  # one shared seed: its own test
    md = (tmp_path / "grm_ablation_modules.md").read_text()
    assert "| −RP | grm_no_rp | 2 | 141.0 ± 8.5 | -57.0 |" in md and "GRM (full)" in md
    assert {f"grm_ablation_modules.{e}" for e in ("md", "csv", "tex")} <= {f.name for f in tmp_path.iterdir()}
    assert sweep_table(cfg, runs, "losses", tmp_path, quiet=True) is None  # no loss variant ran


def test_sweep_table_compares_each_text_encoder_with_its_own_full_model(cfg, tmp_path, monkeypatch):
    runs = pd.concat([frame([("grm", 0, 30.0), ("grm", 1, 31.0), ("grm_no_rp", 0, 20.0), ("grm_no_rp", 1, 22.0)]),
                      evaluation_frame([("grm", 0, 40.0), ("grm", 1, 41.0), ("grm_no_rp", 0, 38.0),
                                        ("grm_no_rp", 1, 40.0)], backbone=BK, text="minilm")], ignore_index=True)
    stub(monkeypatch, runs)
    summary = sweep_table(cfg, runs, "modules", tmp_path, quiet=True)
    assert list(zip(summary["text"], summary["method"])) == [("bigru", "grm"), ("bigru", "grm_no_rp"),
                                                              ("minilm", "grm"), ("minilm", "grm_no_rp")]
    # rSum 6b + 15 per run: bigru full 198 -> -RP 141; minilm full 258 -> -RP 249
    assert summary["delta_rsum"].tolist() == pytest.approx([0.0, 141.0 - 198.0, 0.0, 249.0 - 258.0])
    assert "| Backbone | Text | Variant |" in (tmp_path / "grm_ablation_modules.md").read_text()
    prov = pd.read_csv(tmp_path / "grm_ablation_modules_provenance.csv")
    assert set(prov["result_file"]) == set(runs["result_file"]) and "text" in prov


def test_diagnostics_table_is_mean_and_std_over_seeds(cfg, tmp_path, monkeypatch):
    runs = frame([("grm", 0, 30.0), ("grm", 1, 31.0), ("grm_k10", 0, 25.0)])
    stub(monkeypatch, runs)
    assert "grm_diagnostics" in grm_tables(cfg, tmp_path, quiet=True)
    data = pd.read_csv(tmp_path / "grm_diagnostics.csv").set_index("method")
    assert data.loc["grm", "diag/region_cos_mean"] == pytest.approx(0.905)
    assert data.loc["grm", "diag/region_cos_std"] == pytest.approx(np.std([0.90, 0.91], ddof=1), abs=1e-4)
    assert data.loc["grm_k10", "seeds"] == 1
    md = (tmp_path / "grm_diagnostics.md").read_text()
    assert "cos(μk,μk')" in md and "0.905 ± 0.007" in md and "unc i2t@1 train" in md


def test_no_diagnostics_no_table(cfg, tmp_path, monkeypatch, capsys):
    stub(monkeypatch, frame([("grm", 0, 30.0)], diag=False))
    assert grm_tables(cfg, tmp_path, quiet=False) == []
    assert "grm_diagnostics table skipped" in capsys.readouterr().out and not list(tmp_path.iterdir())


def test_sweep_figures_plot_rsum_against_k_and_weights(cfg, tmp_path, monkeypatch):
    runs = frame([(m, s, 20.0 + i + s) for i, m in enumerate(["grm_k1", "grm", "grm_k10", "grm_w_50_50_0"])
                  for s in (0, 1)])
    stub(monkeypatch, runs)
    k = sweep_frame(cfg, runs, "num_prompts")
    assert sorted(set(k["x"])) == [1, 5, 10]
    w = sweep_frame(cfg, runs, "level_weights")
    assert list(dict.fromkeys(w["x"])) == ["0.5/0.5/0", "0.4/0.4/0.2"]  # the sweep list's order
    assert grm_figures(cfg, tmp_path, quiet=True) == ["grm_sweep_prompts.png", "grm_sweep_prompts.pdf",
                                                      "grm_sweep_weights.png", "grm_sweep_weights.pdf"]
    assert all((tmp_path / f).stat().st_size > 1000 for f in ("grm_sweep_prompts.png", "grm_sweep_weights.pdf"))


def test_runs_from_files_include_sweep_cells_and_diagnostics(cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files = {**cfg, "report": {**cfg["report"], "source": "files"}}
    block = {"i2t": {"R@1": 10.0, "R@5": 20.0, "R@10": 30.0}, "t2i": {"R@1": 5.0, "R@5": 15.0, "R@10": 25.0},
             "rsum": 105.0}
    for method, diag in (("grm", {"region_cos": 0.8}), ("grm_k3", {"region_cos": 0.7}), ("scan", None)):
        d = tmp_path / "results" / run_path("synthetic", BK, text_encoders(cfg)[0], method, 0)
        d.mkdir(parents=True)
        metrics = {**block, "protocol": "full", "protocols": {"full": block}, "split": "test",
                   "weights_source": "packaged", **({"diagnostics": diag} if diag else {})}
        (d / "metrics.json").write_text(json.dumps(metrics))
    runs = grm_runs(files).set_index("method")
    assert sorted(runs.index) == ["grm", "grm_k3"]  # grm_k3 only in `sweeps`; scan is no GRM
    assert runs.loc["grm_k3", "diag/region_cos"] == 0.7 and runs.loc["grm", "rsum"] == 105.0


def test_runs_from_mlflow_carry_the_logged_diagnostics(cfg, tmp_path, mlflow_store):
    from fga.evaluate.run import mlflow_metrics
    from fga.tracking import log_run

    store = {**cfg, "tracking": {"uri": mlflow_store, "artifact_root": str(tmp_path / "mlartifacts")}}
    block = {"i2t": {"R@1": 10.0, "R@5": 20.0, "R@10": 30.0}, "t2i": {"R@1": 5.0, "R@5": 15.0, "R@10": 25.0},
             "rsum": 105.0}
    for method, seed in (("grm", 0), ("grm_k3", 1), ("grm_no_rp", 7)):  # seed 7: in neither grid
        metrics = {"protocols": {"full": block}, "diagnostics": {"region_cos": 0.5 + seed}}
        log_run(store, {"dataset": "synthetic", "backbone": BK, "text": text_encoders(cfg)[0], "method": method,
                        "seed": seed, "stage": "evaluate"},
                metrics=mlflow_metrics(metrics), tags={"protocol": "full", "split": "test", "weights_source": "x"})
    runs = grm_runs(store).set_index("method")
    assert sorted(runs.index) == ["grm", "grm_k3"]
    assert runs.loc["grm_k3", "diag/region_cos"] == 1.5 and runs.loc["grm", "rsum"] == 105.0


def _dry_run(project: Path, *args: str) -> str:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([str(bin_dir / "snakemake"), "-n", "--cores", "1", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_grm_sweeps_is_its_own_snakemake_target(cfg, tmp_path):
    for name in ("Snakefile", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "workflow", tmp_path / "workflow")
    sweeps = _dry_run(tmp_path, "grm_sweeps")
    n_runs = len(sweep_cells(cfg))
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", sweeps, re.M))
    assert counts["train"] == counts["evaluate"] == str(n_runs) and counts["grm_sweeps"] == "1"
    k50 = run_path("synthetic", "lite0_grid", text_encoders(cfg)[0], "grm_k50", 2)
    assert "rule grm_sweeps:" in sweeps and f"results/{k50}/metrics.json" in sweeps
    default = _dry_run(tmp_path)
    assert "rule grm_sweeps:" not in default and "grm_sweeps" not in dict(re.findall(r"^(\w+)\s+(\d+)$", default, re.M))
    assert "/grm_k50/" not in default and "/grm_no_l_ori/" not in default
