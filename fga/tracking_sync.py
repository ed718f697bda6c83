"""Runs a tracking server missed: kept on disk when logging fails, re-logged by `fga tracking sync`.

A stage's results are its files (metrics.json, robustness.json, ...); MLflow holds a copy. When the tracking
server is unreachable after fga.tracking's bounded retries, :func:`log_or_keep` writes what the stage meant to log
(the run key and log_run's arguments) as one JSON record under ``<logs>/tracking_pending/`` and the job still
succeeds, printing one line. :func:`sync` (``fga tracking sync``, and the start of ``fga report``) logs every
record through the same ``log_run`` and deletes it: the run key dedup there makes it idempotent, and a run the
server was left holding half-logged (RUNNING) is replaced. A later successful log of the same key deletes the
record it supersedes.
"""
from __future__ import annotations

import sys
import urllib.request
from pathlib import Path
from typing import Any

from fga.errors import UserError
from fga.io import read_json, write_json
from fga.paths import output_roots
from fga.tracking import KEY_TAGS, SERVER_SCHEMES, log_run

PENDING_DIR = "tracking_pending"
HEALTH_TIMEOUT_S = 5


def pending_dir(cfg: dict[str, Any]) -> Path:
    """Where the params' experiment keeps the runs the server missed."""
    return Path(output_roots(cfg).logs) / PENDING_DIR


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


def _to_record(key: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """log_run's arguments as JSON: artifact paths as strings, tables (DataFrames) in pandas' split layout."""
    record = {k: v for k, v in kwargs.items() if k not in ("artifacts", "checkpoint", "tables")}
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


def log_or_keep(cfg: dict[str, Any], key: dict[str, Any], **kwargs: Any) -> str | None:
    """log_run, or, when the tracking server is unreachable, keep the run for `fga tracking sync` (returns None)."""
    uri = cfg["tracking"]["uri"]
    try:
        run_id = log_run(cfg, key, **kwargs)
    except Exception as exc:  # noqa: BLE001 -- MLflow wraps connection errors in several types
        if not uri.startswith(SERVER_SCHEMES) or not server_unreachable(uri):
            raise
        path = _record_path(cfg, key)
        write_json(path, _to_record(key, kwargs))
        print(f"fga: tracking server {uri} unreachable ({exc.__class__.__name__}); the results are on disk and the "
              f"run is kept in {path}: run `fga tracking sync` when the server is back", file=sys.stderr, flush=True)
        return None
    _record_path(cfg, key).unlink(missing_ok=True)  # superseded by this newer log of the key
    return run_id


def log_train_run(cfg: dict[str, Any], key: dict[str, Any], meta: dict[str, Any], checkpoint: Path,
                  tags: dict[str, str], metrics: dict[str, float] | None = None) -> str | None:
    """log_or_keep a finished training run (fga.train's meta): the best validation rSum and its epoch (+ `metrics`),
    every per-epoch history value as a step metric (step = epoch), the method's resolved params."""
    from fga.tracking_params import resolved_run_params

    steps: dict[str, list[tuple[int, float]]] = {}
    for row in meta["history"]:
        for name, value in row.items():
            if name != "epoch":
                steps.setdefault(name, []).append((row["epoch"], value))
    return log_or_keep(cfg, key, params=resolved_run_params(cfg, key["backbone"], key["method"]),
                       metrics={"best_val_rsum": meta["best"]["rsum"], "best_epoch": meta["best"]["epoch"],
                                **(metrics or {})},
                       step_metrics=steps, tags=tags, checkpoint=checkpoint)  # checkpoint: if tracking.log_checkpoints


def pending(cfg: dict[str, Any]) -> list[Path]:
    return sorted(pending_dir(cfg).glob("*.json"))


def sync(cfg: dict[str, Any], quiet: bool = False) -> int:
    """Log every kept run of the params' experiment (idempotent: one run per key); returns how many were logged.
    (The records live under the experiment's own logs root, so another experiment's are not touched.)"""
    records = pending(cfg)
    uri = cfg["tracking"]["uri"]
    if records and server_unreachable(uri):
        raise UserError(f"{uri}: tracking server unreachable; {len(records)} runs stay kept in {pending_dir(cfg)}; "
                        "start the server (or fix tracking.uri in params.yaml) and re-run `fga tracking sync`")
    for path in records:
        key, kwargs = _from_record(read_json(path, "kept tracking run"))
        log_run(cfg, key, **kwargs)
        path.unlink()
        if not quiet:
            print(f"logged {path.name}", flush=True)
    return len(records)
