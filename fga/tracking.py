"""MLflow: one run per run key, tagged for provenance; re-logging a key replaces, never duplicates.

Run key = (dataset, backbone, method, seed, stage, experiment); ``experiment`` is the params key of that
name ("default" when absent), so experiments sit side by side and rerunning one never replaces another's
runs. One MLflow experiment per (dataset, experiment): ``fga-<dataset>`` for "default" (the name stores
made before experiments existed use; their runs, without an ``experiment`` tag, count as "default"),
``fga-<dataset>-<experiment>`` otherwise.
Seeds hang under a parent run per (dataset, backbone, method, experiment) (tag ``mlflow.parentRunId``),
so the MLflow UI groups them; the parent carries ``stage = "group"``, which no reader of results asks
for, and the mean and std over its seeds of the headline evaluate metrics (fga.tracking_aggregates).

Each run also carries what the MLflow UI reads: its dataset as a dataset input (name, digest = the
``data_hash`` tag, context = the split, else the stage) and the source tags (``mlflow.source.*``).

Artifacts. MLflow stores an experiment's artifact location as an absolute URI, even when
``tracking.artifact_root`` is relative. So an experiment also records the project root it was created
in (tag ``fga.project_root``), and the reading functions here (:func:`list_artifacts`,
:func:`download_artifact`) read a ``file://`` location under that root from the current project root
when the recorded one is gone: a moved or copied checkout keeps serving its artifacts.

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

from fga.tracking_artifacts import legacy_project_root, readable_artifact_uri
from fga.tracking_aggregates import AGGREGATED_STAGE, newest_finished_per_seed, seed_aggregates
from fga.tracking_params import param_batches

# `text` (the caption encoder, grid.text_encoders): runs logged before that axis existed lack it and are not
# matched by key any more; the report reads them as the BiGRU's
KEY_TAGS = ("dataset", "backbone", "text", "method", "seed", "stage")
GROUP_TAGS = ("dataset", "backbone", "text", "method")
EXPERIMENT_TAG = "experiment"  # part of the run key; absent (runs logged before it existed) = DEFAULT_EXPERIMENT
DEFAULT_EXPERIMENT = "default"
PROJECT_ROOT_TAG = "fga.project_root"
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


def experiment_of(cfg: dict[str, Any]) -> str:
    """The params key `experiment` (schema: a safe name), "default" when absent."""
    return str(cfg.get("experiment") or DEFAULT_EXPERIMENT)


def experiment_name(dataset: str, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """The MLflow experiment of a dataset's runs in one fga experiment."""
    return f"fga-{dataset}" if experiment == DEFAULT_EXPERIMENT else f"fga-{dataset}-{experiment}"


def variant_of(cfg: dict[str, Any], method: str) -> str:
    """The `variant` tag: the architecture an ablation variant switches parts of (`arch:`), else "base"."""
    from fga.models.registry import arch_name

    return arch_name(cfg, method, default="base")


SERVER_SCHEMES = ("http://", "https://", "postgresql", "mysql", "mssql", "databricks")
# Bounded backoff of MLflow's HTTP client (about 1+2+4+8 s and jitter per request) instead of its default of
# minutes: a job whose server went away gives up soon and leaves its run to `fga tracking sync`
# (fga/tracking_sync.py). The MLflow environment variables of the same names still override these.
HTTP_RETRY_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


@contextlib.contextmanager
def _store_lock(cfg: dict[str, Any]) -> Iterator[None]:
    """Serialise writers of a local store (sqlite file, file store) on this machine; servers and server
    databases serialise writes themselves, and the create-then-dedupe logging keeps them consistent."""
    uri = cfg["tracking"]["uri"]
    if uri.startswith(SERVER_SCHEMES):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
    lock_path = Path(f"{db}.lock") if db else Path(".mlflow.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            if db:
                _create_sqlite_store(db)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _create_sqlite_store(db: Path) -> None:
    """Give a new sqlite store its schema under a temporary name, then move it into place (called under the
    store lock). MLflow creates its tables and runs its migrations one statement after another: a job killed
    in the middle (measured by benchmarks/bench_faults.py) left a database that every later job failed to open
    ("table ... already exists")."""
    if db.exists():
        return
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH  # what MLflow itself would pass
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    _quiet_mlflow_logs()
    for stale in db.parent.glob(f".{db.name}.*.partial"):  # of a creator killed before; we hold the lock
        stale.unlink()
    partial = db.with_name(f".{db.name}.{os.getpid()}.partial")
    store = SqlAlchemyStore(f"sqlite:///{partial}", DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)
    store.engine.dispose()
    os.replace(partial, db)


def _quiet_mlflow_logs() -> None:
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)


def _client(cfg: dict[str, Any]):
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no phoning home from pipeline jobs
    for name, value in HTTP_RETRY_ENV.items():
        os.environ.setdefault(name, value)
    _quiet_mlflow_logs()
    import mlflow

    mlflow.set_tracking_uri(cfg["tracking"]["uri"])
    return mlflow.MlflowClient()


def _experiment_id(client, cfg: dict[str, Any], name: str) -> str:
    """Get or create the named experiment; two writers creating it at once both end up with the same id."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        root = cfg["tracking"].get("artifact_root")
        location = (Path(root).resolve() / name).as_uri() if root else None
        tags = {**EXPERIMENT_TAGS, PROJECT_ROOT_TAG: Path.cwd().resolve().as_uri()}
        try:
            return client.create_experiment(name, artifact_location=location, tags=tags)
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


def _experiment_tag(run) -> str:
    return run.data.tags.get(EXPERIMENT_TAG, DEFAULT_EXPERIMENT)


def _search_keyed(client, exp_id: str, tags: dict[str, str], extra: str = "") -> list:
    """Active runs whose tags equal `tags` (and match the filter `extra`). The experiment tag is compared
    here, not in MLflow's filter: runs logged before it existed lack it and belong to "default"."""
    experiment = tags.get(EXPERIMENT_TAG)
    filter_string = " and ".join(f for f in (_filter({k: v for k, v in tags.items() if k != EXPERIMENT_TAG}), extra) if f)
    runs = _search_all(client, exp_id, filter_string)
    return runs if experiment is None else [r for r in runs if _experiment_tag(r) == experiment]


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
    runs = sorted(_search_keyed(client, exp_id, key), key=_order)
    _delete_quietly(client, [r.info.run_id for r in runs[:-1]])
    return runs[-1].info.run_id if runs else None


def _dedupe_group(client, exp_id: str, group: dict[str, str]) -> None:
    """_dedupe_key for every key of the group's children at once: one search for a whole batch of them."""
    newest: dict[tuple, Any] = {}
    for run in sorted(_search_keyed(client, exp_id, group, f"tags.stage != '{PARENT_STAGE}'"), key=_order):
        slot = tuple(run.data.tags.get(k) for k in KEY_TAGS)
        if slot in newest:
            _delete_quietly(client, [newest[slot].info.run_id])
        newest[slot] = run


def _parents(client, exp_id: str, group: dict[str, str]) -> list:
    return sorted(_search_keyed(client, exp_id, {**group, "stage": PARENT_STAGE}), key=_order)


def _ensure_parent(client, exp_id: str, group: dict[str, str], variant: str) -> str:
    """The group's parent run: the oldest active one, created when there is none."""
    parents = _parents(client, exp_id, group)
    if parents:
        return parents[0].info.run_id
    name = "/".join(group[k] for k in ("backbone", "text", "method"))
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
    for child in _search_keyed(client, exp_id, group, f"tags.stage != '{PARENT_STAGE}'"):
        if child.data.tags.get(PARENT_TAG) != keep:
            client.set_tag(child.info.run_id, PARENT_TAG, keep)
    _delete_quietly(client, [p.info.run_id for p in parents[1:]])
    return keep


def _artifact_items(artifacts: Iterable[Any]) -> Iterator[tuple[Path, str | None]]:
    for item in artifacts:
        path, dest = (item if isinstance(item, tuple) else (item, None))
        yield Path(path), dest


class LogSession:
    """One store lock and one MLflow client for a batch of :func:`log_run` calls (``fga tracking sync``), with the
    experiment ids and the groups' parents it has resolved: a batch asks the store for each of them once."""

    def __init__(self, cfg: dict[str, Any], client) -> None:
        self.cfg = cfg
        self.client = client
        self._experiments: dict[str, str] = {}
        self._parents: dict[tuple[str, ...], str] = {}
        self._unsettled: set[tuple[str, ...]] = set()  # groups with runs logged with settle=False

    def experiment_id(self, name: str) -> str:
        if name not in self._experiments:
            self._experiments[name] = _experiment_id(self.client, self.cfg, name)
        return self._experiments[name]

    def parent(self, exp_id: str, group: dict[str, str], variant: str) -> str:
        slot = (exp_id, *group.values())
        if slot not in self._parents:
            self._parents[slot] = _ensure_parent(self.client, exp_id, group, variant)
        return self._parents[slot]

    def defer_settling(self, exp_id: str, group: dict[str, str]) -> None:
        self._unsettled.add((exp_id, *group.values()))

    def settle(self, exp_id: str, group: dict[str, str], fallback_parent: str, aggregate: bool) -> None:
        """One parent for the group, every child pointing at it (and its seed aggregates, when `aggregate`); first
        one run per key among its children when runs of the group were logged with settle=False."""
        slot = (exp_id, *group.values())
        if slot in self._unsettled:
            _dedupe_group(self.client, exp_id, group)
            self._unsettled.discard(slot)
        parent_id = _settle_parents(self.client, exp_id, group) or fallback_parent
        self._parents[slot] = parent_id
        if aggregate:
            _log_seed_aggregates(self.client, exp_id, group, parent_id)


@contextlib.contextmanager
def log_session(cfg: dict[str, Any]) -> Iterator[LogSession]:
    """Hold the store lock and one client for many log_run(..., session=) calls."""
    with _store_lock(cfg):
        yield LogSession(cfg, _client(cfg))


def run_group(cfg: dict[str, Any], key: dict[str, Any]) -> tuple[str, ...] | None:
    """The parent group (GROUP_TAGS + experiment) a run of `key` hangs under; None for the stages without a parent."""
    if str(key["stage"]) in STAGES_WITHOUT_PARENT:
        return None
    return (*(str(key[k]) for k in GROUP_TAGS), experiment_of(cfg))


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
    tables: dict[str, Any] | None = None,
    session: LogSession | None = None,
    settle: bool = True,
    aggregate: bool | None = None,
) -> str:
    """Log one complete run for `key` (+ the params' ``experiment``), then drop every older run with that key.

    params: logged as MLflow params (flattened to ``section.key``, values cut to MLflow's length limit)
    and as the artifact ``params.yaml`` (the resolved config the stage ran with). artifacts: paths (files or
    directories), or ``(path, artifact_dir)`` pairs. checkpoint: logged under ``checkpoint/`` (beside the run's
    ``params.yaml``) only when ``tracking.log_checkpoints`` is true. tables: artifact file (``.json``) -> pandas
    DataFrame, logged with MLflow's ``log_table`` (the UI shows them as sortable tables).
    Stages other than ``report`` hang under their (dataset, backbone, method, experiment) parent run; an
    evaluate run also refreshes the parent's seed aggregates. tags: ``data_hash`` (and ``split``) also make the
    run's dataset input; a kept run's (fga.tracking_sync) carry the job's ``git_commit`` and ``variant``.
    session: a :func:`log_session` shared by a batch; settle=False leaves the key's older runs, the group's parent and
    its seed aggregates (if `aggregate`; default: evaluate) to the group's settle=True call (returns the new run's id).
    Returns the id of the run that holds the key afterwards (a newer concurrent writer's, if it won).
    """
    if session is None:
        with log_session(cfg) as own:
            return log_run(cfg, key, params=params, metrics=metrics, step_metrics=step_metrics, tags=tags,
                           artifacts=artifacts, checkpoint=checkpoint, tables=tables, session=own, settle=settle,
                           aggregate=aggregate)
    key = {**{k: str(key[k]) for k in KEY_TAGS}, EXPERIMENT_TAG: experiment_of(cfg)}
    group = {k: key[k] for k in (*GROUP_TAGS, EXPERIMENT_TAG)}
    variant = (tags or {}).get("variant") or variant_of(cfg, key["method"])  # a kept run's: the job's
    grouped = key["stage"] not in STAGES_WITHOUT_PARENT
    if grouped:
        name = f"{key['backbone']}/{key['text']}/{key['method']}/seed{key['seed']}/{key['stage']}"
    else:
        name = key["stage"] if key["backbone"] == "all" else "/".join(key[k] for k in KEY_TAGS[1:])
    source = {} if "git_commit" in (tags or {}) else source_tags(key["stage"])
    all_tags = {**key, "variant": variant, **source, **(tags or {})}
    client = session.client
    exp_id = session.experiment_id(experiment_name(key["dataset"], key[EXPERIMENT_TAG]))
    if grouped:
        all_tags[PARENT_TAG] = session.parent(exp_id, group, variant)
    run_id = client.create_run(exp_id, run_name=name, tags=all_tags).info.run_id
    with _unless_deleted_meanwhile(client, run_id):  # by a newer writer of the key that finished first
        _fill_run(client, cfg, run_id, params, metrics, step_metrics, artifacts, checkpoint,
                  _dataset_inputs(key, all_tags), tables)
    if grouped and not settle:
        session.defer_settling(exp_id, group)
        return run_id  # the key's older runs go when the group settles
    survivor = _dedupe_key(client, exp_id, key)
    if grouped:
        session.settle(exp_id, group, all_tags[PARENT_TAG],
                       key["stage"] == AGGREGATED_STAGE if aggregate is None else aggregate)
    return survivor or run_id


def source_tags(stage: str) -> dict[str, str]:
    """Provenance tags: fga's own ``git_commit`` and the system tags the MLflow UI shows (source, commit)."""
    commit = git_commit()
    tags = {"git_commit": commit, "mlflow.source.name": f"fga {stage}", "mlflow.source.type": "LOCAL"}
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    return tags


def _dataset_inputs(key: dict[str, str], tags: dict[str, str]) -> list:
    """The run's dataset as an MLflow dataset input (the runs list's Dataset column): name = the dataset,
    digest = the run's ``data_hash`` tag, context = its split (evaluate, robustness), else its stage.
    Nothing for runs without a data hash (the report's)."""
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    digest = tags.get("data_hash")
    if not digest:
        return []
    source = json.dumps({"uri": f"data/{key['dataset']}/dataset.json"})  # the data contract's file, project-relative
    dataset = Dataset(name=key["dataset"], digest=digest, source_type="local", source=source)
    return [DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, tags.get("split") or key["stage"])])]


def _log_seed_aggregates(client, exp_id: str, group: dict[str, str], parent_id: str) -> None:
    """(Re)compute the parent's seed aggregates from the group's evaluate runs visible now. Stamped with the
    time the search starts: each writer searches after its run finished, so the latest-stamped aggregate has
    seen every finished seed run, and MLflow shows the latest-stamped value whichever log lands last."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    seed_runs = newest_finished_per_seed(_search_keyed(client, exp_id, {**group, "stage": AGGREGATED_STAGE}))
    rows = [Metric(name, value, now, 0) for name, value in seed_aggregates(seed_runs).items()]
    with _unless_deleted_meanwhile(client, parent_id):  # a concurrent writer kept an older parent
        client.log_batch(parent_id, metrics=rows)


def _fill_run(client, cfg: dict[str, Any], run_id: str, params, metrics, step_metrics, artifacts, checkpoint,
              dataset_inputs: list, tables) -> None:
    """Log params, metrics, dataset inputs, artifacts, tables (and the checkpoint when asked) into a created run, then
    end it."""
    from itertools import zip_longest

    from mlflow.entities import Metric
    from mlflow.utils.validation import MAX_ENTITIES_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

    now = int(time.time() * 1000)
    metric_rows = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()]
    for series_name, series in (step_metrics or {}).items():
        metric_rows += [Metric(series_name, float(v), now, int(step)) for step, v in series]
    # params and metrics share the log_batch calls (each one store transaction), within MLflow's per-call limits
    # (100 params, 1000 entities in all)
    room = MAX_ENTITIES_PER_BATCH - MAX_PARAMS_TAGS_PER_BATCH
    metric_batches = [metric_rows[i : i + room] for i in range(0, len(metric_rows), room)]
    for param_batch, metric_batch in zip_longest(param_batches(params or {}), metric_batches, fillvalue=[]):
        client.log_batch(run_id, params=param_batch, metrics=metric_batch)
    if dataset_inputs:
        _log_inputs(client, run_id, dataset_inputs)
    if params:
        client.log_dict(run_id, params, "params.yaml")
    for path, dest in _artifact_items(artifacts or []):
        if path.is_dir():
            client.log_artifacts(run_id, str(path), dest)
        else:
            client.log_artifact(run_id, str(path), dest)
    for name, frame in (tables or {}).items():
        client.log_table(run_id, frame, name)
    if checkpoint is not None and cfg["tracking"].get("log_checkpoints", False):
        client.log_artifact(run_id, str(checkpoint), "checkpoint")
    client.set_terminated(run_id)


def _log_inputs(client, run_id: str, dataset_inputs: list) -> None:
    """log_inputs, once more when the first try lost the race of registering the same dataset (its name and
    digest are unique per experiment; a store checks, then inserts)."""
    from mlflow.exceptions import MlflowException

    try:
        client.log_inputs(run_id, datasets=dataset_inputs)
    except MlflowException:
        client.log_inputs(run_id, datasets=dataset_inputs)


def reconcile(cfg: dict[str, Any], datasets: list[str]) -> int:
    """Repair what concurrent writers may leave behind in the params' experiment: one run per key, one parent
    per group, children pointing at it, the parent's seed aggregates up to date. Safe to run any time;
    ``fga report`` runs it. Returns the number of groups checked."""
    n = 0
    experiment = experiment_of(cfg)
    with _store_lock(cfg):
        client = _client(cfg)
        for dataset in datasets:
            exp = client.get_experiment_by_name(experiment_name(dataset, experiment))
            if exp is None:
                continue
            runs = [r for r in _search_all(client, exp.experiment_id, "")  # fga's own runs (not parents, not foreign)
                    if all(k in r.data.tags for k in KEY_TAGS) and _experiment_tag(r) == experiment]
            for values in {tuple(r.data.tags[k] for k in KEY_TAGS) for r in runs}:
                _dedupe_key(client, exp.experiment_id, {**dict(zip(KEY_TAGS, values)), EXPERIMENT_TAG: experiment})
            groups = {tuple(r.data.tags[k] for k in GROUP_TAGS) for r in runs
                      if r.data.tags["stage"] not in STAGES_WITHOUT_PARENT}
            for values in groups:
                group = {**dict(zip(GROUP_TAGS, values)), EXPERIMENT_TAG: experiment}
                if not _parents(client, exp.experiment_id, group):
                    _ensure_parent(client, exp.experiment_id, group, variant_of(cfg, group["method"]))
                parent_id = _settle_parents(client, exp.experiment_id, group)
                if parent_id:
                    _log_seed_aggregates(client, exp.experiment_id, group, parent_id)
                n += 1
    return n


def runs_frame(cfg: dict[str, Any], datasets: list[str], stage: str):
    """Every active run of `stage` of the params' experiment in the datasets' MLflow experiments, as a pandas
    DataFrame (mlflow.search_runs)."""
    import mlflow
    import pandas as pd

    experiment = experiment_of(cfg)
    with _store_lock(cfg):
        client = _client(cfg)
        names = [experiment_name(d, experiment) for d in datasets
                 if client.get_experiment_by_name(experiment_name(d, experiment))]
        if not names:
            return pd.DataFrame()
        frame = mlflow.search_runs(experiment_names=names, filter_string=f"tags.stage = '{stage}'", output_format="pandas")
    column = f"tags.{EXPERIMENT_TAG}"
    if column in frame.columns:
        frame = frame[frame[column].fillna(DEFAULT_EXPERIMENT) == experiment].reset_index(drop=True)
    return frame


def list_artifacts(cfg: dict[str, Any], run_id: str, path: str | None = None) -> list[str]:
    """Artifact paths (files, recursively) of a run, relative to its artifact root."""
    repo = _artifact_repository(cfg, run_id)

    def walk(under: str | None) -> list[str]:
        out: list[str] = []
        for info in repo.list_artifacts(under):
            out.extend(walk(info.path) if info.is_dir else [info.path])
        return out

    return walk(path)


def download_artifact(cfg: dict[str, Any], run_id: str, path: str, dst: Path) -> Path:
    """Download one artifact of a run into directory `dst`; returns the local path."""
    Path(dst).mkdir(parents=True, exist_ok=True)
    return Path(_artifact_repository(cfg, run_id).download_artifacts(path, dst_path=str(dst)))


def _artifact_repository(cfg: dict[str, Any], run_id: str):
    """The run's artifact repository, at the location :func:`readable_artifact_uri` reads it from."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    client = _client(cfg)
    run = client.get_run(run_id)
    exp = client.get_experiment(run.info.experiment_id)
    recorded_root = exp.tags.get(PROJECT_ROOT_TAG) or legacy_project_root(
        cfg["tracking"].get("artifact_root"), exp.name, exp.artifact_location)
    uri = readable_artifact_uri(run.info.artifact_uri, recorded_root, Path.cwd().resolve().as_uri())
    return get_artifact_repository(uri, tracking_uri=cfg["tracking"]["uri"])
