"""Resumable, verified downloads and safe archive extraction for the real datasets.

The pieces, bottom up:

* :class:`Downloader` — one HTTP(S) file into a ``.part`` file: ``Range`` resume of what is on
  disk (restarting from byte 0 when a server ignores ``Range`` and answers 200), urllib3
  ``Retry`` with backoff for 429/5xx and connection failures, our own loop for connections that
  drop mid-body (each retry resumes from the bytes on disk), a tqdm bar (bytes/s, ETA), and a
  free-disk check against the expected size before any byte is written.
* :func:`verify_file` — size and sha256 against the manifest (or the lock file); a mismatch
  deletes only the ``.part`` file and raises :class:`~fga.errors.UserError`.
* :func:`safe_extract` — zip and tar into a temp dir renamed into place (``fga.io.atomic_dir``);
  entries that are absolute, contain ``..``, or are links leading outside are refused before
  anything is written; tar additionally goes through ``tarfile``'s ``"data"`` filter. A marker
  file inside the extracted dir records what was extracted, so a second run does nothing.
* :class:`Fetcher` — binds one dataset's manifest (:mod:`fga.data.manifests`), the user's config
  overrides, the cache dir and its lock file (``<cache_dir>/fga-download.lock.json``: sizes and
  sha256 of files without a published checksum, recorded on first download, checked after).

:func:`prepare` (the CLI entry point) lives in :mod:`fga.data.prepare`; it is re-exported here.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import stat
import tarfile
import time
import zipfile
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

from fga.data.manifests import FileSpec, manifest
from fga.errors import UserError
from fga.io import atomic_dir, write_json

log = logging.getLogger(__name__)

LOCK_NAME = "fga-download.lock.json"
MARKER_NAME = ".fga-extracted.json"
RETRY_STATUS = (429, 500, 502, 503, 504)
CHUNK = 1 << 16
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


# --------------------------------------------------------------------------- small helpers


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


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


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
def _flock(path: Path) -> Iterator[None]:
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


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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
        with _flock(self.path.with_name(f".{self.path.name}.flock")):
            data = self._read()
            old = data["files"].get(key) or {}
            if old.get("sha256") == info.get("sha256") and old.get("size") == info.get("size"):
                return
            data["files"][key] = {**info, "recorded": _now()}
            write_json(self.path, data)


# --------------------------------------------------------------------------- HTTP


class _SourceFailed(Exception):
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
        """Complete ``part`` from ``url``; raises _SourceFailed when this URL cannot deliver."""
        import requests
        import urllib3

        # urllib3 wraps socket errors during a body read in its own HTTPError subclasses, so a bare
        # OSError below comes from writing the .part file (disk full, permissions): not retried.
        mid_body_errors = (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError,
                           requests.exceptions.Timeout, urllib3.exceptions.HTTPError, _Truncated)
        failures = 0
        part.parent.mkdir(parents=True, exist_ok=True)
        while True:
            have = part.stat().st_size if part.exists() else 0
            if size is not None and have > size:
                part.unlink()
                have = 0
            if size is not None and have == size:
                return
            if have == 0:
                check_free_space(part.parent, size, name)
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                response = self.session.get(url, headers=headers, stream=True, timeout=self.timeout)
            except requests.exceptions.RequestException as exc:
                raise _SourceFailed(f"{type(exc).__name__}: {exc}") from None
            written = 0
            try:
                with response:
                    code = response.status_code
                    if code == 416 and have:
                        _, total = _content_range(response.headers.get("Content-Range"))
                        if total == have and (size is None or size == have):
                            return  # the .part is already complete
                        log.warning("%s: server refused to resume at byte %d; restarting", name, have)
                        part.unlink()
                        continue
                    if code >= 400:
                        raise _SourceFailed(f"HTTP {code} {response.reason}")
                    if code == 206:
                        start, total = _content_range(response.headers.get("Content-Range"))
                        if start != have:
                            log.warning("%s: server resumed at byte %s, not %d; restarting", name, start, have)
                            part.unlink()
                            continue
                        mode = "ab"
                    else:
                        if have:
                            log.info("%s: server ignored Range; restarting from byte 0", name)
                        have, mode = 0, "wb"
                        length = response.headers.get("Content-Length")
                        total = int(length) if length and length.isdigit() else None
                    if size is not None and total is not None and total != size:
                        raise _SourceFailed(f"serves {total} bytes, expected {size}")
                    total = total if total is not None else size
                    if total is not None:
                        check_free_space(part.parent, total - have, name)
                    from tqdm.auto import tqdm

                    with open(part, mode) as fh, tqdm(
                        total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                        desc=name, disable=not self.progress, dynamic_ncols=True, leave=False,
                    ) as bar:
                        for chunk in _body(response, self.chunk_size):
                            fh.write(chunk)
                            written += len(chunk)
                            bar.update(len(chunk))
                    got = part.stat().st_size
                    if total is not None and got < total:
                        raise _Truncated(f"connection closed at byte {got} of {total}")
                    if total is not None and got > total:
                        part.unlink()
                        raise _SourceFailed(f"sent {got} bytes, more than the announced {total}")
                    return
            except mid_body_errors as exc:
                failures = 1 if written else failures + 1
                if failures > self.retries:
                    raise _SourceFailed(f"connection kept dropping ({exc})") from None
                log.warning("%s: %s; resuming (attempt %d of %d)", name, exc, failures, self.retries)
                self._sleep(failures)
            except OSError as exc:
                raise UserError(f"{part}: cannot write the download ({exc.strerror or exc}); check free space "
                                "and permissions of cache_dir, then rerun (it resumes)") from None


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


# --------------------------------------------------------------------------- extraction


def _refuse(archive: Path, name: str, why: str) -> UserError:
    return UserError(
        f"{archive}: refusing archive entry {name!r} ({why}); the archive is unsafe or corrupt, "
        "delete it and get it from a trusted source"
    )


def _entry_parts(archive: Path, name: str) -> tuple[str, ...]:
    """Normalised path components of an entry name; refuses absolute paths and ``..``."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise _refuse(archive, name, "absolute path")
    parts = tuple(p for p in norm.split("/") if p not in ("", "."))
    if ".." in parts:
        raise _refuse(archive, name, "path escapes the target directory")
    return parts


def _link_escapes(entry_parts: tuple[str, ...], target: str) -> bool:
    """Whether a symlink at ``entry_parts`` pointing to ``target`` leaves the extraction root."""
    target = target.replace("\\", "/")
    if target.startswith("/") or re.match(r"^[A-Za-z]:", target):
        return True
    joined = posixpath.normpath(posixpath.join("/".join(entry_parts[:-1]) or ".", target))
    return joined == ".." or joined.startswith("../")


def _strip(parts: tuple[str, ...], prefix: tuple[str, ...]) -> tuple[str, ...] | None:
    """``parts`` relative to ``prefix``, or None when the entry lies outside it."""
    if parts[: len(prefix)] != prefix:
        return None
    return parts[len(prefix):]


def _inside(root: Path, path: Path) -> bool:
    root_real = os.path.realpath(root)
    path_real = os.path.realpath(path)
    return path_real == root_real or path_real.startswith(root_real + os.sep)


def read_marker(dest: Path) -> dict[str, Any] | None:
    marker = Path(dest) / MARKER_NAME
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def is_extracted(dest: Path, sha256: str | None = None, key: str | None = None) -> bool:
    """Whether ``dest`` holds a completed extraction (of file ``key`` with ``sha256``, if given)."""
    info = read_marker(dest)
    if info is None:
        return False
    if key is not None and info.get("key") != key:
        return False
    return sha256 is None or info.get("sha256") == sha256


def _zip_plan(archive: Path, zf: zipfile.ZipFile, prefix: tuple[str, ...]):
    plan = []
    for info in zf.infolist():
        parts = _entry_parts(archive, info.filename)
        mode = info.external_attr >> 16
        is_link = info.create_system == 3 and stat.S_ISLNK(mode)
        target = None
        if is_link:
            target = zf.read(info).decode("utf-8", "replace")
            if _link_escapes(parts, target):
                raise _refuse(archive, info.filename, f"symlink to {target!r} points outside the target directory")
        rel = _strip(parts, prefix)
        if rel is None or not rel:
            continue
        if is_link and _link_escapes(rel, target):
            raise _refuse(archive, info.filename, f"symlink to {target!r} points outside {'/'.join(prefix)}/")
        plan.append((info, rel, target))
    return plan


def _extract_zip(archive: Path, zf: zipfile.ZipFile, plan, tmp: Path) -> None:
    for info, rel, target in plan:
        path = tmp.joinpath(*rel)
        if not _inside(tmp, path.parent):
            raise _refuse(archive, info.filename, "path leads outside the target directory through a link")
        if target is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, path)
        elif info.is_dir():
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def _tar_plan(archive: Path, tf: tarfile.TarFile, prefix: tuple[str, ...]):
    plan = []
    for member in tf.getmembers():
        parts = _entry_parts(archive, member.name)
        if member.issym() and _link_escapes(parts, member.linkname):
            raise _refuse(archive, member.name, f"symlink to {member.linkname!r} points outside the target directory")
        link_rel = None
        if member.islnk():
            try:
                link_parts = _entry_parts(archive, member.linkname)
            except UserError:
                raise _refuse(archive, member.name,
                              f"hard link to {member.linkname!r} points outside the target directory") from None
            link_rel = _strip(link_parts, prefix)
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise _refuse(archive, member.name, "device, fifo or other special file")
        rel = _strip(parts, prefix)
        if rel is None or not rel:
            continue
        if member.issym() and _link_escapes(rel, member.linkname):
            raise _refuse(archive, member.name, f"symlink to {member.linkname!r} points outside {'/'.join(prefix)}/")
        if member.islnk() and not link_rel:
            raise _refuse(archive, member.name, f"hard link to {member.linkname!r} points outside {'/'.join(prefix)}/")
        plan.append((member, rel, link_rel))
    return plan


def _extract_tar(archive: Path, tf: tarfile.TarFile, plan, tmp: Path) -> None:
    renamed = {}
    for member, rel, link_rel in plan:
        changes: dict[str, Any] = {"name": "/".join(rel)}
        if link_rel is not None:
            changes["linkname"] = "/".join(link_rel)
        renamed[id(member)] = changes

    def data_filter(member: tarfile.TarInfo, dest_path: str) -> tarfile.TarInfo:
        changes = renamed[id(member)]
        return tarfile.data_filter(member.replace(**changes, deep=False), dest_path)

    try:
        tf.extractall(tmp, members=[m for m, _, _ in plan], filter=data_filter)
    except tarfile.FilterError as exc:
        name = exc.tarinfo.name if getattr(exc, "tarinfo", None) is not None else "?"
        raise _refuse(archive, name, str(exc)) from None


def safe_extract(archive: str | Path, dest: str | Path, *, subdir: str | None = None,
                 info: Mapping[str, Any] | None = None) -> Path:
    """Extract ``archive`` (zip or tar, any compression) into ``dest`` safely and atomically.

    Only entries under ``subdir`` (e.g. ``"train2014"``) are extracted, with that prefix removed.
    Every entry of the archive is checked first; an unsafe one (absolute path, ``..``, a symlink
    or hard link leading outside, a device file) is refused by name and nothing is written.
    Extraction happens in a temp dir beside ``dest`` that replaces it only when complete, and
    carries a marker (``.fga-extracted.json`` with ``info``) that :func:`is_extracted` checks.
    """
    archive, dest = Path(archive), Path(dest)
    prefix = tuple(p for p in (subdir or "").replace("\\", "/").split("/") if p)
    where = f" under {'/'.join(prefix)}/" if prefix else ""
    try:
        if zipfile.is_zipfile(archive):
            kind, opener = "zip", zipfile.ZipFile(archive)
        elif tarfile.is_tarfile(archive):
            kind, opener = "tar", tarfile.open(archive, "r:*")
        else:
            raise UserError(f"{archive}: not a zip or tar archive; delete it and rerun, or point the config at the right file")
        with opener as handle:
            if kind == "zip":
                plan = _zip_plan(archive, handle, prefix)
                need = sum(i.file_size for i, _, t in plan if t is None)
            else:
                plan = _tar_plan(archive, handle, prefix)
                need = sum(m.size for m, _, _ in plan if m.isfile())
            if not plan:
                raise UserError(f"{archive}: no entries{where}; is it the right archive? Delete it and rerun")
            check_free_space(dest.parent, need, f"extracting {archive.name}")
            log.info("extracting %s%s -> %s", archive.name, where, dest)
            with atomic_dir(dest) as tmp:
                if kind == "zip":
                    _extract_zip(archive, handle, plan, tmp)
                else:
                    _extract_tar(archive, handle, plan, tmp)
                marker = {"archive": archive.name, "subdir": "/".join(prefix) or None,
                          "entries": len(plan), "extracted": _now(), **(info or {})}
                (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    except (zipfile.BadZipFile, tarfile.ReadError, tarfile.CompressionError, EOFError, zlib.error) as exc:
        raise UserError(f"{archive}: corrupt archive ({exc}); delete it and rerun") from None
    return dest


# --------------------------------------------------------------------------- config -> specs


def config_key(dataset: str, *parts: str) -> str:
    """How users name a key in params.yaml (``--set data.flickr30k.images_archive=...``)."""
    return ".".join(("data", dataset, *parts))


def resolve_path(value: str | os.PathLike | None) -> Path | None:
    """Config paths: ``~`` expanded; relative ones are relative to the working directory."""
    if value is None or value == "":
        return None
    return Path(os.path.expandvars(str(value))).expanduser()


def resolve_specs(dataset: str, cfg: Mapping[str, Any]) -> dict[str, FileSpec]:
    """The dataset's manifest with the config's per-file overrides applied.

    ``urls: {key: url}`` replaces a file's URL (and drops the manifest's mirrors);
    ``mirrors: {key: [url, ...]}`` adds alternatives tried in order after it;
    ``checksums: {key: {sha256: ..., size: ...}}`` replaces the pinned values (``null`` = unknown,
    recorded in the lock file on first download).
    """
    specs = manifest(dataset)
    for section in ("urls", "mirrors", "checksums"):
        value = cfg.get(section) or {}
        if not isinstance(value, Mapping):
            raise UserError(f"params key {config_key(dataset, section)}: expected a mapping of file key -> value; "
                            f"file keys: {', '.join(specs)}")
        unknown = sorted(set(value) - set(specs))
        if unknown:
            raise UserError(f"params key {config_key(dataset, section)}: unknown file key(s) {', '.join(unknown)}; "
                            f"use one of {', '.join(specs)}")
    urls, mirrors, checksums = cfg.get("urls") or {}, cfg.get("mirrors") or {}, cfg.get("checksums") or {}
    out = {}
    for key, spec in specs.items():
        changes: dict[str, Any] = {}
        if urls.get(key):
            changes.update(url=str(urls[key]), mirrors=())
        if mirrors.get(key):
            extra = mirrors[key]
            extra = [extra] if isinstance(extra, str) else list(extra)
            changes["mirrors"] = tuple(changes.get("mirrors", spec.mirrors)) + tuple(str(u) for u in extra)
        if key in checksums:
            override = checksums[key] or {}
            if not isinstance(override, Mapping):
                raise UserError(f"params key {config_key(dataset, 'checksums', key)}: expected {{sha256: ..., size: ...}}")
            if "sha256" in override:
                sha = override["sha256"]
                if sha is not None and not _SHA256_RE.match(str(sha).lower()):
                    raise UserError(f"params key {config_key(dataset, 'checksums', key, 'sha256')}: "
                                    "not a 64-hex-digit sha256")
                changes["sha256"] = str(sha).lower() if sha is not None else None
            if "size" in override:
                changes["size"] = int(override["size"]) if override["size"] is not None else None
        out[key] = spec.with_overrides(**changes) if changes else spec
    return out


# --------------------------------------------------------------------------- fetcher


class Fetcher:
    """Gets a dataset's files into ``cache_dir`` (or takes them from the user) and extracts them.

    Config keys read (``cfg`` is the dataset's params section): ``cache_dir`` (default
    ``downloads``, relative to the working directory), ``urls``, ``mirrors``, ``checksums``
    (see :func:`resolve_specs`), ``retries`` (5), ``backoff`` (1.0 s), ``timeout`` (60 s).
    With ``dry_run`` nothing is fetched or written: each step prints what it would do.
    """

    def __init__(self, dataset: str, cfg: Mapping[str, Any], *, dry_run: bool = False, progress: bool = True):
        self.dataset = dataset
        self.cfg = cfg
        self.dry_run = dry_run
        self.progress = progress
        self.cache_dir = resolve_path(cfg.get("cache_dir")) or Path("downloads")
        self.specs = resolve_specs(dataset, cfg)
        self.lock = LockFile(self.cache_dir / LOCK_NAME)
        self._downloader: Downloader | None = None
        self.planned_bytes = 0
        self.planned_unknown = 0
        self.downloaded: list[str] = []

    # -- plumbing
    @property
    def downloader(self) -> Downloader:
        if self._downloader is None:
            self._downloader = Downloader(
                retries=int(self._number("retries", 5)), backoff=self._number("backoff", 1.0),
                timeout=self._number("timeout", 60.0), progress=self.progress,
            )
        return self._downloader

    def _number(self, key: str, default: float) -> float:
        value = self.cfg.get(key)
        if value is None:
            return default
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = -1.0
        if number < 0 or isinstance(value, bool):
            raise UserError(f"params key {config_key(self.dataset, key)}: expected a non-negative number, got {value!r}")
        return number

    def close(self) -> None:
        if self._downloader is not None:
            self._downloader.close()

    def say(self, message: str) -> None:
        print(f"[dry-run] {self.dataset}: {message}", flush=True)

    def expected(self, spec: FileSpec) -> tuple[str | None, int | None]:
        """(sha256, size) a file must have: the manifest's, else the lock file's record."""
        entry = self.lock.get(spec.key) or {}
        return spec.sha256 or entry.get("sha256"), spec.size if spec.size is not None else entry.get("size")

    def _record(self, spec: FileSpec, source: str, size: int, sha: str) -> None:
        self.lock.record(spec.key, filename=spec.filename, source=source, size=size, sha256=sha)

    # -- files
    def archive(self, key: str, *, local: Path | None = None, url: str | None = None,
                cfg_key: str | None = None) -> Path:
        """A verified copy of file ``key``: the user's ``local`` file, or a download into the cache.

        ``url`` replaces the manifest URL (e.g. a private Flickr30K link from the config).
        """
        spec = self.specs[key]
        sha, size = self.expected(spec)
        if local is not None:
            return self._local(spec, Path(local), sha, size, cfg_key or key)
        urls = [url] if url else spec.urls()
        if not urls:
            keys = [config_key(self.dataset, k) for k in spec.config_keys] or [config_key(self.dataset, "urls", key)]
            raise UserError(f"{self.dataset}: no URL for {spec.filename}; set {' or '.join(keys)}")
        dest = self.cache_dir / spec.filename
        part = dest.with_name(dest.name + ".part")
        hint_redo = "the partial download was deleted; rerun to fetch it again"
        if self.dry_run:
            if dest.exists():
                self.say(f"{spec.filename}: present in {self.cache_dir}, would verify it")
            else:
                have = part.stat().st_size if part.exists() else 0
                todo = None if size is None else size - have
                resume = f" (resuming at byte {have})" if have else ""
                self.say(f"would fetch {spec.filename} ({human_size(todo)}) from {urls[0]}{resume}"
                         + (f" [+{len(urls) - 1} mirror(s)]" if len(urls) > 1 else ""))
                if todo is None:
                    self.planned_unknown += 1
                else:
                    self.planned_bytes += todo
            return dest
        with _flock(self.cache_dir / f".{spec.filename}.flock"):
            if dest.exists():
                got = verify_file(dest, name=str(dest), sha256=sha, size=size, temp=False,
                                  hint=f"delete {dest} and rerun to download it again")
                self._record(spec, urls[0], dest.stat().st_size, got)
                return dest
            errors = []
            for source in urls:
                try:
                    log.info("downloading %s from %s", spec.filename, source)
                    self.downloader.fetch(source, part, size=size, name=spec.filename)
                except _SourceFailed as exc:
                    errors.append(f"{source}: {exc}")
                    continue
                try:
                    got = verify_file(part, name=spec.filename, sha256=sha, size=size, temp=True,
                                      hint=f"{hint_redo} (source {source}; if it persists the source changed, "
                                           f"add a mirror under {config_key(self.dataset, 'mirrors', key)})")
                except UserError as exc:
                    if source == urls[-1]:
                        raise
                    log.warning("%s; trying the next mirror", exc)
                    continue
                os.replace(part, dest)
                self._record(spec, source, dest.stat().st_size, got)
                self.downloaded.append(spec.filename)
                return dest
            raise UserError(
                f"{spec.filename}: download failed ({'; '.join(errors)}); check the network and rerun "
                f"(it resumes), add a mirror under {config_key(self.dataset, 'mirrors', key)}, or put the file at {dest}"
            )

    def _local(self, spec: FileSpec, path: Path, sha: str | None, size: int | None, name: str) -> Path:
        if not path.exists():
            raise UserError(f"{path}: file named by params key {config_key(self.dataset, name)} does not exist; "
                            "fix the path")
        if self.dry_run:
            self.say(f"{spec.filename}: would use local {path} ({human_size(path.stat().st_size)}); nothing to fetch")
            return path
        got = verify_file(path, name=str(path), sha256=sha, size=size, temp=False,
                          hint=f"if you replaced it on purpose, delete the {spec.key!r} entry from "
                               f"{self.lock.path} and rerun")
        self._record(spec, str(path.resolve()), path.stat().st_size, got)
        return path

    def extracted(self, key: str, dest: Path, *, subdir: str | None = None, local: Path | None = None,
                  url: str | None = None, cfg_key: str | None = None) -> Path:
        """``dest`` holding the (``subdir`` of the) archive ``key``, downloading it if needed."""
        spec = self.specs[key]
        sha, _ = self.expected(spec)
        if is_extracted(dest, sha, key):
            if self.dry_run:
                self.say(f"{spec.filename}: already extracted in {dest}; nothing to do")
            return dest
        archive = self.archive(key, local=local, url=url, cfg_key=cfg_key)
        if self.dry_run:
            self.say(f"would extract {subdir.rstrip('/') + '/ from ' if subdir else ''}{archive.name} to {dest}")
            return dest
        with _flock(self.cache_dir / f".{key}.extract.flock"):
            if not is_extracted(dest, sha, key):
                sha = self.lock.sha256(key) or sha
                safe_extract(archive, dest, subdir=subdir, info={"key": key, "sha256": sha})
        return dest

    def summary(self) -> None:
        if not self.dry_run:
            return
        extra = f" + {self.planned_unknown} file(s) of unknown size" if self.planned_unknown else ""
        self.say(f"total to download: {human_size(self.planned_bytes)}{extra} into {self.cache_dir}; "
                 "nothing was fetched")


# --------------------------------------------------------------------------- links


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


def prepare(dataset: str, cfg: dict, out_dir: Path, *, dry_run: bool = False, progress: bool = True) -> None:
    """See :func:`fga.data.prepare.prepare` (re-exported here for the CLI)."""
    from fga.data.prepare import prepare as _prepare

    _prepare(dataset, cfg, out_dir, dry_run=dry_run, progress=progress)
