"""Atomic file writes and small JSON helpers shared by every stage."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from fga.errors import UserError


def current_umask() -> int:
    """The process umask (read without changing it where /proc allows: os.umask can only set it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FULL_BELOW_BYTES = 1 << 20  # free space under which a failed write is taken for a full disk


class DiskFullError(UserError):
    """A write filled its filesystem; the message names the output, the space it needs and what is free."""


def is_disk_full(exc: BaseException, directory: Path) -> bool:
    """Whether a write failed because `directory`'s filesystem filled up: ENOSPC, however the writing library
    reports it (h5py keeps it in the text, numpy and torch lose it, so a nearly empty filesystem also counts)."""
    if isinstance(exc, DiskFullError) or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC):
        return True
    if not isinstance(exc, (OSError, RuntimeError)):
        return False
    if "errno = 28" in str(exc) or "No space left on device" in str(exc):
        return True
    try:
        return shutil.disk_usage(directory).free < FULL_BELOW_BYTES
    except OSError:
        return False


def disk_full_error(path: str | Path, needed: int, exact: bool = False) -> DiskFullError:
    """The one-line error for a write that filled the disk (call it once the temp file is gone)."""
    directory = Path(path).parent
    free = shutil.disk_usage(directory).free
    amount = human_bytes(needed) if exact else f"more than the {human_bytes(needed)} written before the disk filled"
    return DiskFullError(f"{path}: no space left on the device (it needs {amount}; {human_bytes(free)} free in "
                         f"{directory}); free space there (or move the output directory) and re-run the stage")


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it over `path`, on error delete it.

    Readers therefore see either the old file or the complete new one, never a partial write. The file gets
    the mode a plain open() would give it (0o666 minus the umask), not mkstemp's private 0o600, so colleagues
    on a shared filesystem can read the results.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~current_umask())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as exc:
        full, written = is_disk_full(exc, path.parent), _size(tmp_path)
        tmp_path.unlink(missing_ok=True)
        if full:
            raise disk_full_error(path, written) from None
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp directory beside `path` (mode 0o777 minus the umask); on success it replaces `path` as a whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp's 0o700 would hide the directory from colleagues
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as exc:
        full, written = is_disk_full(exc, path.parent), _size(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise disk_full_error(path, written) from None
        raise


def write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> None:
    """Write JSON atomically with sorted keys, so equal objects give identical bytes."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def read_json(path: str | Path, what: str = "file") -> Any:
    """Read JSON, turning a missing or corrupt file into a one-line UserError."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: {what} not found; run the stage that produces it first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); delete it and rerun the stage") from None
