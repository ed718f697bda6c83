"""End to end: the real Snakefile (and dvc repro) on a tiny config in a temp dir."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.e2e

TINY = {
    "grid.seeds": [0, 1],
    "grid.backbones": ["lite0_roi"],
    "grid.methods": ["vse_mean", "grm"],
    "data.synthetic.n_train": 24,
    "data.synthetic.n_val": 6,
    "data.synthetic.n_test": 8,
    "train.epochs": 2,
    "train.batch_size": 40,
    "features.batch_size": 16,
    "grid.ablation": {"backbones": ["lite0_roi"], "methods": ["grm_no_rp"]},
}


def tiny_project(tmp: Path) -> Path:
    """A copy of the workflow declarations with the tiny params; the fga package comes from the install."""
    # .dvcignore: the jobs write fga's bytecode (__pycache__/) into the copy, which dvc.yaml's fga/ dependencies
    # must not count as changed code
    for name in ("Snakefile", "dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, tmp / name)
    shutil.copytree(ROOT / "workflow", tmp / "workflow")
    shutil.copytree(ROOT / "fga", tmp / "fga", ignore=shutil.ignore_patterns("__pycache__"))
    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in TINY.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    (tmp / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return tmp


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def check_table_matches_metrics(project: Path) -> None:
    """Each table row is the mean over seeds of exactly the metrics.json files of its runs."""
    table = pd.read_csv(project / "reports/tables/main.csv")
    assert sorted(table["method"]) == ["grm", "vse_mean"] and (table["seeds"] == 2).all()
    for _, row in table.iterrows():
        files = sorted(project.glob(f"results/synthetic/lite0_roi/bigru/{row['method']}/seed*/metrics.json"))
        metrics = [json.loads(p.read_text()) for p in files]
        assert len(metrics) == 2
        for direction in ("i2t", "t2i"):
            for k in (1, 5, 10):
                expected = sum(m[direction][f"R@{k}"] for m in metrics) / 2
                assert row[f"{direction}_R{k}_mean"] == pytest.approx(expected, abs=1e-3)
        assert row["rsum_mean"] == pytest.approx(sum(m["rsum"] for m in metrics) / 2, abs=1e-3)
    md = (project / "reports/tables/main.md").read_text()
    assert "grm" in md and "±" in md
    assert "\\toprule" in (project / "reports/tables/main.tex").read_text()


def test_snakemake_end_to_end(tmp_path):
    project = tiny_project(tmp_path)
    dry = run([str(BIN / "snakemake"), "-n", "--cores", "1"], project)
    assert "train" in dry.stdout and "report" in dry.stdout
    run([str(BIN / "snakemake"), "--cores", "2"], project)
    for path in ["data/synthetic/dataset.json", "data/synthetic/instances.json", "features/synthetic/text_bigru/vocab.json",
                 "features/synthetic/lite0_roi/test.h5", "runs/synthetic/lite0_roi/bigru/vse_mean/seed1/checkpoint.safetensors",
                 "mlruns.db", "reports/tables/main.md", "reports/tables/main.tex"]:
        assert (project / path).exists(), path
    check_table_matches_metrics(project)
    # the grid's ablation variant ran on every seed and fills the ablation table (not the main one)
    ablation = pd.read_csv(project / "reports/tables/ablation.csv")
    assert list(ablation["method"]) == ["grm", "grm_no_rp"] and (ablation["seeds"] == 2).all()
    assert (project / "results/synthetic/lite0_roi/bigru/grm_no_rp/seed1/metrics.json").exists()
    assert not (project / "results/synthetic/lite0_roi/bigru/grm_no_rp/seed1/robustness.json").exists()
    # GRM's region-word maps: written by evaluate, drawn by the report
    assert json.loads((project / "results/synthetic/lite0_roi/bigru/grm/seed0/attention.json").read_text())["maps"]
    assert list((project / "reports/figures").glob("attention_synthetic_lite0_roi_grm_*.png"))
    again = run([str(BIN / "snakemake"), "--cores", "2"], project)
    assert "Nothing to be done" in again.stdout + again.stderr
    # re-running a stage replaces its MLflow run instead of adding one
    run([str(BIN / "snakemake"), "--cores", "2", "--forcerun", "evaluate"], project)
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns.db'}")
    runs = mlflow.search_runs(experiment_names=["fga-synthetic"], filter_string="tags.stage = 'evaluate'")
    assert len(runs) == 6  # 2 seeds x (2 methods + 1 ablation variant)
    check_table_matches_metrics(project)


def test_dvc_repro_end_to_end(tmp_path):
    project = tiny_project(tmp_path)
    run(["git", "init", "-q"], project)
    run([str(BIN / "dvc"), "init", "-q"], project)
    run([str(BIN / "dvc"), "repro", "--quiet"], project)
    check_table_matches_metrics(project)
    status = run([str(BIN / "dvc"), "status"], project)
    assert "up to date" in status.stdout.lower()
