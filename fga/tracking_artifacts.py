"""Where a run's artifacts are read from after the checkout moved.

MLflow records an experiment's artifact location as an absolute URI (a relative ``artifact_location`` is
resolved when the experiment is created), so a store copied or moved with its project would point at the
old place. fga records the project root beside it (fga.tracking) and reads a ``file://`` location under
that root from the current project root when the old place is gone.
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, unquote, urlparse


def _local_path(file_uri: str) -> Path:
    return Path(unquote(urlparse(file_uri).path))


def legacy_project_root(artifact_root: str | None, experiment: str, location: str | None) -> str | None:
    """The project root (a ``file://`` URI) of an experiment created before fga recorded it: with a relative
    ``tracking.artifact_root`` its location was ``<root>/<artifact_root>/<experiment>``; None otherwise."""
    if not artifact_root or Path(artifact_root).is_absolute() or ".." in Path(artifact_root).parts:
        return None
    suffix = "/" + quote(Path(artifact_root, experiment).as_posix())
    location = location or ""
    return location[: -len(suffix)] if location.startswith("file://") and location.endswith(suffix) else None


def readable_artifact_uri(uri: str, recorded_root: str | None, current_root: str) -> str:
    """`uri` moved from the recorded project root to the current one (both ``file://`` URIs) when the recorded
    place is gone and the current one exists; else `uri` itself (a server's or a shared path's URI, or a
    store whose project did not move)."""
    recorded_root = (recorded_root or "").rstrip("/")
    if not recorded_root.startswith("file://") or not uri.startswith(recorded_root + "/"):
        return uri
    moved = current_root.rstrip("/") + uri[len(recorded_root):]
    return moved if moved != uri and not _local_path(uri).exists() and _local_path(moved).exists() else uri
