"""MLflow: one run per run key, tagged for provenance; re-logging a key replaces, never duplicates.

Run key = (dataset, backbone, method, seed, stage); one experiment per dataset (``fga-<dataset>``).
Seeds hang under a parent run per (dataset, backbone, method) (tag ``mlflow.parentRunId``), so the
MLflow UI groups them; the parent carries ``stage = "group"``, which no reader of results asks for.

Concurrency. Many Snakemake/Slurm jobs log at once, to a sqlite file or to an ``mlflow server``:

- sqlite store: a file lock beside the database serialises writers on one machine (sqlite's own
  locking is not enough for MLflow's schema set-up and read-modify-write);
- any store (also an http server used from many nodes): every write is *create first, then delete
  the older duplicates*. A writer creates its run, logs everything into it, and only then searches
  the runs with its key and deletes every one but the extreme of what it sees (newest for a run key,
  oldest for a group's parent), ordered by ``(start_time, run_id)``. For any two writers at least
  one of them sees both runs (each searches after its own create), so exactly the global extreme
  survives: no duplicate, no lost run, whatever the interleaving. (Re-logging a key from another machine
  relies on the clocks agreeing to better than the time between the two logs: start_time is the writer's.)
  A writer whose run is deleted while it is still logging (a newer writer of the key finished first)
  stops logging quietly: the newer, complete run holds the key.
- a child may briefly point at a parent that a concurrent writer deleted as a duplicate; each
  writer re-points its group's children to the surviving parent, and :func:`reconcile` (run by
  ``fga report``, a single writer after all runs) repairs whatever a race left behind.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

KEY_TAGS = ("dataset", "backbone", "method", "seed", "stage")
GROUP_TAGS = ("dataset", "backbone", "method")
PARENT_STAGE = "group"
PARENT_TAG = "mlflow.parentRunId"
STAGES_WITHOUT_PARENT = ("report",)
# MLflow 3's UI opens an experiment in its "model training" views (runs table, charts) with this tag, not GenAI's
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}



def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def experiment_name(dataset: str) -> str:
    return f"fga-{dataset}"


def variant_of(cfg: dict[str, Any], method: str) -> str:
    """The `variant` tag: the architecture an ablation variant switches parts of (`arch:`), else "base"."""
    from fga.models.registry import declared_arch

    return declared_arch(cfg, method) or "base"


SERVER_SCHEMES = ("http://", "https://", "postgresql", "mysql", "mssql", "databricks")


@contextlib.contextmanager
def _store_lock(cfg: dict[str, Any]) -> Iterator[None]:
    """Serialise writers of a local store (sqlite file, file store) on this machine; servers and server
    databases serialise writes themselves, and the create-then-dedupe logging keeps them consistent."""
    uri = cfg["tracking"]["uri"]
    if uri.startswith(SERVER_SCHEMES):
        yield
        return
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
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no phoning home from pipeline jobs
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    import mlflow

    mlflow.set_tracking_uri(cfg["tracking"]["uri"])
    return mlflow.MlflowClient()


def _experiment_id(client, cfg: dict[str, Any], dataset: str) -> str:
    """Get or create the dataset's experiment; two writers creating it at once both end up with the same id."""
    from mlflow.exceptions import MlflowException

    name = experiment_name(dataset)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        root = cfg["tracking"].get("artifact_root")
        location = (Path(root).resolve() / name).as_uri() if root else None
        try:
            return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
        except MlflowException as exc:  # a concurrent writer created it first
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = client.get_experiment_by_name(name)
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    for k, v in EXPERIMENT_TAGS.items():
        if exp.tags.get(k) != v:
            client.set_experiment_tag(exp.experiment_id, k, v)
    return exp.experiment_id


def _filter(tags: dict[str, str]) -> str:
    return " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())


def _search_all(client, exp_id: str, filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([exp_id], filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _order(run) -> tuple[int, str]:
    return (run.info.start_time or 0, run.info.run_id)


def _delete_quietly(client, run_ids: Iterable[str]) -> None:
    """Delete runs; one already gone (a concurrent writer doing the same, `mlflow gc`) is fine."""
    from mlflow.exceptions import MlflowException

    for run_id in run_ids:
        try:
            client.delete_run(run_id)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise


def _dedupe_key(client, exp_id: str, key: dict[str, str]) -> str | None:
    """Keep only the newest run of `key` (of those visible now); return its id."""
    runs = sorted(_search_all(client, exp_id, _filter(key)), key=_order)
    _delete_quietly(client, [r.info.run_id for r in runs[:-1]])
    return runs[-1].info.run_id if runs else None


def _parents(client, exp_id: str, group: dict[str, str]) -> list:
    return sorted(_search_all(client, exp_id, _filter({**group, "stage": PARENT_STAGE})), key=_order)


def _ensure_parent(client, exp_id: str, group: dict[str, str], variant: str) -> str:
    """The group's parent run: the oldest active one, created when there is none."""
    parents = _parents(client, exp_id, group)
    if parents:
        return parents[0].info.run_id
    name = "/".join(group[k] for k in ("backbone", "method"))
    run = client.create_run(exp_id, run_name=name, tags={**group, "stage": PARENT_STAGE, "variant": variant,
                                                         "mlflow.note.content": f"seeds of {group['dataset']}/{name}"})
    with _unless_deleted_meanwhile(client, run.info.run_id):  # by a writer that created an older parent
        client.set_terminated(run.info.run_id)
    return _settle_parents(client, exp_id, group) or run.info.run_id


@contextlib.contextmanager
def _unless_deleted_meanwhile(client, run_id: str) -> Iterator[None]:
    """Writes into `run_id` that fail because a concurrent writer deleted it as a duplicate stop quietly."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException:
        if client.get_run(run_id).info.lifecycle_stage != "deleted":
            raise


def _settle_parents(client, exp_id: str, group: dict[str, str]) -> str | None:
    """Keep the oldest parent of the group, point every child of the group at it, delete the other parents."""
    parents = _parents(client, exp_id, group)
    if not parents:
        return None
    keep = parents[0].info.run_id
    for child in _search_all(client, exp_id, _filter(group) + f" and tags.stage != '{PARENT_STAGE}'"):
        if child.data.tags.get(PARENT_TAG) != keep:
            client.set_tag(child.info.run_id, PARENT_TAG, keep)
    _delete_quietly(client, [p.info.run_id for p in parents[1:]])
    return keep


def _artifact_items(artifacts: Iterable[Any]) -> Iterator[tuple[Path, str | None]]:
    for item in artifacts:
        path, dest = (item if isinstance(item, tuple) else (item, None))
        yield Path(path), dest


def log_run(
    cfg: dict[str, Any],
    key: dict[str, Any],
    *,
    params: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    step_metrics: dict[str, list[tuple[int, float]]] | None = None,
    tags: dict[str, str] | None = None,
    artifacts: list[Any] | None = None,
    checkpoint: Path | str | None = None,
) -> str:
    """Log one complete run for `key`, then drop every older run with the same key.

    params: logged as MLflow params (flattened) and as the artifact ``params.yaml`` (the resolved
    config the stage ran with). artifacts: paths (files or directories), or ``(path, artifact_dir)``
    pairs. checkpoint: logged under ``checkpoint/`` only when ``tracking.log_checkpoints`` is true.
    Stages other than ``report`` hang under their (dataset, backbone, method) parent run.
    Returns the id of the run that holds the key afterwards (a newer concurrent writer's, if it won).
    """
    key = {k: str(key[k]) for k in KEY_TAGS}
    group = {k: key[k] for k in GROUP_TAGS}
    variant = variant_of(cfg, key["method"])
    grouped = key["stage"] not in STAGES_WITHOUT_PARENT
    with _store_lock(cfg):
        client = _client(cfg)
        exp_id = _experiment_id(client, cfg, key["dataset"])
        parent_id = _ensure_parent(client, exp_id, group, variant) if grouped else None
        if grouped:
            name = f"{key['backbone']}/{key['method']}/seed{key['seed']}/{key['stage']}"
        else:
            name = key["stage"] if key["backbone"] == "all" else "/".join(key[k] for k in KEY_TAGS[1:])
        all_tags = {**key, "variant": variant, "git_commit": git_commit(), **(tags or {})}
        if parent_id:
            all_tags[PARENT_TAG] = parent_id
        run_id = client.create_run(exp_id, run_name=name, tags=all_tags).info.run_id
        with _unless_deleted_meanwhile(client, run_id):  # by a newer writer of the key that finished first
            _fill_run(client, cfg, run_id, params, metrics, step_metrics, artifacts, checkpoint)
        survivor = _dedupe_key(client, exp_id, key)
        if grouped:
            _settle_parents(client, exp_id, group)
    return survivor or run_id


def _fill_run(client, cfg: dict[str, Any], run_id: str, params, metrics, step_metrics, artifacts, checkpoint) -> None:
    """Log params, metrics, artifacts (and the checkpoint when asked) into a created run, then end it."""
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    metric_rows = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()]
    for series_name, series in (step_metrics or {}).items():
        metric_rows += [Metric(series_name, float(v), now, int(step)) for step, v in series]
    param_rows = [Param(k, str(v)[:6000]) for k, v in _flatten(params or {}).items()]
    for i in range(0, len(param_rows), 100):  # MLflow's per-call limits: 100 params, 1000 metrics
        client.log_batch(run_id, params=param_rows[i : i + 100])
    for i in range(0, len(metric_rows), 1000):
        client.log_batch(run_id, metrics=metric_rows[i : i + 1000])
    if params:
        client.log_dict(run_id, params, "params.yaml")
    for path, dest in _artifact_items(artifacts or []):
        if path.is_dir():
            client.log_artifacts(run_id, str(path), dest)
        else:
            client.log_artifact(run_id, str(path), dest)
    if checkpoint is not None and cfg["tracking"].get("log_checkpoints", False):
        client.log_artifact(run_id, str(checkpoint), "checkpoint")
    client.set_terminated(run_id)


def reconcile(cfg: dict[str, Any], datasets: list[str]) -> int:
    """Repair what concurrent writers may leave behind: one run per key, one parent per group, children
    pointing at it. Safe to run any time; ``fga report`` runs it. Returns the number of groups checked."""
    n = 0
    with _store_lock(cfg):
        client = _client(cfg)
        for dataset in datasets:
            exp = client.get_experiment_by_name(experiment_name(dataset))
            if exp is None:
                continue
            runs = [r for r in _search_all(client, exp.experiment_id, "")
                    if all(k in r.data.tags for k in KEY_TAGS)]  # fga's own runs (not parents, not foreign)
            for values in {tuple(r.data.tags[k] for k in KEY_TAGS) for r in runs}:
                _dedupe_key(client, exp.experiment_id, dict(zip(KEY_TAGS, values)))
            groups = {tuple(r.data.tags[k] for k in GROUP_TAGS) for r in runs
                      if r.data.tags["stage"] not in STAGES_WITHOUT_PARENT}
            for values in groups:
                group = dict(zip(GROUP_TAGS, values))
                if not _parents(client, exp.experiment_id, group):
                    _ensure_parent(client, exp.experiment_id, group, variant_of(cfg, group["method"]))
                _settle_parents(client, exp.experiment_id, group)
                n += 1
    return n


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


def list_artifacts(cfg: dict[str, Any], run_id: str, path: str | None = None) -> list[str]:
    """Artifact paths (files, recursively) of a run, relative to its artifact root."""
    client = _client(cfg)
    out: list[str] = []
    for info in client.list_artifacts(run_id, path):
        out.extend(list_artifacts(cfg, run_id, info.path) if info.is_dir else [info.path])
    return out


def download_artifact(cfg: dict[str, Any], run_id: str, path: str, dst: Path) -> Path:
    """Download one artifact of a run into directory `dst`; returns the local path."""
    import mlflow

    _client(cfg)
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst)))
