"""Runs kept on disk for later logging (deferred, or missed by a tracking server), logged by `fga tracking sync`.

Deferred runs: a workflow job (``--defer-tracking``, which the Snakefile's jobs pass) does not log its run: it
writes the record described below and returns, without importing MLflow (~2-3 s a job), and the workflow logs
every kept run at its end (the Snakefile's onsuccess/onerror handlers), as ``fga report`` does before it reads
MLflow. One :func:`sync` logs the whole batch under one store lock and one client, settling each group's parent
and seed aggregates once, after its last run: MLflow ends up holding what immediate logging would have logged.

Missed runs: a stage's results are its files (metrics.json, robustness.json, ...); MLflow holds a copy. When the
tracking server is unreachable after fga.tracking's bounded retries, :func:`log_or_keep` writes what the stage meant
to log (the run key and log_run's arguments) as one JSON record under ``<logs>/tracking_pending/`` and the job
still succeeds, printing one line. :func:`sync` (``fga tracking sync``, and the start of ``fga report``) logs every
record through the same ``log_run`` and deletes it: the run key dedup there makes it idempotent, and a run the
server was left holding half-logged (RUNNING) is replaced. A later successful log of the same key deletes the
record it supersedes.
"""
from __future__ import annotations

import contextlib
import sys
import urllib.request
from pathlib import Path
from typing import Any

from fga.errors import UserError
from fga.io import read_json, write_json
from fga.paths import output_roots
from fga.tracking import (AGGREGATED_STAGE, KEY_TAGS, SERVER_SCHEMES, log_run, log_session, run_group, source_tags,
                          variant_of)

PENDING_DIR = "tracking_pending"
HEALTH_TIMEOUT_S = 5


def pending_dir(cfg: dict[str, Any]) -> Path:
    """Where the params' experiment keeps the runs the server missed."""
    return Path(output_roots(cfg).logs) / PENDING_DIR


def kept_records(logs_root: str | Path) -> list[Path]:
    """The kept runs' records under an experiment's logs root, in name order: a directory listing, no MLflow (the
    workflow's check before it starts `fga tracking sync`)."""
    folder = Path(logs_root) / PENDING_DIR
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def _record_path(cfg: dict[str, Any], key: dict[str, Any]) -> Path:
    return pending_dir(cfg) / (".".join(str(key[k]) for k in KEY_TAGS) + ".json")


def server_unreachable(uri: str) -> bool:
    """True when `uri` is an http(s) tracking server that does not answer its /health endpoint."""
    if not uri.startswith(("http://", "https://")):
        return False
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=HEALTH_TIMEOUT_S):
            return False
    except OSError:
        return True


def _to_record(cfg: dict[str, Any], key: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """log_run's arguments as JSON: artifact paths as strings, tables (DataFrames) in pandas' split layout, and the
    job's source tags (git commit) and variant: what it ran, not what the logging process has checked out (and
    no model registry, hence no torch, in that process)."""
    record = {k: v for k, v in kwargs.items() if k not in ("artifacts", "checkpoint", "tables")}
    record["tags"] = {**source_tags(str(key["stage"])), "variant": variant_of(cfg, str(key["method"])),
                      **(kwargs.get("tags") or {})}
    pairs = (item if isinstance(item, tuple) else (item, None) for item in kwargs.get("artifacts") or [])
    record["artifacts"] = [[str(path), dest] for path, dest in pairs]
    if kwargs.get("checkpoint") is not None:
        record["checkpoint"] = str(kwargs["checkpoint"])
    if kwargs.get("tables"):
        record["tables"] = {name: frame.to_dict(orient="split") for name, frame in kwargs["tables"].items()}
    return {"key": {k: key[k] for k in KEY_TAGS}, "log_run": record}


def _from_record(record: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    kwargs = dict(record["log_run"])
    kwargs["artifacts"] = [(Path(p), d) for p, d in kwargs.get("artifacts") or []]
    if kwargs.get("step_metrics"):
        kwargs["step_metrics"] = {k: [tuple(row) for row in rows] for k, rows in kwargs["step_metrics"].items()}
    if kwargs.get("tables"):
        import pandas as pd

        kwargs["tables"] = {name: pd.DataFrame(**split) for name, split in kwargs["tables"].items()}
    return record["key"], kwargs


def keep(cfg: dict[str, Any], key: dict[str, Any], **kwargs: Any) -> Path:
    """Write log_run's arguments as the key's record for :func:`sync` (replacing an older one); returns its path."""
    path = _record_path(cfg, key)
    write_json(path, _to_record(cfg, key, kwargs))
    return path


def log_or_keep(cfg: dict[str, Any], key: dict[str, Any], *, defer: bool = False, **kwargs: Any) -> str | None:
    """log_run, or keep the run for `fga tracking sync` (returns None): with `defer` (``--defer-tracking``: no
    MLflow in the job at all, silently), or when the tracking server is unreachable (saying so in one line)."""
    if defer:
        keep(cfg, key, **kwargs)
        return None
    uri = cfg["tracking"]["uri"]
    try:
        run_id = log_run(cfg, key, **kwargs)
    except Exception as exc:  # noqa: BLE001 -- MLflow wraps connection errors in several types
        if not uri.startswith(SERVER_SCHEMES) or not server_unreachable(uri):
            raise
        path = keep(cfg, key, **kwargs)
        print(f"fga: tracking server {uri} unreachable ({exc.__class__.__name__}); the results are on disk and the "
              f"run is kept in {path}: run `fga tracking sync` when the server is back", file=sys.stderr, flush=True)
        return None
    _record_path(cfg, key).unlink(missing_ok=True)  # superseded by this newer log of the key
    return run_id


def log_train_run(cfg: dict[str, Any], key: dict[str, Any], meta: dict[str, Any], checkpoint: Path,
                  tags: dict[str, str], metrics: dict[str, float] | None = None, defer: bool = False) -> str | None:
    """log_or_keep a finished training run (fga.train's meta): the best validation rSum and its epoch (+ `metrics`),
    every per-epoch history value as a step metric (step = epoch), the method's resolved params."""
    from fga.tracking_params import resolved_run_params

    steps: dict[str, list[tuple[int, float]]] = {}
    for row in meta["history"]:
        for name, value in row.items():
            if name != "epoch":
                steps.setdefault(name, []).append((row["epoch"], value))
    return log_or_keep(cfg, key, defer=defer, params=resolved_run_params(cfg, key["backbone"], key["method"]),
                       metrics={"best_val_rsum": meta["best"]["rsum"], "best_epoch": meta["best"]["epoch"],
                                **(metrics or {})},
                       step_metrics=steps, tags=tags, checkpoint=checkpoint)  # checkpoint: if tracking.log_checkpoints


def pending(cfg: dict[str, Any]) -> list[Path]:
    """The params' experiment's kept runs' records, in name order."""
    return kept_records(output_roots(cfg).logs)


def sync(cfg: dict[str, Any], quiet: bool = False) -> int:
    """Log every kept run of the params' experiment (idempotent: one run per key); returns how many were logged.
    (The records live under the experiment's own logs root, so another experiment's are not touched.)
    Nothing pending costs a directory listing: MLflow is imported only when there is something to log.
    One store lock and client for the batch; a group's parent and seed aggregates are settled after its last
    record, as immediate logging leaves them after the group's last run. A record is deleted once logged, so an
    interrupted sync logs the rest next time."""
    records = pending(cfg)
    if not records:
        return 0
    uri = cfg["tracking"]["uri"]
    if server_unreachable(uri):
        raise UserError(f"{uri}: tracking server unreachable; {len(records)} runs stay kept in {pending_dir(cfg)}; "
                        "start the server (or fix tracking.uri in params.yaml) and re-run `fga tracking sync`")
    with log_session(cfg) as session:
        # read under the store lock: a concurrent sync that logged a record first has deleted it
        kept = [(path, path.stat().st_ino, *_from_record(read_json(path, "kept tracking run")))
                for path in records if path.exists()]
        groups = [run_group(cfg, key) for _, _, key, _ in kept]
        last_of = {group: i for i, group in enumerate(groups)}
        aggregated = {group for (_, _, key, _), group in zip(kept, groups) if key["stage"] == AGGREGATED_STAGE}
        for i, (path, inode, key, kwargs) in enumerate(kept):
            log_run(cfg, key, **kwargs, session=session, settle=last_of[groups[i]] == i,
                    aggregate=groups[i] in aggregated)
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_ino == inode:  # not a newer record of the key, written (replaced) meanwhile
                    path.unlink()
            if not quiet:
                print(f"logged {path.name}", flush=True)
    return len(kept)
