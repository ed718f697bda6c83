"""MLflow: one run per run key, tagged for provenance; re-logging a key replaces, never duplicates.

Run key = (dataset, backbone, method, seed, stage). All writes go through `log_run`, which holds
a file lock beside the store, so parallel Snakemake jobs neither race the sqlite schema set-up
nor leave two runs for one key.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

KEY_TAGS = ("dataset", "backbone", "method", "seed", "stage")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def experiment_name(dataset: str) -> str:
    return f"fga-{dataset}"


@contextlib.contextmanager
def _store_lock(cfg: dict[str, Any]) -> Iterator[None]:
    uri = cfg["tracking"]["uri"]
    lock_path = Path(uri.removeprefix("sqlite:///") + ".lock") if uri.startswith("sqlite:///") else Path(".mlflow.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _client(cfg: dict[str, Any]):
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    import mlflow

    mlflow.set_tracking_uri(cfg["tracking"]["uri"])
    return mlflow.MlflowClient()


def _experiment_id(client, cfg: dict[str, Any], dataset: str) -> str:
    name = experiment_name(dataset)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = Path(cfg["tracking"]["artifact_root"]).resolve() / name
    return client.create_experiment(name, artifact_location=root.as_uri())


def _key_filter(key: dict[str, Any]) -> str:
    return " and ".join(f"tags.{k} = '{key[k]}'" for k in KEY_TAGS)


def log_run(
    cfg: dict[str, Any],
    key: dict[str, Any],
    *,
    params: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    step_metrics: dict[str, list[tuple[int, float]]] | None = None,
    tags: dict[str, str] | None = None,
    artifacts: list[Path] | None = None,
) -> str:
    """Create the run for `key` (deleting any earlier run with the same key) and log everything at once."""
    from mlflow.entities import Metric, Param, RunTag

    key = {k: str(key[k]) for k in KEY_TAGS}
    with _store_lock(cfg):
        client = _client(cfg)
        exp_id = _experiment_id(client, cfg, key["dataset"])
        for old in client.search_runs([exp_id], _key_filter(key)):
            client.delete_run(old.info.run_id)
        name = "/".join(key[k] for k in ("backbone", "method")) + f"/seed{key['seed']}/{key['stage']}"
        run = client.create_run(exp_id, run_name=name)
        run_id = run.info.run_id
        all_tags = {**key, "git_commit": git_commit(), **(tags or {})}
        metric_rows = [Metric(k, float(v), 0, 0) for k, v in (metrics or {}).items()]
        for series_name, series in (step_metrics or {}).items():
            metric_rows += [Metric(series_name, float(v), 0, int(step)) for step, v in series]
        param_rows = [Param(k, str(v)[:6000]) for k, v in _flatten(params or {}).items()]
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in all_tags.items()])
        for i in range(0, len(param_rows), 100):  # MLflow's per-call limits: 100 params, 1000 metrics
            client.log_batch(run_id, params=param_rows[i : i + 100])
        for i in range(0, len(metric_rows), 1000):
            client.log_batch(run_id, metrics=metric_rows[i : i + 1000])
        for path in artifacts or []:
            client.log_artifact(run_id, str(path))
        client.set_terminated(run_id)
    return run_id


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def runs_frame(cfg: dict[str, Any], datasets: list[str], stage: str):
    """Every active run of `stage` in the datasets' experiments, as a pandas DataFrame (mlflow.search_runs)."""
    import mlflow
    import pandas as pd

    with _store_lock(cfg):
        client = _client(cfg)
        names = [experiment_name(d) for d in datasets if client.get_experiment_by_name(experiment_name(d))]
        if not names:
            return pd.DataFrame()
        return mlflow.search_runs(experiment_names=names, filter_string=f"tags.stage = '{stage}'", output_format="pandas")
