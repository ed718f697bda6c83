"""Recording a finished Snakemake run in DVC: its outputs into DVC's cache, their hashes into dvc.lock.

Snakemake runs the grid; this step (`fga dvc-record`, the end of every successful Snakemake run of the default
target) makes DVC vouch for the same files, so `dvc status`, `dvc push` and a colleague's `dvc pull` see them.
It records only a run of params.yaml itself: dvc.yaml's stages are declared over params.yaml, so outputs made
under an overlay or --config would be filed under parameters they were not made with.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import yaml

from fga.config import load_params
from fga.errors import UserError
from fga.io import atomic_path

DVC_PARAMS = Path("params.yaml")  # the file dvc.yaml's `vars` and `params` read


def differing_keys(ours: Any, theirs: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two parsed YAML documents (a whole differing section once)."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        keys = sorted(set(ours) | set(theirs), key=str)
        return [k for key in keys
                for k in differing_keys(ours.get(key), theirs.get(key), f"{prefix}{key}.")]
    return [] if ours == theirs else [prefix.rstrip(".") or "(the whole file)"]


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


def reason_not_to_record(run_params: Path, root: Path = Path(".")) -> str | None:
    """Why this run's outputs must not go into dvc.lock (None when they may)."""
    if not (root / ".dvc").is_dir():
        return "no DVC repository here (`dvc init` makes one)"
    if not (root / "dvc.yaml").is_file():
        return "no dvc.yaml here"
    # both as the CLI reads them (typed, validated, variants resolved): Snakemake hands its jobs a resolved file
    differing = differing_keys(load_params(root / run_params), load_params(root / DVC_PARAMS))
    if differing:
        shown = ", ".join(differing[:4]) + (" ..." if len(differing) > 4 else "")
        return (f"this run's parameters differ from {DVC_PARAMS} at {shown} (an overlay or --config); "
                f"dvc.yaml's stages follow {DVC_PARAMS}")
    return None


def record_in_dvc(run_params: Path, root: Path = Path(".")) -> str:
    """`dvc commit --force` of every stage of dvc.yaml, unless reason_not_to_record; a one-line account."""
    reason = reason_not_to_record(run_params, root)
    if reason is not None:
        return f"dvc: not recorded: {reason}"
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    # in this process, as `dvc commit --force --no-relink --quiet dvc.yaml` (its CLI calls the same Repo.commit):
    # one DVC start-up and one index build for the commit and the prune (a subprocess paid them twice).
    # --no-relink: the cache gets its own copy and the outputs stay as Snakemake wrote them, whatever cache.type
    # (a relink rewrites them in place under reflink,copy on ext4, or makes them read-only hardlinks or fresh
    # symlinks: new mtimes or protected files, and Snakemake would rerun the grid; benchmarks/bench_dvc.py).
    # dvc.yaml only: the default target vouches for its stages, not for a linked sweeps/dvc.yaml's (sweeps/stages.yaml)
    dvc_logger = logging.getLogger("dvc")
    level = dvc_logger.level
    dvc_logger.setLevel(logging.CRITICAL)  # --quiet: no log lines, no progress bars (DVC's Tqdm reads the level)
    try:
        with contextlib.chdir(root), Repo(".") as repo:  # DVC resolves targets and outputs from the working dir
            committed = repo.commit("dvc.yaml", force=True, relink=False)
    except DvcException as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"dvc commit failed in {root.resolve()}: {first}; fix that and run `fga dvc-record`") from None
    finally:
        dvc_logger.setLevel(level)
    lock = prune_lock(root, {stage.name for stage in committed})
    return f"dvc: recorded {len(lock.get('stages', {}))} stages in DVC's cache and dvc.lock"


def prune_lock(root: Path, declared: set[str]) -> dict[str, Any]:
    """Drop dvc.lock's entries of stages other than `declared` (dvc.yaml's: a renamed stage or a changed matrix
    leaves `dvc commit` adding the new entries and keeping the old ones); returns the lock as it is afterwards."""
    from dvc.utils.serialize import dumps_yaml, parse_yaml_for_update

    path = root / "dvc.lock"
    lock = _read_yaml(path) or {}
    stale = [name for name in lock.get("stages", {}) if name not in declared]
    if stale:
        # DVC's own round-trip YAML: the entries kept are written byte for byte as `dvc commit` wrote them
        kept = parse_yaml_for_update(path.read_text(), str(path))
        for name in stale:
            del kept["stages"][name]
        with atomic_path(path) as tmp:
            tmp.write_text(dumps_yaml(kept))
        lock["stages"] = {k: v for k, v in lock["stages"].items() if k not in stale}
    return lock
