"""Local-disk helpers shared by downloading and extraction: sizes, free space, locks, folder links."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from fga.errors import UserError


def human_size(n: int | None) -> str:
    """``1536`` -> ``'1.5 KiB'``; ``None`` -> ``'size unknown'``."""
    if n is None:
        return "size unknown"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def check_free_space(directory: str | Path, need: int | None, what: str) -> None:
    """Raise a UserError when ``directory``'s file system has less than ``need`` bytes free."""
    if not need or need <= 0:
        return
    directory = Path(directory)
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need:
        raise UserError(
            f"{directory}: not enough free disk space for {what} (needs {human_size(need)}, "
            f"{human_size(free)} free); free some space or set cache_dir to a larger disk"
        )


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Advisory exclusive lock, so two prepares sharing a cache never write the same file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError as exc:  # pragma: no cover - e.g. file systems without locks
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fh, fcntl.LOCK_UN)


def utc_now() -> str:
    """The current UTC time as ``2024-01-31T12:00:00Z`` (for lock-file and marker records)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def link_dir(link: Path, target: Path) -> None:
    """Make ``link`` a symlink to ``target`` (replacing an older symlink atomically)."""
    link = Path(link)
    target = Path(target).resolve()
    if link.is_symlink():
        if Path(os.readlink(link)) == target:
            return
    elif link.exists():
        if link.is_dir() and link.resolve() == target:
            return
        raise UserError(f"{link}: exists and is not a symlink to {target}; move it away (or set root to it) and rerun")
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.tmp-link")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp, target_is_directory=True)
    os.replace(tmp, link)
