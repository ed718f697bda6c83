"""A dataset's source files: its manifest with the user's overrides, fetched into the cache and extracted.

:class:`Fetcher` binds one dataset's manifest (:mod:`fga.data.manifests`), the user's config
overrides (:func:`resolve_specs`), the cache dir and its lock file
(``<cache_dir>/fga-download.lock.json``, :class:`fga.data.fetch.LockFile`); it downloads with
:mod:`fga.data.fetch` and extracts with :mod:`fga.data.archive`.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

from fga.data.archive import is_extracted, safe_extract
from fga.data.disk import file_lock, human_size
from fga.data.fetch import LOCK_NAME, Downloader, LockFile, SourceFailed, verify_file
from fga.data.manifests import FileSpec, manifest
from fga.errors import UserError

log = logging.getLogger(__name__)

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


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
        if self.dry_run:
            self._plan_download(spec, dest, size, urls)
            return dest
        with file_lock(self.cache_dir / f".{spec.filename}.flock"):
            if dest.exists():
                got = verify_file(dest, name=str(dest), sha256=sha, size=size, temp=False,
                                  hint=f"delete {dest} and rerun to download it again")
                self._record(spec, urls[0], dest.stat().st_size, got)
                return dest
            return self._download(spec, dest, sha, size, urls)

    def _plan_download(self, spec: FileSpec, dest: Path, size: int | None, urls: list[str]) -> None:
        """Dry run: say what fetching ``spec`` would do, and add its size to the planned total."""
        if dest.exists():
            self.say(f"{spec.filename}: present in {self.cache_dir}, would verify it")
            return
        part = dest.with_name(dest.name + ".part")
        have = part.stat().st_size if part.exists() else 0
        todo = None if size is None else size - have
        resume = f" (resuming at byte {have})" if have else ""
        self.say(f"would fetch {spec.filename} ({human_size(todo)}) from {urls[0]}{resume}"
                 + (f" [+{len(urls) - 1} mirror(s)]" if len(urls) > 1 else ""))
        if todo is None:
            self.planned_unknown += 1
        else:
            self.planned_bytes += todo

    def _download(self, spec: FileSpec, dest: Path, sha: str | None, size: int | None, urls: list[str]) -> Path:
        """``dest`` from the first of ``urls`` (primary, then mirrors) that delivers the right bytes."""
        part = dest.with_name(dest.name + ".part")
        mirrors_key = config_key(self.dataset, "mirrors", spec.key)
        errors = []
        for source in urls:
            try:
                log.info("downloading %s from %s", spec.filename, source)
                self.downloader.fetch(source, part, size=size, name=spec.filename)
            except SourceFailed as exc:
                errors.append(f"{source}: {exc}")
                continue
            try:
                got = verify_file(part, name=spec.filename, sha256=sha, size=size, temp=True,
                                  hint="the partial download was deleted; rerun to fetch it again "
                                       f"(source {source}; if it persists the source changed, "
                                       f"add a mirror under {mirrors_key})")
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
            f"(it resumes), add a mirror under {mirrors_key}, or put the file at {dest}"
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
        with file_lock(self.cache_dir / f".{key}.extract.flock"):
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
