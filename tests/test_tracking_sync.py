"""fga.tracking_sync: deferred runs (--defer-tracking) are kept without MLflow and synced into exactly what
immediate logging leaves; the Snakefile's onsuccess/onerror handlers sync them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fga.tracking import KEY_TAGS, PARENT_TAG, PROJECT_ROOT_TAG, experiment_name, log_run
from fga.tracking_sync import keep, log_or_keep, log_train_run, pending, sync

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"grm": {"embed_dim": 8}, "grm_no_sa": {"arch": "grm", "use_saliency": False}}


def make_cfg(tmp: Path, uri: str) -> dict:
    # logs: this test's own root (fga.paths reads `experiment`; the default experiment's logs/ is cwd-relative)
    return {"tracking": {"uri": uri, "artifact_root": str(tmp / "mlartifacts"), "log_checkpoints": True},
            "methods": METHODS}


def key(method: str, seed: int, stage: str) -> dict:
    # `text` is ignored while fga.tracking's KEY_TAGS lack it
    return {"dataset": "synthetic", "backbone": "lite0_roi", "text": "bigru", "method": method, "seed": seed,
            "stage": stage}


def job_files(tmp: Path, method: str, seed: int) -> dict[str, Path]:
    """A run's result files, as train/evaluate/robustness jobs leave them."""
    out = tmp / "results" / method / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    files = {name: out / name for name in ("metrics.json", "ranks.npz", "robustness.json", "checkpoint.safetensors")}
    for i, path in enumerate(files.values()):
        path.write_bytes(f"{method} {seed} {i}".encode() * 50)
    return files


def log_grid(cfg: dict, tmp: Path, defer: bool) -> None:
    """A tiny grid's runs as the CLI logs them: train (history, checkpoint), evaluate (headline metrics -> seed
    aggregates, artifacts), robustness; two groups (a base method and an ablation variant), two seeds."""
    for method in METHODS:
        for seed in (0, 1):
            files = job_files(tmp, method, seed)
            rsum = 100.0 + 10 * seed + (5 if method == "grm" else 0)
            tags = {"data_hash": "d0", "params_hash": f"{method}{seed}"}
            meta = {"history": [{"epoch": 0, "loss": 1.5, "val_rsum": rsum - 1},
                                {"epoch": 1, "loss": 0.5, "val_rsum": rsum}], "best": {"rsum": rsum, "epoch": 1}}
            log_train_run(cfg, key(method, seed, "train"), meta, files["checkpoint.safetensors"], tags=tags, defer=defer)
            log_or_keep(cfg, key(method, seed, "evaluate"), defer=defer, params={"evaluate": {"split": "test"}},
                        metrics={"full/rsum": rsum, "full/i2t_R1": rsum / 10, "full/ci/rsum_lo": rsum - 3},
                        tags={**tags, "protocol": "full", "split": "test"},
                        artifacts=[files["metrics.json"], (files["ranks.npz"], "ranks")])
            if method == "grm":
                log_or_keep(cfg, key(method, seed, "robustness"), defer=defer, params={"robustness": {"bins": [1, 2]}},
                            metrics={"clutter/low": rsum / 3}, tags={**tags, "split": "test"},
                            artifacts=[files["robustness.json"]])


def contents(cfg: dict) -> list[dict]:
    """What the store holds for the grid, without ids and times: each active run's name, status, tags (the parent
    as its name), params, metrics, step histories (children), artifacts (path and bytes) and dataset inputs."""
    import mlflow
    from mlflow.artifacts import download_artifacts

    client = mlflow.MlflowClient(tracking_uri=cfg["tracking"]["uri"])
    exp = client.get_experiment_by_name(experiment_name("synthetic"))
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    names = {r.info.run_id: r.info.run_name for r in runs}
    out = []
    for run in runs:
        tags = {k: v for k, v in run.data.tags.items() if k != "mlflow.runName"}
        if PARENT_TAG in tags:
            tags[PARENT_TAG] = names[tags[PARENT_TAG]]
        is_parent = tags["stage"] == "group"
        histories = {} if is_parent else {  # a parent's aggregates are re-logged per seed run when immediate
            m: [(h.step, h.value) for h in client.get_metric_history(run.info.run_id, m)] for m in run.data.metrics}
        dst = Path(cfg["tracking"]["artifact_root"]).parent / "dl" / run.info.run_id
        local = Path(download_artifacts(run_id=run.info.run_id, tracking_uri=cfg["tracking"]["uri"], dst_path=str(dst)))
        artifacts = {str(p.relative_to(local)): p.read_bytes() for p in sorted(local.rglob("*")) if p.is_file()}
        inputs = [(i.dataset.name, i.dataset.digest, sorted((t.key, t.value) for t in i.tags))
                  for i in run.inputs.dataset_inputs]
        out.append({"name": run.info.run_name, "status": run.info.status, "tags": tags, "params": run.data.params,
                    "metrics": run.data.metrics, "histories": histories, "artifacts": artifacts, "inputs": inputs})
    exp_tags = {k: v for k, v in exp.tags.items() if k != PROJECT_ROOT_TAG}  # each store's own working dir
    return [{"experiment": exp_tags}] + sorted(out, key=lambda r: (r["name"], r["tags"]["stage"]))


def run_of(store: list[dict], method: str, stage: str, seed: int | None = None) -> dict:
    """The one run of the store's contents with these tags (names also carry the caption encoder)."""
    (run,) = [r for r in store[1:] if r["tags"]["method"] == method and r["tags"]["stage"] == stage
              and (seed is None or r["tags"]["seed"] == str(seed))]
    return run


def test_deferred_then_synced_equals_immediate(tmp_path, monkeypatch, _empty_store_template):
    stores = {}
    for mode in ("immediate", "deferred"):
        work = tmp_path / mode
        work.mkdir()
        monkeypatch.chdir(work)  # the default experiment's logs/ (pending records) is cwd-relative
        (work / "mlruns.db").write_bytes(_empty_store_template.read_bytes())
        cfg = make_cfg(work, f"sqlite:///{work / 'mlruns.db'}")
        log_grid(cfg, work, defer=mode == "deferred")
        if mode == "deferred":
            assert len(pending(cfg)) == 10 and not (work / "mlartifacts").exists()  # nothing logged yet
            assert sync(cfg, quiet=True) == 10 and pending(cfg) == []
        else:
            assert pending(cfg) == []
        stores[mode] = contents(cfg)
    immediate, deferred = stores["immediate"], stores["deferred"]
    assert len(immediate) == 1 + 10 + 2  # the experiment, 10 runs, 2 parents
    parents = [r for r in immediate[1:] if r["tags"]["stage"] == "group"]
    assert {p["metrics"]["n_seeds"] for p in parents} == {2.0} and all("full/rsum_mean" in p["metrics"] for p in parents)
    assert {r["tags"]["variant"] for r in immediate[1:] if r["tags"]["method"] == "grm_no_sa"} == {"grm"}
    assert any("checkpoint/checkpoint.safetensors" in r["artifacts"] for r in immediate[1:])
    for a, b in zip(immediate, deferred, strict=True):
        assert a == b


def test_sync_is_idempotent_and_a_rekept_key_replaces_its_run(tmp_path, monkeypatch, mlflow_store):
    monkeypatch.chdir(tmp_path)
    cfg = make_cfg(tmp_path, mlflow_store)
    log_grid(cfg, tmp_path, defer=True)
    assert sync(cfg, quiet=True) == 10
    first = contents(cfg)
    assert sync(cfg, quiet=True) == 0 and contents(cfg) == first
    # the same job again (a rerun): kept again, synced again -> still one run per key, with the new values
    keep(cfg, key("grm", 0, "evaluate"), metrics={"full/rsum": 1.0}, tags={"data_hash": "d0", "protocol": "full"})
    assert sync(cfg, quiet=True) == 1
    again = contents(cfg)
    assert len(again) == len(first)
    assert run_of(again, "grm", "evaluate", 0)["metrics"] == {"full/rsum": 1.0}
    assert run_of(again, "grm", "group")["metrics"]["full/rsum_mean"] == pytest.approx((1.0 + 115.0) / 2)  # aggregates settled


def test_a_record_keeps_the_jobs_source_tags_and_variant(tmp_path, monkeypatch, mlflow_store):
    monkeypatch.chdir(tmp_path)
    cfg = make_cfg(tmp_path, mlflow_store)
    keep(cfg, key("grm_no_sa", 0, "evaluate"), metrics={"full/rsum": 3.0}, tags={"split": "test"})
    (path,) = pending(cfg)
    record = json.loads(path.read_text())
    assert record["key"] == {k: v for k, v in key("grm_no_sa", 0, "evaluate").items() if k in KEY_TAGS}
    record["log_run"]["tags"]["git_commit"] = "job-commit"  # the checkout moved on between the job and the sync
    path.write_text(json.dumps(record))
    sync(cfg, quiet=True)
    run = run_of(contents(cfg), "grm_no_sa", "evaluate", 0)
    assert run["tags"]["git_commit"] == "job-commit" and run["tags"]["variant"] == "grm"
    assert run["tags"]["split"] == "test" and run["tags"]["mlflow.source.name"] == "fga evaluate"


def test_a_record_rewritten_while_syncing_stays_kept(tmp_path, monkeypatch, mlflow_store):
    """A job that keeps its key again while a sync logs the older record: the newer record is not deleted."""
    import fga.tracking_sync as tracking_sync

    monkeypatch.chdir(tmp_path)
    cfg = make_cfg(tmp_path, mlflow_store)
    keep(cfg, key("grm", 0, "evaluate"), metrics={"full/rsum": 1.0})

    def log_and_rerun(*args, **kwargs):
        run_id = log_run(*args, **kwargs)
        keep(cfg, key("grm", 0, "evaluate"), metrics={"full/rsum": 2.0})  # the rerun's record
        return run_id

    monkeypatch.setattr(tracking_sync, "log_run", log_and_rerun)
    assert sync(cfg, quiet=True) == 1
    (path,) = pending(cfg)
    assert json.loads(path.read_text())["log_run"]["metrics"] == {"full/rsum": 2.0}


SUBPROCESS = r"""
import json, sys
from pathlib import Path
from fga.tracking_sync import kept_records, log_or_keep, pending, sync
cfg = {"tracking": {"uri": sys.argv[1], "artifact_root": "mlartifacts"}, "methods": {}}
logged = sync(cfg, quiet=True)  # nothing pending: a directory listing
assert logged == 0 and not kept_records("logs")
assert log_or_keep(cfg, json.loads(sys.argv[2]), defer=True, metrics={"full/rsum": 1.0}, artifacts=[Path("m.json")]) is None
print(json.dumps({"mlflow": sorted(m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")),
                  "kept": [p.name for p in pending(cfg)], "has_kept": bool(kept_records("logs"))}))
"""


def test_a_deferred_job_and_an_empty_sync_never_import_mlflow(tmp_path):
    # a server that does not exist: a deferred job must not even ask it for its health
    job_key = key("vse_inf", 0, "evaluate")
    out = subprocess.run([sys.executable, "-c", SUBPROCESS, "http://127.0.0.1:9", json.dumps(job_key)], cwd=tmp_path,
                         capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stderr == ""  # silent: no "unreachable" line
    found = json.loads(out.stdout)
    assert found["mlflow"] == []
    assert found["kept"] == [".".join(str(job_key[k]) for k in KEY_TAGS) + ".json"]
    assert found["has_kept"]


def test_importing_tracking_does_not_import_mlflow():
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import fga.tracking_sync, fga.tracking"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert "fga.tracking" in imported and not any(m == "mlflow" or m.startswith("mlflow.") for m in imported)


def test_immediate_logging_is_unchanged_and_clears_a_superseded_record(tmp_path, monkeypatch, mlflow_store):
    monkeypatch.chdir(tmp_path)
    cfg = make_cfg(tmp_path, mlflow_store)
    keep(cfg, key("grm", 0, "evaluate"), metrics={"full/rsum": 1.0})
    assert log_or_keep(cfg, key("grm", 0, "evaluate"), metrics={"full/rsum": 2.0})  # a run id
    assert pending(cfg) == [] and sync(cfg) == 0


# ---- the Snakefile's handlers, on a toy workflow (test_snakefile_onsuccess.py's) ----------------------------

def toy_with_handlers(tmp: Path, failing: bool = False) -> Path:
    import re

    from test_snakefile_onsuccess import TOY_RULES

    snakefile = (ROOT / "Snakefile").read_text()
    handlers = "".join(re.search(rf"^{name}:\n(?:(?:[ \t]+.*)?\n)*", snakefile, re.M).group(0) + "\n\n"
                       for name in ("onsuccess", "onerror"))
    rules = TOY_RULES.replace('"echo 1 > {output}"', '"exit 1"') if failing else TOY_RULES
    (tmp / "Snakefile").write_text(rules + handlers)
    return tmp


def snakemake_run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(bin_dir / "snakemake"), "--cores", "1", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)


def synced(workdir: Path) -> int:
    log = workdir / "recorded.log"
    return sum("tracking sync" in line for line in log.read_text().splitlines()) if log.exists() else 0


def test_the_workflow_syncs_kept_runs_at_its_end_only_when_there_are_some(tmp_path):
    toy = toy_with_handlers(tmp_path)
    assert snakemake_run(toy, "-n").returncode == 0
    assert synced(toy) == 0  # a dry run runs no handler
    assert snakemake_run(toy, "report").returncode == 0
    assert synced(toy) == 0  # nothing kept: no `fga tracking sync` process
    (toy / "logs" / "tracking_pending").mkdir(parents=True)
    (toy / "logs" / "tracking_pending" / "x.json").write_text("{}")
    assert snakemake_run(toy, "--forcerun", "report").returncode == 0
    lines = (toy / "recorded.log").read_text().splitlines()
    assert [line.split()[1] for line in lines] == ["tracking", "dvc-record"]  # the sync first, then the record


def test_a_failed_workflow_still_syncs_the_finished_jobs_runs(tmp_path):
    toy = toy_with_handlers(tmp_path, failing=True)
    (toy / "logs" / "tracking_pending").mkdir(parents=True)
    (toy / "logs" / "tracking_pending" / "x.json").write_text("{}")
    assert snakemake_run(toy).returncode != 0
    assert synced(toy) == 1
