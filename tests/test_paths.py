"""fga.paths: the default experiment keeps the historical layout, another one writes beside it."""
from __future__ import annotations

from pathlib import Path

from fga.paths import compare_dir, output_roots, shared_sections_problem

REPORT = {"tables_dir": "reports/tables", "figures_dir": "reports/figures"}


def test_default_experiment_keeps_every_path():
    for cfg in ({"report": REPORT}, {"report": REPORT, "experiment": "default"}):
        assert output_roots(cfg) == ("runs", "results", "logs", "benchmarks/logs", "reports/tables", "reports/figures")


def test_other_experiment_writes_beside_the_default():
    roots = output_roots({"report": REPORT, "experiment": "k8"})
    assert roots.runs == "experiments/k8/runs" and roots.results == "experiments/k8/results"
    assert roots.logs == "experiments/k8/logs" and roots.benchmarks == "experiments/k8/benchmarks/logs"
    assert (roots.tables, roots.figures) == ("reports/k8/tables", "reports/k8/figures")


def test_explicit_report_dirs_are_kept():
    cfg = {"report": {"tables_dir": "out/t", "figures_dir": "reports/figures"}, "experiment": "k8"}
    assert (output_roots(cfg).tables, output_roots(cfg).figures) == ("out/t", "reports/k8/figures")
    assert compare_dir(cfg) == Path("out/compare") and compare_dir({"report": REPORT}) == Path("reports/compare")


def test_an_experiment_may_not_change_the_shared_sections():
    base = {"data": {"synthetic": {"n_train": 24}}, "features": {"batch_size": 16}, "methods": {"grm": {}}}
    k8 = {**base, "experiment": "k8", "methods": {"grm": {"num_prompts": 8}}}
    assert shared_sections_problem(k8, base, "params.yaml") is None
    changed = {**k8, "features": {"batch_size": 8}}
    problem = shared_sections_problem(changed, base, "params.yaml")
    assert problem is not None and "`features`" in problem and "params.yaml" in problem
    assert shared_sections_problem({**changed, "experiment": "default"}, base, "params.yaml") is None
    reseeded = {**k8, "robustness": {"distractor_seed": 1}}
    assert "`robustness.distractor_seed`" in shared_sections_problem(reseeded, base, "params.yaml")
