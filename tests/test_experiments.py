"""End to end: a second experiment (an overlay changing GRM's K) runs beside the default with the real Snakefile,
overwrites none of the default's outputs, and both land in MLflow, in their own report dirs and in a comparison."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import BIN, tiny_params
from test_workflow import run, tiny_project

pytestmark = pytest.mark.e2e

# one method, one seed, no ablation variants, no distractor levels: the shortest grid that reaches the report
SHORT = {"grid.methods": ["grm"], "grid.seeds": [0], "grid.ablation": {"backbones": [], "methods": []},
         "robustness.distractors": []}
K8 = {"experiment": "k8", "methods": {"grm": {"num_prompts": 8}}}


def snapshot(project: Path, pattern: str) -> dict[str, bytes]:
    return {str(p.relative_to(project)): p.read_bytes() for p in sorted(project.glob(pattern))}


def test_a_second_experiment_runs_beside_the_default(tmp_path):
    project = tiny_params(tiny_project(tmp_path), SHORT)
    default_k = yaml.safe_load((project / "params.yaml").read_text())["methods"]["grm"]["num_prompts"]
    assert default_k != K8["methods"]["grm"]["num_prompts"]
    run([str(BIN / "snakemake"), "--cores", "2"], project)
    metrics = snapshot(project, "results/**/metrics.json")
    assert list(metrics) == ["results/synthetic/lite0_roi/bigru/grm/seed0/metrics.json"]
    kept = {**metrics, **snapshot(project, "runs/**/checkpoint.safetensors"), **snapshot(project, "reports/tables/*")}
    features = {p: p.stat().st_mtime_ns for p in project.glob("features/**/*.h5")}

    (project / "k8.yaml").write_text(yaml.safe_dump(K8))
    run([str(BIN / "snakemake"), "--cores", "2", "--configfile", "k8.yaml"], project)
    k8 = "experiments/k8/results/synthetic/lite0_roi/bigru/grm/seed0"
    for path in [f"{k8}/metrics.json", f"{k8}/robustness.json",
                 "experiments/k8/runs/synthetic/lite0_roi/bigru/grm/seed0/checkpoint.safetensors",
                 "reports/k8/tables/main.csv", "reports/k8/figures"]:
        assert (project / path).exists(), path
    # nothing of the default's was rewritten, and the shared features were not rebuilt
    assert {p: (project / p).read_bytes() for p in kept} == kept
    assert {p: p.stat().st_mtime_ns for p in project.glob("features/**/*.h5")} == features
    assert (project / f"{k8}/metrics.json").read_bytes() != metrics[next(iter(metrics))]
    dry = run([str(BIN / "snakemake"), "-n", "--cores", "1"], project)
    assert "Nothing to be done" in dry.stdout + dry.stderr  # the default is still complete and current

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns.db'}")
    for name in ("fga-synthetic", "fga-synthetic-k8"):
        exp = client.get_experiment_by_name(name)
        assert exp is not None, name
        assert len(client.search_runs([exp.experiment_id], "tags.stage = 'evaluate'")) == 1, name

    run([sys.executable, "-m", "fga", "report", "--compare", "default,k8", "--quiet"], project)
    table = pd.read_csv(project / "reports/compare/compare_default_vs_k8.csv")
    assert list(zip(table["experiment"], table["method"])) == [("default", "grm"), ("k8", "grm")]
    delta = table.set_index("experiment")["delta_rsum"]
    assert pd.isna(delta["default"])
    assert delta["k8"] == pytest.approx(table.set_index("experiment")["rsum_mean"].diff()["k8"], abs=1e-3)
    assert "| Experiment |" in (project / "reports/compare/compare_default_vs_k8.md").read_text()
