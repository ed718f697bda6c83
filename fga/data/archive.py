"""Safe, atomic extraction of zip and tar archives, with a marker recording what was extracted.

:func:`safe_extract` extracts into a temp dir renamed into place (``fga.io.atomic_dir``); entries
that are absolute, contain ``..``, or are links leading outside are refused before anything is
written; tar additionally goes through ``tarfile``'s ``"data"`` filter. The marker file
(``.fga-extracted.json``) inside the extracted dir lets :func:`is_extracted` tell a completed
extraction, so a second run does nothing.
"""
from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, Mapping

from fga.data.disk import check_free_space, utc_now
from fga.errors import UserError
from fga.io import atomic_dir

log = logging.getLogger(__name__)

MARKER_NAME = ".fga-extracted.json"


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
                          "entries": len(plan), "extracted": utc_now(), **(info or {})}
                (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    except (zipfile.BadZipFile, tarfile.ReadError, tarfile.CompressionError, EOFError, zlib.error) as exc:
        raise UserError(f"{archive}: corrupt archive ({exc}); delete it and rerun") from None
    return dest
