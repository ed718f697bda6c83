"""benchmarks/bench_convergence.py: the plateau rule and the table on synthetic histories, and one tiny real bench."""
from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_convergence as bc  # noqa: E402
from bench_convergence import Job, PlateauRule, build_rows, plateau_epoch, seed_curves, summarize  # noqa: E402

CFG = {"methods": {"grm": {}, "scan": {}, "grm_no_rp": {"arch": "grm", "use_region_prompt": False}}}


def history(values: list[float]) -> list[dict]:
    return [{"epoch": e, "val_rsum": v, "seconds": 2.0} for e, v in enumerate(values)]


# ----------------------------------------------------------------------------------------- the rule


def test_plateau_is_the_first_epoch_whose_next_window_gains_at_most_the_tolerance():
    mean = [100, 150, 180, 190, 192, 193, 194, 194]
    # after epoch index 3: 190 -> 194 (+4) over the next 3 epochs; after index 4: 192 -> 194 (+2)
    assert plateau_epoch(mean, [0] * 8, PlateauRule(window=3, margin=3.0)) == 4
    assert plateau_epoch(mean, [0] * 8, PlateauRule(window=3, margin=4.0)) == 3
    assert plateau_epoch(mean, [0] * 8, PlateauRule(window=1, margin=3.0)) == 3  # 190 -> 192


def test_plateau_needs_a_full_window_after_it():
    mean = [100, 150, 180, 190, 192, 193, 194, 194]
    assert plateau_epoch(mean[:7], [0] * 7, PlateauRule(window=3, margin=3.0)) is None  # epoch 4 has 2 after it
    assert plateau_epoch([1.0, 1.0, 1.0], [0.0] * 3, PlateauRule(window=3)) is None


def test_a_climbing_curve_never_plateaus():
    mean = [10.0 * e for e in range(20)]
    assert plateau_epoch(mean, [0.0] * 20, PlateauRule(window=3, margin=3.0)) is None


def test_std_factor_widens_the_tolerance_to_the_seed_spread():
    mean = [100, 120, 140, 160, 180, 200]
    std = [30.0] * 6
    assert plateau_epoch(mean, std, PlateauRule(window=2, margin=3.0)) is None
    assert plateau_epoch(mean, std, PlateauRule(window=2, margin=3.0, std_factor=1.0)) is None  # +40 > 30
    assert plateau_epoch(mean, std, PlateauRule(window=2, margin=3.0, std_factor=2.0)) == 0  # +40 <= 60


def test_the_rule_reads_the_best_of_the_window_not_its_last_epoch():
    assert plateau_epoch([100, 110, 101, 101, 101], [0] * 5, PlateauRule(window=3, margin=3.0)) == 1
    assert plateau_epoch([100, 101, 110, 101, 101, 101], [0] * 6, PlateauRule(window=3, margin=3.0)) == 2


def test_seed_curves_are_best_so_far_and_cut_to_the_shortest_run():
    curves = seed_curves([history([10, 30, 20, 40]), history([5, 4, 6])])
    assert curves.tolist() == [[10, 30, 30], [5, 5, 6]]


# ---------------------------------------------------------------------------------------- the table


def results_for(curves: dict[str, list[list[float]]], tests: dict[str, list[float]] | None = None) -> dict:
    return {Job("synthetic", "roi", m, s): {"history": history(v), "test_rsum": (tests or {}).get(m, [None] * 9)[s]}
            for m, runs in curves.items() for s, v in enumerate(runs)}


FLAT = [100, 200, 250, 260, 261, 262, 262, 262]


def test_summary_of_one_method():
    row = summarize([{"history": history(FLAT)}, {"history": history([v + 10 for v in FLAT])}], budget=2,
                    rule=PlateauRule(window=3, margin=3.0))
    assert row["plateau_reached"] and row["plateau_epochs"] == 4  # epoch index 3 (260 -> 262)
    assert row["best_mean"] == pytest.approx(267.0) and row["best_std"] == pytest.approx(7.0711, abs=1e-3)
    assert row["budget_mean"] == pytest.approx(205.0)  # after 2 epochs
    assert row["plateau_mean"] == pytest.approx(265.0)
    assert row["share_pct"] == pytest.approx(100 * 205 / 265)
    assert row["sec_per_epoch"] == pytest.approx(2.0) and row["test_mean"] is None


def test_not_reached_uses_the_last_epoch_as_a_lower_bound():
    row = summarize([{"history": history([10.0 * e for e in range(6)])}], budget=2, rule=PlateauRule())
    assert not row["plateau_reached"] and row["plateau_epochs"] is None
    assert row["plateau_mean"] == 50.0 and row["share_pct"] == pytest.approx(20.0) and row["best_std"] == 0.0
    assert all(type(v) in (int, float, bool, type(None)) for v in row.values())  # plain values for csv/json


def test_budget_beyond_the_runs_leaves_it_empty():
    row = summarize([{"history": history(FLAT[:2])}], budget=4, rule=PlateauRule())
    assert row["budget_mean"] is None and row["share_pct"] is None


def test_leads_and_ablation_deltas():
    results = results_for({"grm": [FLAT, FLAT], "scan": [[50, 60, 100, 140, 150, 151, 151, 151]] * 2,
                           "grm_no_rp": [[v - 20 for v in FLAT]] * 2},
                          tests={"grm": [300.0, 310.0], "scan": [150.0, 150.0], "grm_no_rp": [250.0, 250.0]})
    rows = build_rows(results, CFG, ["roi"], ["grm", "scan", "grm_no_rp"], budget=2, rule=PlateauRule(margin=3.0))
    by = {r["method"]: r for r in rows}
    assert [r["method"] for r in rows] == ["grm", "scan", "grm_no_rp"]
    assert by["scan"]["grm_lead_budget"] == pytest.approx(200 - 60)
    assert by["scan"]["plateau_epochs"] == 5 and by["grm"]["plateau_epochs"] == 4
    assert by["scan"]["grm_lead_plateau"] == pytest.approx(260 - 150)  # each at its own plateau
    assert by["scan"]["delta_vs_grm_plateau"] is None
    assert by["grm_no_rp"]["delta_vs_grm_plateau"] == pytest.approx(-20.0)
    assert by["grm_no_rp"]["grm_lead_budget"] is None
    assert by["grm"]["grm_lead_budget"] is None and by["grm"]["delta_vs_grm_plateau"] is None
    assert by["grm"]["test_mean"] == pytest.approx(305.0)


def test_markdown_and_csv_show_the_rows():
    results = results_for({"grm": [FLAT], "scan": [[10.0 * e for e in range(8)]]})
    rows = build_rows(results, CFG, ["roi"], ["grm", "scan"], budget=2, rule=PlateauRule())
    md = bc.markdown_table(rows).splitlines()
    assert md[0].startswith("| Backbone | Method |") and len(md) == 4
    grm, scan = md[2].split(" | "), md[3].split(" | ")
    assert grm[3] == "4" and grm[6] == "76.9"  # 200 / 260
    assert scan[3] == "not reached (> 8)" and scan[6] == "≤ 14.3" and scan[7].endswith("*")  # 10 / 70
    assert scan[8] == "+190.0" and scan[9] == "+190.0*"  # 260 - 70, a lower bound of scan's plateau
    table = list(csv.DictReader(io.StringIO(bc.csv_text(rows))))
    assert [r["method"] for r in table] == ["grm", "scan"]
    assert table[1]["plateau_epochs"] == "" and table[1]["plateau_reached"] == "False"
    assert float(table[1]["grm_lead_budget"]) == pytest.approx(190.0)


def test_jobs_pair_the_grid_methods_with_its_backbones_and_the_ablations_with_theirs():
    cfg = {"grid": {"backbones": ["grid", "roi"], "methods": ["grm", "scan"], "seeds": [0, 1],
                    "ablation": {"backbones": ["roi"], "methods": ["grm_no_sa", "grm"]}}}
    args = bc.parse_args([])
    pairs = [(j.backbone, j.method, j.seed) for j in bc.job_list(cfg, "synthetic", args)]
    assert pairs == [("grid", "grm", 0), ("grid", "grm", 1), ("grid", "scan", 0), ("grid", "scan", 1),
                     ("roi", "grm", 0), ("roi", "grm", 1), ("roi", "scan", 0), ("roi", "scan", 1),
                     ("roi", "grm_no_sa", 0), ("roi", "grm_no_sa", 1)]  # roi/grm once
    args = bc.parse_args(["--methods", "scan", "--ablation-backbones", "grid", "--seeds", "3"])
    assert [(j.backbone, j.method) for j in bc.job_list(cfg, "synthetic", args)] == [
        ("grid", "scan"), ("roi", "scan"), ("grid", "grm_no_sa"), ("grid", "grm")]


def test_missing_inputs_name_the_snakemake_targets(tmp_path, monkeypatch):
    from test_workflow import tiny_project

    monkeypatch.chdir(tmp_path)  # main() changes into the project; this restores the cwd afterwards
    project = tiny_project(tmp_path)
    with pytest.raises(SystemExit, match=r"missing data/synthetic/dataset.json, .*snakemake --cores all"):
        bc.main(["--project", str(project), "--out", str(tmp_path / "out")])


# --------------------------------------------------------------------------------- one tiny real bench


@pytest.fixture
def tiny_bench_project(tmp_path, monkeypatch):
    """conftest's tiny params (test_workflow.TINY + TINIER) with random lite0_roi features (no CNN)."""
    from conftest import tiny_params
    from store_fixtures import write_random_project
    from test_workflow import tiny_project

    from fga.config import load_params

    (tmp_path / "project").mkdir()
    project = tiny_params(tiny_project(tmp_path / "project"))
    monkeypatch.chdir(project)
    write_random_project(project, load_params(project / "params.yaml"), "synthetic", "lite0_roi", 4, 16, pad_every=2)
    return project


def test_tiny_bench_end_to_end_resumes_and_matches_the_default_budget(tiny_bench_project, tmp_path, monkeypatch,
                                                                      capsys):
    out = tmp_path / "convergence"
    argv = ["--project", str(tiny_bench_project), "--out", str(out), "--methods", "grm", "--backbones", "lite0_roi",
            "--seeds", "0", "1", "--no-ablations", "--max-epochs", "3", "--plateau-window", "1", "--plateau-margin", "1000"]
    assert bc.main([*argv, "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "machine: " in printed and "2 runs x 3 epochs" in printed and "wall time" in printed
    assert "MLflow: 2 run(s) logged, 2 read back; figure " in printed and (out / "learning_curves.png").exists()
    table = list(csv.DictReader((out / "convergence.csv").open()))
    assert len(table) == 1 and table[0]["method"] == "grm" and table[0]["seeds"] == "2"
    assert table[0]["epochs_run"] == "3" and table[0]["plateau_epochs"] == "1"  # any gain <= 1000
    assert table[0]["test_mean"] != "" and table[0]["budget_epochs"] == "2"
    assert "| lite0_roi | grm | 2 | 1 |" in (out / "convergence.md").read_text()
    assert len(list(csv.DictReader((out / "curves.csv").open()))) == 3
    seed0 = out / "runs/synthetic/lite0_roi/grm/seed0"
    assert (seed0 / "checkpoint.safetensors").exists() and not (seed0 / "last.pt").exists()
    assert "epoch 2: val_rsum=" in (seed0 / "train.log").read_text()

    # the first 2 epochs of the 3-epoch run are the default 2-epoch run's (the budget column's premise)
    from fga.config import load_params
    from fga.io import read_json
    from fga.train import train

    cfg = load_params(tiny_bench_project / "params.yaml")
    short = train(cfg, "synthetic", "lite0_roi", "grm", 0, tmp_path / "short", quiet=True)["history"]
    long_ = read_json(seed0 / "result.json")["history"]
    assert [r["val_rsum"] for r in short] == [r["val_rsum"] for r in long_[:2]]

    # a rerun trains nothing: the recorded results are read back
    monkeypatch.setattr(bc, "train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    before = (out / "convergence.csv").read_text()
    assert bc.main(argv) == 0
    printed = capsys.readouterr().out
    assert "2 of 2 runs already recorded" in printed and "MLflow: 0 run(s) logged, 2 read back" in printed
    assert (out / "convergence.csv").read_text() == before

    # the table MLflow gives is the one the result files give; the runs sit in the bench's own experiment
    from fga.tracking import runs_frame

    assert bc.main([*argv, "--no-tracking"]) == 0
    assert (out / "convergence.csv").read_text() == before
    cfg = load_params(tiny_bench_project / "params.yaml")
    assert runs_frame(cfg, ["synthetic"], "train").empty  # nothing in the default experiment
    runs = runs_frame({**cfg, "experiment": "convergence"}, ["synthetic"], "train")
    assert sorted(runs["tags.seed"]) == ["0", "1"] and set(runs["tags.method"]) == {"grm"}
    assert runs["metrics.test_rsum"].notna().all()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_stop_when_the_bench_process_is_killed(tmp_path):
    """The bench's pool workers get SIGTERM when their parent dies instead of training on as orphans."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, time
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context
        sys.path.insert(0, {str(ROOT / "benchmarks")!r})
        import bench_convergence as bc
        if __name__ == "__main__":
            pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=bc.die_with_parent)
            print(pool.submit(os.getpid).result(), flush=True)
            pool.submit(time.sleep, 120)
            time.sleep(0.5)
            os.kill(os.getpid(), 9)
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    worker = int(done.stdout.split()[0])
    for _ in range(100):  # the kernel signals at once; the worker needs a moment to exit
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(worker, 9)
    pytest.fail(f"worker {worker} outlived its killed parent")
