"""Content digests recorded when an artifact is written and checked before it is used.

Where the digest lives: inside the artifact itself (a safetensors metadata key, an HDF5 root attribute, a key of
the resume state, the zip CRC-32 of every member of an .npz) or in the metrics.json of the job that wrote it (the
saved similarity matrix), never in a
sidecar file: every artifact is a declared Snakemake/DVC file output, and an undeclared `<file>.sha256` beside it
would go stale when DVC checks out another version of the file alone. The digest covers the content (tensors,
arrays, metadata), not wall-clock times, so outputs stay byte-identical between runs.

Cost: a reader hashes the artifact once per process. A file already verified in this process (same device, inode,
size and mtime) is not hashed again, so a DataLoader or a report that opens a store many times pays once; a new
process (the next Snakemake job) hashes again, because bit rot changes neither size nor mtime.
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fga.errors import UserError

CHUNK_BYTES = 1 << 24
_VERIFIED: set[tuple[Any, ...]] = set()


def corrupt_message(path: str | Path, fix: str) -> str:
    """The one line a failed check prints: the file, what is wrong, the fix."""
    return (f"{path}: content does not match the digest recorded when it was written (corrupted on disk); "
            f"delete it and re-run `{fix}`")


def _identity(path: Path) -> tuple[Any, ...]:
    st = os.stat(path)
    return (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def check_once(path: str | Path, expected: str, compute: Callable[[], str], fix: str) -> None:
    """Raise a UserError naming `path` when compute() != expected; a file this process already verified (and that
    has not changed since) is not hashed again."""
    path = Path(path)
    key = (*_identity(path), expected)
    if key in _VERIFIED:
        return
    if compute() != expected:
        raise UserError(corrupt_message(path, fix))
    _VERIFIED.add(key)


def check_zip(path: str | Path, fix: str) -> None:
    """Check the CRC-32 a zip (an .npz) records for every member, which numpy's loader never reads back."""
    def first_bad_member() -> str:
        try:
            with zipfile.ZipFile(path) as z:
                return z.testzip() or ""
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            return f"unreadable: {exc}"

    check_once(path, "", first_bad_member, fix)


def forget_verified() -> None:
    """Drop the per-process record of verified files (tests that corrupt a file in place)."""
    _VERIFIED.clear()


def file_sha256(path: str | Path, offset: int = 0, prefix: bytes = b"") -> str:
    """sha256 of `prefix` + the bytes of `path` from `offset` on, read in chunks (multi-GB files stay out of memory)."""
    digest = hashlib.sha256(prefix)
    with open(path, "rb") as f:
        f.seek(offset)
        while block := f.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def update_array(digest: "hashlib._Hash", name: str, array: np.ndarray) -> None:
    """Feed a named array (its dtype, shape and C-order bytes) into `digest`."""
    array = np.asarray(array)
    digest.update(f"{name}:{array.dtype.str}:{list(array.shape)};".encode())
    digest.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8).tobytes())


def tree_sha256(obj: Any) -> str:
    """sha256 of a nested structure of dicts, lists, tuples, tensors, arrays and scalars (a resume state)."""
    digest = hashlib.sha256()
    _update_tree(digest, "", obj)
    return digest.hexdigest()


def _update_tree(digest: "hashlib._Hash", where: str, obj: Any) -> None:
    if isinstance(obj, dict):
        digest.update(f"{where}:dict{len(obj)};".encode())
        for key in sorted(obj, key=repr):  # optimizer states mix int and str keys
            _update_tree(digest, f"{where}/{key!r}", obj[key])
    elif isinstance(obj, (list, tuple)):
        digest.update(f"{where}:{type(obj).__name__}{len(obj)};".encode())
        for i, item in enumerate(obj):
            _update_tree(digest, f"{where}[{i}]", item)
    elif hasattr(obj, "detach") and hasattr(obj, "dtype"):  # a torch tensor; torch is imported only when one is seen
        import torch

        flat = obj.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{where}:{flat.dtype}:{list(obj.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, np.ndarray):
        update_array(digest, where, obj)
    else:
        digest.update(f"{where}={obj!r};".encode())
