"""Faults of the environment: a disk that fills up mid-write, a tracking server that goes away, kills of the whole
workflow at random moments (benchmarks/bench_faults.py, CI variant)."""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
import yaml

from conftest import BIN, free_port, mlflow_server

ROOT = Path(__file__).resolve().parent.parent
TINY_SYNTHETIC = {"seed": 0, "n_train": 24, "n_val": 6, "n_test": 8, "progress": False}


# ------------------------------------------------------------------------------------------------ a full disk


@contextlib.contextmanager
def small_tmpfs(where: Path, size_kib: int) -> Iterator[Path]:
    """A size-limited tmpfs mounted at `where` for the test (root only; skips with the reason otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    where.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(where)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def fill_leaving(disk: Path, free_kib: int) -> Path:
    """A filler file that leaves about `free_kib` KiB free on `disk` (deleted later to free the space)."""
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - free_kib * 1024))
    return filler


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def assert_disk_full_error(exc_info, output: Path) -> None:
    message = str(exc_info.value)
    assert "\n" not in message and message.startswith(str(output)) and "no space left" in message
    assert re.search(r"it needs (more than the )?\d+(\.\d)? (B|KiB|MiB)( written before the disk filled)?; "
                     r"\d+(\.\d)? (B|KiB|MiB) free in ", message)


def run_full_disk_case(tmp_path: Path, write, output: Path, free_kib: int) -> None:
    """`write(path)` on a tmpfs that fills mid-write, then again after the space is freed; compare with a normal disk."""
    from fga.errors import UserError

    write(tmp_path / "reference" / output.name)
    reference = (tmp_path / "reference" / output.name)
    disk = output.parent
    earlier = disk / "earlier_output.json"
    earlier.write_text('{"done": true}\n')
    filler = fill_leaving(disk, free_kib)
    before = snapshot(disk)
    with pytest.raises(UserError) as exc:
        write(output)
    assert_disk_full_error(exc, output)
    assert not output.exists()  # no partial file where the output belongs, and no temp file beside it
    assert snapshot(disk) == before
    filler.unlink()
    write(output)
    if reference.is_dir():
        assert snapshot(output) == snapshot(reference)
    else:
        assert output.read_bytes() == reference.read_bytes()
    assert earlier.read_text() == '{"done": true}\n'


def test_dataset_images_on_a_full_disk(tmp_path):
    from fga.data.synthetic import generate

    with small_tmpfs(tmp_path / "disk", 4096) as disk:
        run_full_disk_case(tmp_path, lambda out: generate(out, **TINY_SYNTHETIC), disk / "synthetic", 64)


def test_feature_store_on_a_full_disk(tmp_path):
    from fga.features.store import StoreWriter

    def write(path: Path) -> None:
        rng = np.random.default_rng(0)
        writer = StoreWriter(path, 64, 36, 256, {"params_hash": "h", "data_hash": "d"}, chunk_rows=8)
        for start in range(0, 64, 8):
            writer.write(start, rng.standard_normal((8, 36, 256)), rng.random((8, 36, 4)), np.ones((8, 36), bool),
                         np.arange(start, start + 8))
        writer.finish()

    with small_tmpfs(tmp_path / "disk", 4096) as disk:
        run_full_disk_case(tmp_path, write, disk / "test.h5", 512)


def test_checkpoints_on_a_full_disk(tmp_path):
    from fga.checkpoint import save_checkpoint, save_resume_state

    weights = {"w": torch.arange(512 * 1024, dtype=torch.float32)}
    with small_tmpfs(tmp_path / "disk", 4096) as disk:
        run_full_disk_case(tmp_path, lambda p: save_checkpoint(p, weights, {}, {"run_hash": "a"}),
                           disk / "checkpoint.safetensors", 1024)
        (disk / "checkpoint.safetensors").unlink()
        state = {"model": weights, "optimizer": {}, "scheduler": {}, "rng": {"torch": [1]},
                 "meta": {"run_hash": "a", "epoch": 0}}
        # torch.save is not byte-stable (it writes a random serialization id): compare what loads back
        from fga.checkpoint import load_resume_state
        from fga.errors import UserError

        filler = fill_leaving(disk, 1024)
        with pytest.raises(UserError) as exc:
            save_resume_state(disk / "last.pt", state)
        assert_disk_full_error(exc, disk / "last.pt")
        assert sorted(p.name for p in disk.iterdir()) == ["earlier_output.json", "filler"]
        filler.unlink()
        save_resume_state(disk / "last.pt", state)
        assert torch.equal(load_resume_state(disk / "last.pt", "a")["model"]["w"], weights["w"])


def test_similarity_matrix_on_a_full_disk(tmp_path):
    from fga.evaluate.similarity import save_matrix

    sim = np.random.default_rng(3).standard_normal((500, 1000)).astype(np.float32)
    with small_tmpfs(tmp_path / "disk", 4096) as disk:
        run_full_disk_case(tmp_path, lambda p: save_matrix(p, sim, "float32"), disk / "sim_test.npy", 1024)


def test_a_stage_on_a_full_disk_prints_one_line(tmp_path):
    """Through the CLI: `fga data prepare` fails with exactly one line on stderr, status 2, nothing left behind."""
    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())
    cfg["data"]["synthetic"].update({k: v for k, v in TINY_SYNTHETIC.items() if k.startswith("n_")})
    with small_tmpfs(tmp_path / "project", 4096) as project:
        (project / "params.yaml").write_text(yaml.safe_dump(cfg))
        fill_leaving(project, 64)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        out = subprocess.run([sys.executable, "-m", "fga", "data", "prepare", "--dataset", "synthetic", "--quiet"],
                             cwd=project, env=env, capture_output=True, text=True)
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("fga: error: data/synthetic: no space left"), out.stderr
        assert not (project / "data" / "synthetic").exists() and list((project / "data").iterdir()) == []


# ------------------------------------------------------------------------------ the tracking server goes away

METHODS = {"grm": {}, "vse_mean": {"arch": "vse"}}


def key(seed: int, stage: str = "evaluate") -> dict:
    return {"dataset": "synthetic", "backbone": "lite0_roi", "text": "bigru", "method": "grm", "seed": seed, "stage": stage}


def runs_by_key(url: str) -> dict[tuple, list]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=url)
    out: dict[tuple, list] = {}
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], "tags.stage != 'group'"):
            out.setdefault((run.data.tags["seed"], run.data.tags["stage"]), []).append(run)
    return out


@pytest.mark.e2e
def test_server_stopped_mid_grid_then_synced(tmp_path, monkeypatch, capsys):
    from fga.errors import UserError
    from fga.tracking_sync import log_or_keep, pending, sync

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # keep the test short; the default is bounded too
    port, backend = free_port(), f"sqlite:///{tmp_path / 'server.db'}"
    metrics_file = tmp_path / "results" / "metrics.json"
    metrics_file.parent.mkdir()
    metrics_file.write_text('{"rsum": 1.0}\n')
    with mlflow_server(tmp_path, backend, port=port) as url:
        cfg = {"tracking": {"uri": url, "artifact_root": None}, "methods": METHODS}
        assert log_or_keep(cfg, key(0), metrics={"rsum": 1.0}, artifacts=[metrics_file])
        # a job killed mid-logging leaves its run RUNNING on the server
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=url)
        exp_id = client.get_experiment_by_name("fga-synthetic").experiment_id
        client.create_run(exp_id, tags={**{k: str(v) for k, v in key(1).items()}, "experiment": "default"})
    # the server is gone: the job keeps its run on disk, says so in one line and succeeds
    started = time.monotonic()
    assert log_or_keep(cfg, key(1), metrics={"rsum": 2.0}, step_metrics={"loss": [(0, 0.5), (1, 0.25)]},
                       params={"train": {"epochs": 2}}, artifacts=[metrics_file]) is None
    assert time.monotonic() - started < 120  # bounded backoff
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unreachable" in err[0] and "fga tracking sync" in err[0]
    assert [p.name for p in pending(cfg)] == ["synthetic.lite0_roi.bigru.grm.1.evaluate.json"]
    with pytest.raises(UserError, match="unreachable; 1 runs stay kept"):
        sync(cfg)
    with mlflow_server(tmp_path, backend, port=port):  # back, on the same address
        assert sync(cfg, quiet=True) == 1 and pending(cfg) == []
        assert sync(cfg, quiet=True) == 0  # idempotent
        runs = runs_by_key(url)
        assert sorted(runs) == [("0", "evaluate"), ("1", "evaluate")]
        assert all(len(r) == 1 and r[0].info.status == "FINISHED" for r in runs.values())
        relogged = runs[("1", "evaluate")][0]
        assert relogged.data.metrics == {"rsum": 2.0, "loss": 0.25}
        assert relogged.data.params["train.epochs"] == "2"
        assert [a.path for a in client.list_artifacts(relogged.info.run_id)] == ["metrics.json", "params.yaml"]


def test_tracking_sync_verb_logs_kept_runs_once(tmp_path, monkeypatch, mlflow_store, capsys):
    """`fga tracking sync` logs a kept run into the store, deletes its record, and is a no-op the second time."""
    from fga.cli import main
    from fga.config import load_params
    from fga.tracking_sync import keep, pending

    monkeypatch.chdir(tmp_path)
    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())
    cfg["tracking"] = {**cfg["tracking"], "uri": mlflow_store, "artifact_root": "mlartifacts"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(cfg))
    params = load_params("params.yaml", [])
    keep(params, key(3), metrics={"rsum": 3.5}, tags={"split": "test"})
    assert main(["tracking", "sync", "--quiet"]) == 0
    assert "1 kept runs logged" in capsys.readouterr().out and pending(params) == []
    assert main(["tracking", "sync"]) == 0
    assert "nothing to sync" in capsys.readouterr().out
    runs = runs_by_key(mlflow_store)
    assert list(runs) == [("3", "evaluate")] and runs[("3", "evaluate")][0].data.metrics == {"rsum": 3.5}


# ------------------------------------------------------------------------------------ kill trials (CI variant)


@pytest.mark.e2e
def test_kill_trials_survive(tmp_path, tiny_completed):
    """Two seeded trials of benchmarks/bench_faults.py against the session's completed tiny project: the grid
    SIGKILLed at random moments and rerun loses nothing; metrics, tables and MLflow equal the undisturbed run."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_faults import run_trials

    summary = run_trials(trials=2, seed=7, cores=2, workdir=tmp_path / "faults", kills=2, completed=tiny_completed)
    assert summary["trials"] == 2 and summary["survived"] == 2 and summary["outputs_lost"] == 0
    assert summary["faults"] >= 1
