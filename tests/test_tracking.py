"""fga.tracking: parent/child runs, variant tags, artifacts, idempotent re-logging, concurrent writers."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import mlflow_server
from fga.tracking import PARENT_STAGE, PARENT_TAG, experiment_name, log_run, reconcile

METHODS = {"grm": {"embed_dim": 8}, "grm_no_sa": {"arch": "grm", "use_saliency": False}, "vse_mean": {}}


def make_cfg(tmp: Path, uri: str | None = None, **tracking) -> dict:
    return {"tracking": {"uri": uri or f"sqlite:///{tmp / 'mlruns.db'}", "artifact_root": str(tmp / "mlartifacts"),
                         **tracking},
            "methods": METHODS}


def key(method="grm", seed=0, stage="evaluate", backbone="lite0_roi"):
    return {"dataset": "synthetic", "backbone": backbone, "method": method, "seed": seed, "stage": stage}


def client_for(cfg):
    import mlflow

    mlflow.set_tracking_uri(cfg["tracking"]["uri"])
    client = mlflow.MlflowClient()
    return client, client.get_experiment_by_name(experiment_name("synthetic")).experiment_id


def active(client, exp_id, filter_string=""):
    return list(client.search_runs([exp_id], filter_string, max_results=1000))


def test_seeds_hang_under_one_parent_per_group(tmp_path, mlflow_store):
    cfg = make_cfg(tmp_path, mlflow_store)
    ids = {(m, s): log_run(cfg, key(m, s), metrics={"full/rsum": 100 + s}, tags={"protocol": "full"})
           for m in ("grm", "grm_no_sa") for s in (0, 1)}
    log_run(cfg, key("grm", 0, "train"), metrics={"best_val_rsum": 1.0})
    client, exp = client_for(cfg)
    parents = active(client, exp, f"tags.stage = '{PARENT_STAGE}'")
    assert sorted(p.data.tags["method"] for p in parents) == ["grm", "grm_no_sa"]
    by_method = {p.data.tags["method"]: p for p in parents}
    assert by_method["grm"].data.tags["variant"] == "base" and by_method["grm_no_sa"].data.tags["variant"] == "grm"
    assert by_method["grm"].info.status == "FINISHED"
    for (method, seed), run_id in ids.items():
        run = client.get_run(run_id)
        assert run.data.tags[PARENT_TAG] == by_method[method].info.run_id
        assert run.data.tags["variant"] == ("base" if method == "grm" else "grm")
        assert run.data.tags["seed"] == str(seed) and run.data.tags["git_commit"]
    train = active(client, exp, "tags.stage = 'train'")
    assert len(train) == 1 and train[0].data.tags[PARENT_TAG] == by_method["grm"].info.run_id


def test_relogging_a_key_replaces_the_run(tmp_path, mlflow_store):
    cfg = make_cfg(tmp_path, mlflow_store)
    first = log_run(cfg, key(), metrics={"full/rsum": 1.0})
    second = log_run(cfg, key(), metrics={"full/rsum": 2.0})
    client, exp = client_for(cfg)
    runs = active(client, exp, "tags.stage = 'evaluate'")
    assert [r.info.run_id for r in runs] == [second] and runs[0].data.metrics["full/rsum"] == 2.0
    assert client.get_run(first).info.lifecycle_stage == "deleted"
    assert len(active(client, exp, f"tags.stage = '{PARENT_STAGE}'")) == 1



def test_a_writer_whose_run_a_newer_writer_deleted_yields_to_it(tmp_path, mlflow_store, monkeypatch):
    """The race of two writers of one key: the newer finishes first and deletes the older run mid-logging."""
    import fga.tracking as tracking

    cfg = make_cfg(tmp_path, mlflow_store)
    real_fill = tracking._fill_run
    newer: list[str] = []

    def fill_after_a_newer_writer_won(client, cfg_, run_id, *args):
        exp = client.get_run(run_id).info.experiment_id
        time.sleep(0.01)  # start_time is in ms: the newer run must start later
        newer.append(client.create_run(exp, tags={k: str(v) for k, v in key().items()}).info.run_id)
        client.set_terminated(newer[0])
        client.delete_run(run_id)
        real_fill(client, cfg_, run_id, *args)

    monkeypatch.setattr(tracking, "_fill_run", fill_after_a_newer_writer_won)
    assert log_run(cfg, key(), metrics={"full/rsum": 1.0}) == newer[0]
    client, exp = client_for(cfg)
    assert [r.info.run_id for r in active(client, exp, "tags.stage = 'evaluate'")] == newer

def test_artifacts_params_yaml_and_optional_checkpoint(tmp_path, mlflow_store):
    import yaml

    metrics_json = tmp_path / "metrics.json"
    metrics_json.write_text('{"rsum": 1}\n')
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(b"weights")
    figs = tmp_path / "figures"
    figs.mkdir()
    (figs / "a.png").write_bytes(b"png")
    params = {"train": {"epochs": 2, "lr": 0.1}, "method": METHODS["grm"]}
    cfg = make_cfg(tmp_path, mlflow_store, log_checkpoints=False)
    run_id = log_run(cfg, key(stage="train"), params=params, artifacts=[metrics_json, (figs, "figures")],
                     checkpoint=ckpt)
    client, _ = client_for(cfg)
    names = {a.path for a in client.list_artifacts(run_id)}
    assert names == {"metrics.json", "params.yaml", "figures"}
    assert [a.path for a in client.list_artifacts(run_id, "figures")] == ["figures/a.png"]
    local = client.download_artifacts(run_id, "params.yaml", str(tmp_path / "dl"))
    assert yaml.safe_load(Path(local).read_text()) == params
    assert client.get_run(run_id).data.params["train.epochs"] == "2"

    cfg = make_cfg(tmp_path, mlflow_store, log_checkpoints=True)
    run_id = log_run(cfg, key(stage="train"), params=params, checkpoint=ckpt)
    assert "checkpoint" in {a.path for a in client.list_artifacts(run_id)}
    got = client.download_artifacts(run_id, "checkpoint/checkpoint.pt", str(tmp_path / "dl2"))
    assert Path(got).read_bytes() == b"weights"


def test_report_runs_have_no_parent_and_reconcile_repairs_groups(tmp_path, mlflow_store):
    cfg = make_cfg(tmp_path, mlflow_store)
    log_run(cfg, key())
    report = log_run(cfg, {"dataset": "synthetic", "backbone": "all", "method": "all", "seed": "all",
                           "stage": "report"})
    client, exp = client_for(cfg)
    assert PARENT_TAG not in client.get_run(report).data.tags
    # simulate what a race can leave: a second parent, and a child pointing at a deleted one
    child = active(client, exp, "tags.stage = 'evaluate'")[0]
    parent = client.get_run(child.data.tags[PARENT_TAG])
    extra = client.create_run(exp, tags={**{k: parent.data.tags[k] for k in ("dataset", "backbone", "method")},
                                         "stage": PARENT_STAGE})
    client.delete_run(parent.info.run_id)
    assert reconcile(cfg, ["synthetic"]) == 1
    parents = active(client, exp, f"tags.stage = '{PARENT_STAGE}'")
    assert [p.info.run_id for p in parents] == [extra.info.run_id]
    assert client.get_run(child.info.run_id).data.tags[PARENT_TAG] == extra.info.run_id


# ---- concurrency: 8 processes log at once --------------------------------------------------------------------

N_WORKERS = 8
N_METRICS = 40
N_STEPS = 5
WORKER = r"""
import pathlib, sys, time
uri, root, idx, ready, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), pathlib.Path(sys.argv[4]), pathlib.Path(sys.argv[5])
import mlflow  # imports done before the barrier, so the writes really overlap
from fga.tracking import log_run
cfg = {"tracking": {"uri": uri, "artifact_root": root},
       "methods": {"grm": {}, "grm_no_sa": {"arch": "grm", "use_saliency": False}}}
ready.touch()
while not go.exists():
    time.sleep(0.005)
method = "grm" if idx % 2 == 0 else "grm_no_sa"
for stage in ("train", "evaluate"):
    log_run(cfg, {"dataset": "synthetic", "backbone": "b", "method": method, "seed": idx, "stage": stage},
            params={"worker": idx, "stage": stage},
            metrics={f"m{j}": idx * 1000 + j for j in range(N_METRICS)},
            step_metrics={"loss": [(e, idx + e / 10) for e in range(N_STEPS)]})
# every worker also writes the same key: exactly one complete run must survive
log_run(cfg, {"dataset": "synthetic", "backbone": "b", "method": "shared", "seed": 0, "stage": "evaluate"},
        metrics={"writer": idx, **{f"m{j}": idx * 1000 + j for j in range(N_METRICS)}})
""".replace("N_METRICS", str(N_METRICS)).replace("N_STEPS", str(N_STEPS))


def run_workers(tmp: Path, uri: str) -> None:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    go = tmp / "go"
    procs = []
    for i in range(N_WORKERS):
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, uri, str(tmp / "mlartifacts"), str(i),
                                       str(tmp / f"ready{i}"), str(go)], cwd=tmp, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    deadline = time.monotonic() + 180
    while not all((tmp / f"ready{i}").exists() for i in range(N_WORKERS)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate()[0][-2000:] for p in procs if p.poll() is not None]
        time.sleep(0.05)
    go.touch()
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out[-3000:]


def check_nothing_lost(cfg: dict) -> None:
    client, exp = client_for(cfg)
    runs = active(client, exp)
    by_key: dict[tuple, list] = {}
    for r in runs:
        if r.data.tags.get("stage") != PARENT_STAGE:
            by_key.setdefault((r.data.tags["method"], r.data.tags["seed"], r.data.tags["stage"]), []).append(r)
    expected = {("grm" if i % 2 == 0 else "grm_no_sa", str(i), s) for i in range(N_WORKERS) for s in ("train", "evaluate")}
    assert set(by_key) == expected | {("shared", "0", "evaluate")}
    for (method, seed, stage), rs in by_key.items():
        assert len(rs) == 1, f"{len(rs)} runs for {(method, seed, stage)}"
        m = rs[0].data.metrics
        writer = int(m["writer"]) if method == "shared" else int(seed)
        assert {k: v for k, v in m.items() if k.startswith("m")} == {f"m{j}": writer * 1000 + j for j in range(N_METRICS)}
        if method != "shared":
            history = client.get_metric_history(rs[0].info.run_id, "loss")
            assert sorted((h.step, h.value) for h in history) == [(e, pytest.approx(writer + e / 10)) for e in range(N_STEPS)]
            assert rs[0].data.params == {"worker": seed, "stage": stage}
    # one parent per (dataset, backbone, method); after reconcile every child points at it
    reconcile(cfg, ["synthetic"])
    parents = active(client, exp, f"tags.stage = '{PARENT_STAGE}'")
    assert sorted(p.data.tags["method"] for p in parents) == ["grm", "grm_no_sa", "shared"]
    parent_of = {p.data.tags["method"]: p.info.run_id for p in parents}
    for r in active(client, exp, f"tags.stage != '{PARENT_STAGE}'"):
        assert r.data.tags[PARENT_TAG] == parent_of[r.data.tags["method"]]


@pytest.mark.e2e
def test_concurrent_writers_sqlite(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    run_workers(tmp_path, uri)
    check_nothing_lost(make_cfg(tmp_path, uri))


@pytest.mark.e2e
def test_concurrent_writers_http_server(tmp_path):
    with mlflow_server(tmp_path, f"sqlite:///{tmp_path / 'server.db'}") as url:
        run_workers(tmp_path, url)
        check_nothing_lost(make_cfg(tmp_path, url))
