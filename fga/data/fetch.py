"""Resumable, verified HTTP(S) downloads and the lock file recording what was downloaded.

* :class:`Downloader` — one HTTP(S) file into a ``.part`` file: ``Range`` resume of what is on
  disk (restarting from byte 0 when a server ignores ``Range`` and answers 200), urllib3
  ``Retry`` with backoff for 429/5xx and connection failures, our own loop for connections that
  drop mid-body (each retry resumes from the bytes on disk), a tqdm bar (bytes/s, ETA), and a
  free-disk check against the expected size before any byte is written.
* :func:`verify_file` — size and sha256 against the manifest (or the lock file); a mismatch
  deletes only the ``.part`` file and raises :class:`~fga.errors.UserError`.
* :class:`LockFile` — ``<cache_dir>/fga-download.lock.json``: sizes and sha256 of files without
  a published checksum, recorded on first download and checked after.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from fga.data.disk import check_free_space, file_lock, utc_now
from fga.errors import UserError
from fga.io import write_json

log = logging.getLogger(__name__)

LOCK_NAME = "fga-download.lock.json"
RETRY_STATUS = (429, 500, 502, 503, 504)
CHUNK = 1 << 16


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- lock file


class LockFile:
    """``<cache_dir>/fga-download.lock.json``: what every file was when first downloaded.

    ``{"version": 1, "files": {key: {"filename", "source", "size", "sha256", "recorded"}}}``.
    Files whose manifest has no sha256 are verified against this record on every later use.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"version": 1, "files": {}}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            raise UserError(
                f"{self.path}: lock file is not valid JSON; restore it from version control or delete it "
                "(the next download records fresh checksums)"
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            raise UserError(f"{self.path}: lock file has no 'files' mapping; delete it and rerun")
        return data

    def get(self, key: str) -> dict[str, Any] | None:
        entry = self._read()["files"].get(key)
        return entry if isinstance(entry, dict) else None

    def sha256(self, key: str) -> str | None:
        entry = self.get(key)
        return entry.get("sha256") if entry else None

    def size(self, key: str) -> int | None:
        entry = self.get(key)
        return entry.get("size") if entry else None

    def record(self, key: str, **info: Any) -> None:
        with file_lock(self.path.with_name(f".{self.path.name}.flock")):
            data = self._read()
            old = data["files"].get(key) or {}
            if old.get("sha256") == info.get("sha256") and old.get("size") == info.get("size"):
                return
            data["files"][key] = {**info, "recorded": utc_now()}
            write_json(self.path, data)


# --------------------------------------------------------------------------- HTTP


class SourceFailed(Exception):
    """This URL cannot deliver the file (after retries): try the next mirror."""


class _Truncated(Exception):
    """The body ended before Content-Length bytes: resume from what is on disk."""


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``'bytes 100-199/1000'`` -> ``(100, 1000)``; ``'bytes */1000'`` -> ``(None, 1000)``."""
    if not value:
        return None, None
    m = re.match(r"^\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*$", value)
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _body(response, chunk_size: int) -> Iterator[bytes]:
    """The response body as it arrives. ``read1`` hands over every byte received before a
    dropped connection (``iter_content`` would lose the chunk being buffered), so the resume
    offset is exactly the number of bytes the server sent."""
    raw = response.raw
    if not hasattr(raw, "read1"):  # pragma: no cover - urllib3 < 2.3
        yield from (c for c in response.iter_content(chunk_size) if c)
        return
    while True:
        chunk = raw.read1(chunk_size)
        if not chunk:
            return
        yield chunk


class Downloader:
    """Fetches one URL into a ``.part`` file, resuming and retrying (see the module docstring).

    ``retries`` bounds both urllib3's retries of a request (5xx, 429, connect/read failures) and
    our own consecutive mid-body drops without progress; ``backoff`` is the base of the
    exponential backoff in seconds; ``timeout`` the connect/read timeout in seconds.
    """

    def __init__(self, *, retries: int = 5, backoff: float = 1.0, timeout: float = 60.0,
                 progress: bool = True, chunk_size: int = CHUNK):
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        from fga import __version__

        self.retries = int(retries)
        self.backoff = float(backoff)
        self.timeout = float(timeout)
        self.progress = progress
        self.chunk_size = chunk_size
        self.session = requests.Session()
        retry = Retry(
            total=self.retries, connect=self.retries, read=self.retries, status=self.retries,
            other=0, status_forcelist=RETRY_STATUS, allowed_methods=frozenset({"GET", "HEAD"}),
            backoff_factor=self.backoff, backoff_max=60.0, raise_on_status=False,
            respect_retry_after_header=True,
        )
        adapter = HTTPAdapter(max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        # Byte offsets of Range requests must refer to the file itself, never to a compressed body.
        self.session.headers.update({"User-Agent": f"fga/{__version__}", "Accept-Encoding": "identity"})

    def close(self) -> None:
        self.session.close()

    def _sleep(self, attempt: int) -> None:
        if self.backoff > 0:
            time.sleep(min(60.0, self.backoff * 2 ** (attempt - 1)))

    def fetch(self, url: str, part: Path, *, size: int | None, name: str) -> None:
        """Complete ``part`` from ``url``; raises SourceFailed when this URL cannot deliver."""
        import requests
        import urllib3

        # urllib3 wraps socket errors during a body read in its own HTTPError subclasses, so a bare
        # OSError below comes from writing the .part file (disk full, permissions): not retried.
        mid_body_errors = (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError,
                           requests.exceptions.Timeout, urllib3.exceptions.HTTPError, _Truncated)
        failures = 0
        part.parent.mkdir(parents=True, exist_ok=True)
        while True:
            have = _usable_part_size(part, size)
            if size is not None and have == size:
                return
            if have == 0:
                check_free_space(part.parent, size, name)
            progress = _Progress()
            try:
                if self._attempt(url, part, have, size=size, name=name, progress=progress):
                    return
            except mid_body_errors as exc:
                failures = 1 if progress.written else failures + 1
                if failures > self.retries:
                    raise SourceFailed(f"connection kept dropping ({exc})") from None
                log.warning("%s: %s; resuming (attempt %d of %d)", name, exc, failures, self.retries)
                self._sleep(failures)
            except OSError as exc:
                raise UserError(f"{part}: cannot write the download ({exc.strerror or exc}); check free space "
                                "and permissions of cache_dir, then rerun (it resumes)") from None

    def _get(self, url: str, have: int):
        """The streamed response to a GET from byte ``have``; a request that fails (after urllib3's
        retries) means this URL cannot deliver."""
        import requests

        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            return self.session.get(url, headers=headers, stream=True, timeout=self.timeout)
        except requests.exceptions.RequestException as exc:
            raise SourceFailed(f"{type(exc).__name__}: {exc}") from None

    def _attempt(self, url: str, part: Path, have: int, *, size: int | None, name: str,
                 progress: _Progress) -> bool:
        """One GET appending to (or restarting) ``part``: True once it is complete, False to start over."""
        with self._get(url, have) as response:
            code = response.status_code
            if code == 416 and have:
                return _complete_despite_416(response, part, have, size, name)
            if code >= 400:
                raise SourceFailed(f"HTTP {code} {response.reason}")
            plan = _body_plan(response, have, name)
            if plan is None:
                part.unlink()
                return False
            have, mode, total = plan
            if size is not None and total is not None and total != size:
                raise SourceFailed(f"serves {total} bytes, expected {size}")
            total = total if total is not None else size
            if total is not None:
                check_free_space(part.parent, total - have, name)
            self._write_body(response, part, mode, have, total, name, progress)
            _check_received(part, total)
            return True

    def _write_body(self, response, part: Path, mode: str, have: int, total: int | None, name: str,
                    progress: _Progress) -> None:
        from tqdm.auto import tqdm

        with open(part, mode) as fh, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
            desc=name, disable=not self.progress, dynamic_ncols=True, leave=False,
        ) as bar:
            for chunk in _body(response, self.chunk_size):
                fh.write(chunk)
                progress.written += len(chunk)
                bar.update(len(chunk))


@dataclass
class _Progress:
    """Bytes written by one attempt: an attempt that wrote some resets the count of failed ones."""

    written: int = 0


def _usable_part_size(part: Path, size: int | None) -> int:
    """Bytes already in ``part`` that a resume can build on (a part larger than the file is dropped)."""
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    return have


def _complete_despite_416(response, part: Path, have: int, size: int | None, name: str) -> bool:
    """A server refusing ``Range: bytes=have-``: True when the .part already is the whole file,
    else the .part is deleted (False: start over)."""
    _, total = _content_range(response.headers.get("Content-Range"))
    if total == have and (size is None or size == have):
        return True
    log.warning("%s: server refused to resume at byte %d; restarting", name, have)
    part.unlink()
    return False


def _body_plan(response, have: int, name: str) -> tuple[int, str, int | None] | None:
    """(offset the body starts at, file mode, total size if known), or None when a 206 answer starts
    at another byte than asked (the .part must be restarted)."""
    if response.status_code == 206:
        start, total = _content_range(response.headers.get("Content-Range"))
        if start != have:
            log.warning("%s: server resumed at byte %s, not %d; restarting", name, start, have)
            return None
        return have, "ab", total
    if have:
        log.info("%s: server ignored Range; restarting from byte 0", name)
    length = response.headers.get("Content-Length")
    return 0, "wb", int(length) if length and length.isdigit() else None


def _check_received(part: Path, total: int | None) -> None:
    """A body shorter than announced is resumed (_Truncated); a longer one is not this file."""
    got = part.stat().st_size
    if total is not None and got < total:
        raise _Truncated(f"connection closed at byte {got} of {total}")
    if total is not None and got > total:
        part.unlink()
        raise SourceFailed(f"sent {got} bytes, more than the announced {total}")


# --------------------------------------------------------------------------- verification


def verify_file(path: Path, *, name: str, sha256: str | None, size: int | None,
                temp: bool, hint: str) -> str:
    """Return ``path``'s sha256 after checking it against ``size``/``sha256`` (when known).

    On a mismatch a temp (``.part``) file is deleted — never anything else — and a UserError
    says which file, expected vs got, and ``hint`` (what to do).
    """
    got_size = path.stat().st_size
    if size is not None and got_size != size:
        if temp:
            path.unlink(missing_ok=True)
        raise UserError(f"{name}: size mismatch (expected {size} bytes, got {got_size}); {hint}")
    got = sha256_file(path)
    if sha256 is not None and got != sha256.lower():
        if temp:
            path.unlink(missing_ok=True)
        raise UserError(f"{name}: sha256 mismatch (expected {sha256}, got {got}); {hint}")
    return got
