"""fga.tracking: parent/child runs, variant tags, artifacts, idempotent re-logging, concurrent writers."""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import mlflow_server
from fga.tracking import (PARENT_STAGE, PARENT_TAG, PROJECT_ROOT_TAG, download_artifact, experiment_name, git_commit,
                          list_artifacts, log_run, reconcile, runs_frame)
from fga.tracking_aggregates import newest_finished_per_seed, seed_aggregates
from fga.tracking_artifacts import legacy_project_root, readable_artifact_uri
from fga.tracking_params import TRUNCATED_MARK, flatten, param_value, resolved_run_params

METHODS = {"grm": {"embed_dim": 8}, "grm_no_sa": {"arch": "grm", "use_saliency": False}, "vse_mean": {}}


def make_cfg(tmp: Path, uri: str | None = None, **tracking) -> dict:
    return {"tracking": {"uri": uri or f"sqlite:///{tmp / 'mlruns.db'}", "artifact_root": str(tmp / "mlartifacts"),
                         **tracking},
            "methods": METHODS}


def key(method="grm", seed=0, stage="evaluate", backbone="lite0_roi"):
    return {"dataset": "synthetic", "backbone": backbone, "text": "bigru", "method": method, "seed": seed, "stage": stage}


def client_for(cfg, experiment="default"):
    import mlflow

    mlflow.set_tracking_uri(cfg["tracking"]["uri"])
    client = mlflow.MlflowClient()
    return client, client.get_experiment_by_name(experiment_name("synthetic", experiment)).experiment_id


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
    ckpt = tmp_path / "checkpoint.safetensors"
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
    got = client.download_artifacts(run_id, "checkpoint/checkpoint.safetensors", str(tmp_path / "dl2"))
    assert Path(got).read_bytes() == b"weights"


def test_report_runs_have_no_parent_and_reconcile_repairs_groups(tmp_path, mlflow_store):
    cfg = make_cfg(tmp_path, mlflow_store)
    log_run(cfg, key())
    report = log_run(cfg, {"dataset": "synthetic", "backbone": "all", "text": "all", "method": "all", "seed": "all",
                           "stage": "report"})
    client, exp = client_for(cfg)
    assert PARENT_TAG not in client.get_run(report).data.tags
    # simulate what a race can leave: a second parent, and a child pointing at a deleted one
    child = active(client, exp, "tags.stage = 'evaluate'")[0]
    parent = client.get_run(child.data.tags[PARENT_TAG])
    extra = client.create_run(exp, tags={**{k: parent.data.tags[k] for k in ("dataset", "backbone", "text", "method")},
                                         "stage": PARENT_STAGE})
    client.delete_run(parent.info.run_id)
    assert reconcile(cfg, ["synthetic"]) == 1
    parents = active(client, exp, f"tags.stage = '{PARENT_STAGE}'")
    assert [p.info.run_id for p in parents] == [extra.info.run_id]
    assert client.get_run(child.info.run_id).data.tags[PARENT_TAG] == extra.info.run_id


# ---- experiments side by side ----------------------------------------------------------------------------------


def test_experiments_sit_side_by_side_and_rerun_replaces_within_one(tmp_path, mlflow_store):
    default = make_cfg(tmp_path, mlflow_store)
    sweep = {**default, "experiment": "lr-sweep"}
    first = log_run(default, key(), metrics={"full/rsum": 1.0})
    log_run(sweep, key(), metrics={"full/rsum": 2.0})
    newest = log_run(sweep, key(), metrics={"full/rsum": 3.0})
    client, exp = client_for(default)
    assert client.get_experiment(exp).name == "fga-synthetic"  # stores made before experiments keep their names
    assert [r.info.run_id for r in active(client, exp, "tags.stage = 'evaluate'")] == [first]
    assert client.get_run(first).data.tags["experiment"] == "default"
    client, sweep_exp = client_for(sweep, "lr-sweep")
    assert client.get_experiment(sweep_exp).name == "fga-synthetic-lr-sweep"
    runs = active(client, sweep_exp, "tags.stage = 'evaluate'")
    assert [r.info.run_id for r in runs] == [newest] and runs[0].data.tags["experiment"] == "lr-sweep"
    assert [p.data.tags["experiment"] for p in active(client, sweep_exp, f"tags.stage = '{PARENT_STAGE}'")] == ["lr-sweep"]
    assert list(runs_frame(default, ["synthetic"], "evaluate")["metrics.full/rsum"]) == [1.0]
    assert list(runs_frame(sweep, ["synthetic"], "evaluate")["metrics.full/rsum"]) == [3.0]


def test_runs_logged_before_experiments_existed_count_as_default(tmp_path, mlflow_store):
    cfg = make_cfg(tmp_path, mlflow_store)
    log_run(cfg, key(seed=1))  # creates the experiment
    client, exp = client_for(cfg)
    legacy = client.create_run(exp, tags={k: str(v) for k, v in key().items()}).info.run_id  # no experiment tag
    client.set_terminated(legacy)
    assert list(runs_frame(cfg, ["synthetic"], "evaluate")["run_id"]).count(legacy) == 1
    assert runs_frame({**cfg, "experiment": "other"}, ["synthetic"], "evaluate").empty
    newer = log_run(cfg, key())
    assert client.get_run(legacy).info.lifecycle_stage == "deleted"
    assert {r.info.run_id for r in active(client, exp, "tags.seed = '0'")} == {newer}


# ---- params ---------------------------------------------------------------------------------------------------


def test_train_and_evaluate_params_are_the_resolved_options_flattened(tmp_path, mlflow_store):
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    cfg = make_cfg(tmp_path, mlflow_store)
    cfg["methods"] = {"grm": {"embed_dim": 8, "num_prompts": 5, "per_backbone": {"swin_t": {"num_prompts": 50}}}}
    cfg["train"] = {"lr": 2e-4, "lr_milestones": [1], "note": "x" * (MAX_PARAM_VAL_LENGTH + 10),
                    "many": {f"k{i}": i for i in range(150)}}  # > 100 params: several log_batch calls
    cfg["features"] = {"backbones": {"swin_t": {"model": "swin_tiny", "checkpoint": None}, "other": {"model": "o"}},
                       "text": {"min_count": 1}}
    params = resolved_run_params(cfg, "swin_t", "grm")
    run_id = log_run(cfg, key(backbone="swin_t", stage="train"), params=params)
    client, _ = client_for(cfg)
    logged = client.get_run(run_id).data.params
    assert logged["method.num_prompts"] == "50" and "method.per_backbone.swin_t.num_prompts" not in logged
    assert logged["train.lr"] == "0.0002" and logged["train.lr_milestones"] == "[1]"
    assert logged["features.swin_t.model"] == "swin_tiny" and logged["features.text.min_count"] == "1"
    assert not any(k.startswith("features.other") for k in logged)
    assert logged["train.many.k149"] == "149" and len(logged) == len(flatten(params))
    assert len(logged["train.note"]) == MAX_PARAM_VAL_LENGTH and logged["train.note"].endswith(TRUNCATED_MARK)
    cfg["features"]["precomp"] = {"butd": {"format": "tsv"}}
    assert resolved_run_params(cfg, "butd", "grm")["features"]["butd"]["format"] == "tsv"  # a precomputed source


def test_param_value_cuts_only_long_values():
    assert param_value(None, 10) == "None" and param_value("a" * 10, 10) == "a" * 10
    cut = param_value("é" * 30, 20)
    assert len(cut) == 20 and cut == "é" * (20 - len(TRUNCATED_MARK)) + TRUNCATED_MARK


# ---- artifacts of a moved checkout ------------------------------------------------------------------------------


@pytest.mark.parametrize("recorded", ["tag", "legacy"])
def test_a_moved_checkout_still_serves_its_artifacts(tmp_path, mlflow_store, monkeypatch, recorded):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    shutil.copy(mlflow_store.removeprefix("sqlite:///"), old / "mlruns.db")
    monkeypatch.chdir(old)
    (old / "results").mkdir()
    (old / "results" / "metrics.json").write_text('{"rsum": 1}\n')
    (old / "results" / "attention").mkdir()
    (old / "results" / "attention" / "a.json").write_text("[]\n")
    cfg = {"tracking": {"uri": f"sqlite:///{old / 'mlruns.db'}", "artifact_root": "mlartifacts"}, "methods": METHODS}
    run_id = log_run(cfg, key(), artifacts=[Path("results/metrics.json"), (Path("results/attention"), "attention")])
    client, exp = client_for(cfg)
    assert client.get_experiment(exp).tags[PROJECT_ROOT_TAG] == old.resolve().as_uri()
    assert client.get_run(run_id).info.artifact_uri.startswith((old / "mlartifacts").resolve().as_uri())
    if recorded == "legacy":  # an experiment created before fga recorded its project root
        client.delete_experiment_tag(exp, PROJECT_ROOT_TAG)
    shutil.copytree(old, new)
    shutil.rmtree(old)
    monkeypatch.chdir(new)
    moved = {**cfg, "tracking": {**cfg["tracking"], "uri": f"sqlite:///{new / 'mlruns.db'}"}}
    assert sorted(list_artifacts(moved, run_id)) == ["attention/a.json", "metrics.json"]
    got = download_artifact(moved, run_id, "attention/a.json", new / "dl")
    assert got.read_text() == "[]\n" and got.resolve().is_relative_to(new / "dl")


def test_artifact_uris_move_only_when_the_recorded_place_is_gone(tmp_path):
    here, there = tmp_path / "here", tmp_path / "there"
    (there / "mlartifacts" / "r").mkdir(parents=True)
    uri = (here / "mlartifacts" / "r").as_uri()
    assert readable_artifact_uri(uri, here.as_uri(), there.as_uri()) == (there / "mlartifacts" / "r").as_uri()
    assert readable_artifact_uri(uri, None, there.as_uri()) == uri  # nothing recorded
    assert readable_artifact_uri("mlflow-artifacts:/1/r", here.as_uri(), there.as_uri()) == "mlflow-artifacts:/1/r"
    (here / "mlartifacts" / "r").mkdir(parents=True)  # the recorded place exists: read it
    assert readable_artifact_uri(uri, here.as_uri(), there.as_uri()) == uri


def test_the_project_root_of_an_experiment_from_before_it_was_recorded():
    location = "file:///old/my%20proj/mlartifacts/fga-synthetic"
    assert legacy_project_root("mlartifacts", "fga-synthetic", location) == "file:///old/my%20proj"
    assert legacy_project_root("./mlartifacts", "fga-synthetic", location) == "file:///old/my%20proj"
    assert legacy_project_root("/abs/mlartifacts", "fga-synthetic", location) is None
    assert legacy_project_root("mlartifacts", "fga-coco", location) is None
    assert legacy_project_root(None, "fga-synthetic", location) is None


# ---- parent runs carry the seeds' aggregates ----------------------------------------------------------------------


def headline(rsum: float) -> dict[str, float]:
    return {"full/rsum": rsum, "full/i2t_R1": rsum / 10, "full/t2i_R1": rsum / 20,
            "full/ci/rsum_lo": 0.0, "qbnorm/full/rsum": 999.0}


def test_parent_carries_mean_and_std_over_its_seeds(tmp_path, mlflow_store):
    cfg = make_cfg(tmp_path, mlflow_store)
    for seed, rsum in enumerate((100.0, 110.0, 120.0)):
        log_run(cfg, key(seed=seed), metrics=headline(rsum), tags={"protocol": "full"})
    log_run(cfg, key(seed=0, stage="train"), metrics={"best_val_rsum": 5.0})
    client, exp = client_for(cfg)

    def parent_metrics():
        (parent,) = active(client, exp, f"tags.stage = '{PARENT_STAGE}'")
        return parent.data.metrics

    m = parent_metrics()
    assert m["n_seeds"] == 3 and m["full/rsum_mean"] == pytest.approx(110.0) and m["full/rsum_std"] == pytest.approx(10.0)
    assert m["full/i2t_R1_mean"] == pytest.approx(11.0) and m["full/t2i_R1_std"] == pytest.approx(0.5)
    assert not any(k.startswith(("full/ci", "qbnorm", "best_val")) for k in m)
    log_run(cfg, key(seed=1), metrics=headline(140.0), tags={"protocol": "full"})  # a seed re-logged
    m = parent_metrics()
    assert m["n_seeds"] == 3 and m["full/rsum_mean"] == pytest.approx(120.0)
    assert m["full/rsum_std"] == pytest.approx(statistics.stdev([100.0, 140.0, 120.0]))
    (parent,) = active(client, exp, f"tags.stage = '{PARENT_STAGE}'")
    client.log_metric(parent.info.run_id, "full/rsum_mean", -1.0)  # e.g. a race's stale value
    reconcile(cfg, ["synthetic"])
    assert parent_metrics()["full/rsum_mean"] == pytest.approx(120.0)


def test_seed_aggregates_count_the_newest_finished_run_of_each_seed():
    from types import SimpleNamespace as NS

    def run(seed, start, rsum, status="FINISHED"):
        return NS(info=NS(status=status, start_time=start, run_id=f"r{start}"),
                  data=NS(tags={"seed": seed}, metrics={"full/rsum": rsum}))

    runs = newest_finished_per_seed([run("0", 1, 10.0), run("0", 2, 20.0), run("1", 3, 40.0), run("1", 4, 0.0, "RUNNING")])
    assert seed_aggregates(runs) == {"n_seeds": 2.0, "full/rsum_mean": 30.0, "full/rsum_std": pytest.approx(14.1421356)}
    assert seed_aggregates(runs[:1])["full/rsum_std"] == 0.0  # one seed: 0, as in the report's tables


# ---- MLflow's conventions: dataset inputs, source tags ---------------------------------------------------------


def test_runs_carry_their_dataset_input_and_source_tags(tmp_path, mlflow_store):
    cfg = make_cfg(tmp_path, mlflow_store)
    evaluate = log_run(cfg, key(), tags={"data_hash": "0123abcd", "split": "test"})
    train = log_run(cfg, key(stage="train"), tags={"data_hash": "0123abcd"})
    report = log_run(cfg, {"dataset": "synthetic", "backbone": "all", "text": "all", "method": "all", "seed": "all",
                           "stage": "report"})
    client, _ = client_for(cfg)
    for run_id, context in ((evaluate, "test"), (train, "train")):
        run = client.get_run(run_id)
        (item,) = run.inputs.dataset_inputs
        assert (item.dataset.name, item.dataset.digest) == ("synthetic", "0123abcd")
        assert {t.key: t.value for t in item.tags} == {"mlflow.data.context": context}
        assert run.data.tags["mlflow.source.name"] == f"fga {run.data.tags['stage']}"
        assert run.data.tags["mlflow.source.type"] == "LOCAL"
        if git_commit() != "unknown":
            assert run.data.tags["mlflow.source.git.commit"] == git_commit() == run.data.tags["git_commit"]
    assert client.get_run(report).inputs.dataset_inputs == []


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
    log_run(cfg, {"dataset": "synthetic", "backbone": "b", "text": "bigru", "method": method, "seed": idx, "stage": stage},
            params={"worker": idx, "stage": stage},
            metrics={f"m{j}": idx * 1000 + j for j in range(N_METRICS)}, tags={"data_hash": "d0"},
            step_metrics={"loss": [(e, idx + e / 10) for e in range(N_STEPS)]})
# every worker also writes the same key: exactly one complete run must survive
log_run(cfg, {"dataset": "synthetic", "backbone": "b", "text": "bigru", "method": "shared", "seed": 0, "stage": "evaluate"},
        metrics={"writer": idx, "full/rsum": idx, **{f"m{j}": idx * 1000 + j for j in range(N_METRICS)}},
        tags={"data_hash": "d0"})
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
        (dataset_input,) = client.get_run(rs[0].info.run_id).inputs.dataset_inputs
        assert (dataset_input.dataset.name, dataset_input.dataset.digest) == ("synthetic", "d0")
    # the latest aggregate of each parent counts every seed, and the surviving writer's rsum
    n_seeds = {p.data.tags["method"]: p.data.metrics.get("n_seeds")
               for p in active(client, exp, f"tags.stage = '{PARENT_STAGE}'")}
    assert n_seeds == {"grm": N_WORKERS // 2, "grm_no_sa": N_WORKERS // 2, "shared": 1}
    (shared_parent,) = active(client, exp, f"tags.stage = '{PARENT_STAGE}' and tags.method = 'shared'")
    assert shared_parent.data.metrics["full/rsum_mean"] == by_key[("shared", "0", "evaluate")][0].data.metrics["writer"]
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


@pytest.mark.parametrize("log_checkpoints", [True, False])
def test_fga_train_logs_its_best_checkpoint_beside_its_config(tmp_path, mlflow_store, monkeypatch, log_checkpoints):
    """`fga train` hands its checkpoint.safetensors to the run; it is logged (under checkpoint/, beside the run's
    params.yaml) exactly when tracking.log_checkpoints is true."""
    from fga.cli import main

    def fake_train(cfg, dataset, backbone, method, seed, run_dir, quiet=False):
        run_dir.mkdir(parents=True)
        (run_dir / "checkpoint.safetensors").write_bytes(b"best weights")
        return {"rank": 0, "history": [{"epoch": 0, "val_rsum": 1.0}], "best": {"rsum": 1.0, "epoch": 0}}

    monkeypatch.setattr("fga.train.train", fake_train)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "synthetic").mkdir(parents=True)
    (tmp_path / "data" / "synthetic" / "dataset.json").write_text("{}")
    repo_params = Path(__file__).resolve().parents[1] / "params.yaml"
    assert main(["train", "--params", str(repo_params), "--dataset", "synthetic", "--backbone", "lite0_roi",
                 "--method", "grm", "--seed", "0", "--quiet", "--set", f"tracking.uri={mlflow_store}",
                 "--set", f"tracking.artifact_root={tmp_path / 'mlartifacts'}",
                 "--set", f"tracking.log_checkpoints={str(log_checkpoints).lower()}"]) == 0
    cfg = make_cfg(tmp_path, mlflow_store)
    client, exp = client_for(cfg)
    (run,) = active(client, exp, "tags.stage = 'train'")
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "params.yaml" in names and ("checkpoint" in names) == log_checkpoints
    if log_checkpoints:
        got = client.download_artifacts(run.info.run_id, "checkpoint/checkpoint.safetensors", str(tmp_path / "dl"))
        assert Path(got).read_bytes() == b"best weights"


def test_log_run_logs_tables_as_mlflow_tables(tmp_path, mlflow_store):
    import json

    import pandas as pd

    cfg = make_cfg(tmp_path, mlflow_store)
    frame = pd.DataFrame({"Method": ["grm", "vse"], "rSum": [210.5, 190.0]})
    run_id = log_run(cfg, {**key(stage="report"), "backbone": "all", "text": "all", "method": "all", "seed": "all"},
                     tables={"main_table.json": frame})
    client, _ = client_for(cfg)
    assert json.loads(client.get_run(run_id).data.tags["mlflow.loggedArtifacts"]) == [
        {"path": "main_table.json", "type": "table"}]
    got = pd.read_json(client.download_artifacts(run_id, "main_table.json", str(tmp_path / "dl")), orient="split")
    pd.testing.assert_frame_equal(got, frame)


def test_importing_tracking_and_train_loads_no_mlflow_or_plotting():
    """Jobs import mlflow only when they log or read runs, and seaborn/matplotlib only inside the report's figures."""
    code = ("import sys, fga.tracking, fga.tracking_params, fga.tracking_aggregates, fga.tracking_artifacts, "
            "fga.train, fga.report, fga.cli; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'mlflow', 'seaborn', 'matplotlib'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"


KILLED_IN_SCHEMA_SETUP = """
import os, sys
import mlflow.store.db.utils as db_utils
from fga.tracking import log_run

def killed(engine):  # a SIGKILL after MLflow created its initial tables, before its migrations ran
    os._exit(9)

db_utils._upgrade_db = killed
cfg = {"tracking": {"uri": sys.argv[1], "artifact_root": sys.argv[2]}, "methods": {"grm": {}}}
log_run(cfg, {"dataset": "synthetic", "backbone": "b", "text": "bigru", "method": "grm", "seed": 0, "stage": "evaluate"})
"""


def test_a_job_killed_while_mlflow_sets_up_the_sqlite_store_leaves_no_broken_store(tmp_path):
    """Found by benchmarks/bench_faults.py: a kill inside MLflow's schema set-up left a half-made mlruns.db that every
    later job failed to open ("table ... already exists"). The schema is now made under a temporary name."""
    cfg = make_cfg(tmp_path)
    db = tmp_path / "mlruns.db"
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_SCHEMA_SETUP, cfg["tracking"]["uri"],
                             cfg["tracking"]["artifact_root"]], capture_output=True, text=True)
    assert killed.returncode == 9, killed.stderr
    assert not db.exists() and list(tmp_path.glob(".mlruns.db.*.partial"))
    run_id = log_run(cfg, key(), metrics={"full/rsum": 1.0})  # the next job: a complete store, the leftover gone
    client, exp = client_for(cfg)
    assert [r.info.run_id for r in active(client, exp, "tags.stage = 'evaluate'")] == [run_id]
    assert not list(tmp_path.glob(".mlruns.db.*.partial"))
