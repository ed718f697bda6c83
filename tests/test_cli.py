"""The fga CLI's job timeline ($FGA_STARTUP_LOG): what each verb imports, when its start-up ends, and how
benchmarks/bench_workflow.py turns the log, Snakemake's benchmark files and its log into per-stage figures."""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from store_fixtures import write_random_project
from test_evaluate_run import tiny_cfg

ROOT = Path(__file__).resolve().parent.parent
DS, BK = "synthetic", "rand"
RUN_ARGS = ["--dataset", DS, "--backbone", BK, "--method", "grm", "--seed", "0", "--quiet"]
# packages a train/evaluate/robustness job must never load (feature extraction and the report only)
NEVER_IN_RUN_JOBS = {"timm", "seaborn", "matplotlib", "torchvision"}


def load_bench_workflow():
    """benchmarks/bench_workflow.py as a module (registered first: its dataclasses look their module up)."""
    if "bench_workflow" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_workflow", ROOT / "benchmarks" / "bench_workflow.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_workflow"] = module
        spec.loader.exec_module(module)
    return sys.modules["bench_workflow"]


def fga(args: list[str], cwd: Path, log: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FGA_STARTUP_LOG": str(log), "MLFLOW_DISABLE_TELEMETRY": "true",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "fga", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def tiny_project(root: Path) -> Path:
    """A tiny project with random features (one run's inputs) in `root`, its store beside it."""
    cfg = copy.deepcopy(tiny_cfg())
    cfg["grid"]["backbones"] = [BK]
    cfg["features"]["backbones"] = {BK: {"model": "none", "weights": "random", "regions": "grid", "grid_size": 2}}
    cfg["robustness"]["distractors"] = []
    cfg["tracking"]["uri"] = f"sqlite:///{root / 'mlruns.db'}"
    write_random_project(root, cfg, DS, BK, 4, 16, pad_every=2)
    (root / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root


@pytest.fixture(scope="module")
def run_jobs(tmp_path_factory):
    """train, evaluate and robustness of one run of a tiny project with random features, each its own process."""
    root = tiny_project(tmp_path_factory.mktemp("cliproj"))
    log = root / "startup.jsonl"
    for verb in ("train", "evaluate", "robustness"):
        out = fga([verb, *RUN_ARGS], root, log)
        assert out.returncode == 0, out.stderr[-3000:]
    out = fga(["evaluate", "--dataset", DS, "--backbone", "missing", "--method", "grm", "--seed", "0"], root, log)
    assert out.returncode == 2
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_run_jobs_import_only_what_they_use(run_jobs):
    assert [e["verb"] for e in run_jobs] == ["train", "evaluate", "robustness", "evaluate"]
    for entry in run_jobs[:3]:
        assert entry["status"] == 0 and entry["argv"][0] == entry["verb"]
        assert not NEVER_IN_RUN_JOBS & set(entry["packages_at_end"]), entry
        assert "mlflow" not in entry["packages_at_ready"]  # imported when the job logs, not at start-up
        assert "mlflow" in entry["packages_at_end"] and entry["tracking_s"] > 0
        assert entry["started"] < entry["ready"] < entry["ended"]
        assert entry["ready"] - entry["started"] < entry["ended"] - entry["started"] - entry["tracking_s"]
    assert run_jobs[3]["status"] == 2  # a user error is logged too, with its exit status


def test_deferred_run_jobs_never_import_mlflow_and_sync_logs_their_runs(tmp_path):
    """--defer-tracking (the workflow's jobs): each job keeps its run on disk without MLflow; `fga tracking sync`
    logs the three runs (and their group's parent) in one process."""
    import mlflow

    root = tiny_project(tmp_path)
    log = root / "startup.jsonl"
    for verb in ("train", "evaluate", "robustness"):
        out = fga([verb, *RUN_ARGS, "--defer-tracking"], root, log)
        assert out.returncode == 0 and out.stderr == "", out.stderr[-3000:]
    kept = sorted(p.name.rsplit(".", 2)[-2] for p in (root / "logs" / "tracking_pending").glob("*.json"))
    assert kept == ["evaluate", "robustness", "train"] and not (root / "mlruns.db").exists()
    out = fga(["tracking", "sync", "--quiet", "--defer-tracking"], root, log)  # the flag changes nothing for sync
    assert out.returncode == 0 and "3 kept runs logged" in out.stdout, out.stderr[-3000:]
    jobs = [json.loads(line) for line in log.read_text().splitlines()]
    for entry in jobs[:3]:
        assert entry["status"] == 0 and "mlflow" not in entry["packages_at_end"], entry
    assert "mlflow" in jobs[3]["packages_at_end"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlruns.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted(r.data.tags["stage"] for r in runs) == ["evaluate", "group", "robustness", "train"]
    assert not list((root / "logs" / "tracking_pending").glob("*.json"))


def test_every_verb_accepts_defer_tracking():
    from fga.cli import build_parser

    parser = build_parser()
    verbs = [["data", "prepare", "--dataset", DS], ["features", "extract", "--dataset", DS, "--backbone", BK],
             ["features", "text", "--dataset", DS], ["features", "text-encode", "--dataset", DS],
             ["train", *RUN_ARGS], ["evaluate", *RUN_ARGS], ["robustness", *RUN_ARGS],
             ["robustness", "distractors", "--n", "2"], ["report"], ["tracking", "sync"], ["dvc-record"]]
    for argv in verbs:
        assert parser.parse_args([*argv, "--defer-tracking"]).defer_tracking is True, argv
        assert parser.parse_args(argv).defer_tracking is False, argv


def test_bench_workflow_reads_the_cli_log(run_jobs, tmp_path):
    bench = load_bench_workflow()
    log = tmp_path / "startup.jsonl"
    log.write_text("".join(json.dumps(e) + "\n" for e in run_jobs) + '{"verb": "train", "start')  # a torn last line
    rows = bench.startup_stages(bench.read_startup_log(log))
    assert sorted(rows) == ["evaluate", "robustness", "train"]  # the failed evaluate is left out
    ev = rows["evaluate"]
    assert ev.jobs == 1 and ev.job_s == pytest.approx(run_jobs[1]["ended"] - run_jobs[1]["started"])
    assert 0 < ev.startup_share < 1 and ev.mean_startup_s == pytest.approx(run_jobs[1]["ready"] - run_jobs[1]["started"])
    assert "mlflow" in ev.heavy and "timm" not in ev.heavy


def test_process_start_time_is_when_the_process_began(tmp_path):
    code = ("import time; time.sleep(1.0); from fga.cli import process_start_time; "
            "print(repr(process_start_time()))")
    before = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    started = float(out.stdout)
    assert before - 0.05 <= started < before + 0.9  # the child's own start, not the moment it asked


def test_stage_of_maps_verbs_to_the_snakefile_benchmark_dirs():
    bench = load_bench_workflow()
    cases = {("data prepare", ()): "data", ("features extract", ()): "features", ("features text", ()): "features",
             ("robustness distractors", ("--n", "4")): "data",
             ("robustness distractors", ("--n", "4", "--backbone", "b")): "features",
             ("train", ()): "train", ("robustness", ()): "robustness", ("report", ()): "report"}
    for (verb, argv), stage in cases.items():
        assert bench.stage_of({"verb": verb, "argv": ["x", *argv]}) == stage, verb


SNAKEMAKE_LOG = """Assuming unrestricted shared filesystem usage.
host: box
Building DAG of jobs...
Using shell: /usr/bin/bash
Provided cores: 2
Rules claiming more threads will be scaled down.

[Mon Nov 30 14:11:58 2026]
localrule prepare_data:
[Mon Nov 30 14:12:10 2026]
Finished jobid: 3 (Rule: prepare_data)
1 of 2 steps (50%) done
[Mon Nov 30 14:13:08 2026]
Finished jobid: 0 (Rule: all)
2 of 2 steps (100%) done
"""


def test_bench_workflow_stages_wall_cores_and_efficiency(tmp_path):
    bench = load_bench_workflow()
    run = bench.parse_snakemake_log(SNAKEMAKE_LOG)
    assert run == bench.RunLog(wall_s=70.0, jobs=2, cores=2)
    assert bench.parse_snakemake_log(SNAKEMAKE_LOG.replace("(100%)", "(50%)")) is None  # an unfinished run
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for rel, s, rss in [("train/a/seed0.tsv", 20.0, "300"), ("train/a/seed1.tsv", 30.0, "-"),
                        ("data/synthetic.tsv", 10.0, "100"), ("report.tsv", 4.0, "50")]:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + f"{s}\t0:00:{int(s):02d}\t{rss}\t1\t1\t1\t0\t0\t50\t{s}\n")
    rows = bench.benchmark_stages(tmp_path)
    assert rows == [("train", 2, 50.0, 25.0, 300.0), ("data", 1, 10.0, 10.0, 100.0), ("report", 1, 4.0, 4.0, 50.0)]
    assert bench.scheduling_efficiency(64.0, 2, 40.0) == pytest.approx(0.8)
