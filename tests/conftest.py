"""Shared markers and fixtures: a local MLflow server, a completed tiny Snakemake project."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

BIN = Path(sys.executable).parent


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: runs the real Snakefile / dvc repro / servers on a tiny config (slow)")
    config.addinivalue_line("markers", "slurm: needs a running one-node Slurm cluster (bash .ci/run slurm-up)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """Stop a server we started (its own process group: the server and its workers)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextmanager
def mlflow_server(workdir: Path, backend_uri: str, *, timeout: float = 90, port: int | None = None) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1:<port> (default: a free one) over `backend_uri`; yields its http URL, stops it on exit."""
    port = port or free_port()
    log = open(workdir / f"mlflow-server-{port}.log", "w")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    # 2 workers: requests really are served concurrently (the default 4 is too many for 2-core CI machines)
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", backend_uri, "--host", "127.0.0.1",
         "--port", str(port), "--workers", "2"],
        cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({proc.returncode}):\n{_tail(workdir / log.name)}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not answer within {timeout:.0f} s:\n{_tail(workdir / log.name)}")
            time.sleep(0.5)
        yield url
    finally:
        _stop(proc)
        log.close()


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return Path(path).read_text()[-n:]
    except OSError:
        return ""


# On top of tests/test_workflow.py's TINY params: two distractor levels instead of the default's four.
TINIER = {"robustness.distractors": [4]}


def tiny_params(project: Path, extra: dict | None = None) -> Path:
    """Apply TINIER (+ `extra`, dotted keys) to a tiny_project's params.yaml; keys whose section is absent are skipped."""
    import yaml

    path = project / "params.yaml"
    cfg = yaml.safe_load(path.read_text())
    for key, value in {**TINIER, **(extra or {})}.items():
        *parents, leaf = key.split(".")
        node = cfg
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node[leaf] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return project


@pytest.fixture(scope="session")
def tiny_completed(tmp_path_factory) -> Path:
    """The tiny project (test_workflow.py's TINY + TINIER params) after one complete local run with the default
    profile. Built once per session; tests copy it (`copy_project`) before changing anything."""
    from test_workflow import run, tiny_project

    project = tiny_params(tiny_project(tmp_path_factory.mktemp("tiny_completed")))
    run([str(BIN / "snakemake"), "--profile", "workflow/profiles/default", "--cores", "2"], project)
    return project


def copy_project(src: Path, dst: Path) -> Path:
    """Copy a project dir keeping mtimes (and .snakemake metadata), so Snakemake sees the same state."""
    shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
    return dst


@pytest.fixture(scope="session")
def _empty_store_template(tmp_path_factory) -> Path:
    """An MLflow sqlite store with its schema created (creating one costs seconds; copying it, nothing)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    path = tmp_path_factory.mktemp("mlflow_template") / "mlruns.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_store(tmp_path, _empty_store_template) -> str:
    """A fresh, empty sqlite MLflow store in this test's tmp_path; returns its tracking URI."""
    path = tmp_path / "mlruns.db"
    shutil.copy(_empty_store_template, path)
    return f"sqlite:///{path}"
