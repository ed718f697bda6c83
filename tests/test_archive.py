"""Safe, atomic archive extraction: path traversal and links refused, subdir stripped, marker (fga.data.archive)."""
from __future__ import annotations

from pathlib import Path

import pytest

try:
    from fixtures_data import tar_bytes, zip_bytes  # noqa: F401
except ImportError:  # pragma: no cover - tests imported as a package
    from tests.fixtures_data import tar_bytes, zip_bytes  # noqa: F401

from fga.data import archive as archive_mod
from fga.data.archive import MARKER_NAME, is_extracted, safe_extract
from fga.errors import UserError

GOOD = {"pkg/a.txt": b"a", "pkg/sub/b.txt": b"b"}
ESCAPES = {
    "zip-slip": dict(entries={**GOOD, "../evil": b"x"}, bad="../evil"),
    "nested-slip": dict(entries={**GOOD, "pkg/../../evil": b"x"}, bad="pkg/../../evil"),
    "absolute": dict(entries={**GOOD, "/tmp/fga-evil-abs": b"x"}, bad="/tmp/fga-evil-abs"),
    "symlink-out": dict(entries=GOOD, symlinks={"pkg/link": "../../outside"}, bad="pkg/link"),
    "symlink-abs": dict(entries=GOOD, symlinks={"pkg/etc": "/etc"}, bad="pkg/etc"),
}


def _archive(kind, tmp_path, entries, symlinks=None, hardlinks=None):
    path = tmp_path / ("a.zip" if kind == "zip" else "a.tar.gz")
    data = zip_bytes(entries, symlinks=symlinks) if kind == "zip" else tar_bytes(entries, symlinks=symlinks,
                                                                                  hardlinks=hardlinks)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("kind", ["zip", "tar"])
@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_escaping_entries_are_refused_by_name(tmp_path, kind, case):
    spec = ESCAPES[case]
    archive = _archive(kind, tmp_path, spec["entries"], spec.get("symlinks"))
    dest = tmp_path / "out" / "x"
    with pytest.raises(UserError) as err:
        safe_extract(archive, dest)
    assert repr(spec["bad"]) in str(err.value) and "refusing" in str(err.value)
    assert not dest.exists() and not (tmp_path / "evil").exists() and not Path("/tmp/fga-evil-abs").exists()
    leftovers = list((tmp_path / "out").iterdir()) if (tmp_path / "out").exists() else []
    assert [p.name for p in leftovers if not p.name.endswith(".flock")] == []


def test_tar_hardlink_outside_is_refused(tmp_path):
    archive = _archive("tar", tmp_path, GOOD, hardlinks={"pkg/hard": "../../etc/passwd"})
    with pytest.raises(UserError, match="'pkg/hard'.*hard link"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_links_inside_the_archive_are_fine_and_subdir_is_stripped(tmp_path):
    for kind in ("zip", "tar"):
        archive = _archive(kind, tmp_path, GOOD, symlinks={"pkg/sub/link": "../a.txt"})
        dest = tmp_path / kind
        safe_extract(archive, dest, subdir="pkg", info={"sha256": "abc"})
        assert (dest / "a.txt").read_bytes() == b"a" and (dest / "sub" / "b.txt").read_bytes() == b"b"
        assert (dest / "sub" / "link").is_symlink() and (dest / "sub" / "link").read_bytes() == b"a"
        assert is_extracted(dest, "abc") and not is_extracted(dest, "def")


def test_symlink_escaping_the_subdir_is_refused(tmp_path):
    archive = _archive("zip", tmp_path, GOOD, symlinks={"pkg/up": "../other"})
    with pytest.raises(UserError, match="'pkg/up'"):
        safe_extract(archive, tmp_path / "out", subdir="pkg")


def test_interrupted_extraction_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    archive = _archive("zip", tmp_path, GOOD)
    dest = tmp_path / "out"

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(archive_mod, "_extract_zip", boom)
    with pytest.raises(KeyboardInterrupt):
        safe_extract(archive, dest)
    assert not dest.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())
    monkeypatch.undo()
    safe_extract(archive, dest)
    assert (dest / MARKER_NAME).is_file() and (dest / "pkg" / "a.txt").read_bytes() == b"a"


def test_not_an_archive(tmp_path):
    path = tmp_path / "x.zip"
    path.write_bytes(b"hello")
    with pytest.raises(UserError, match="not a zip or tar archive"):
        safe_extract(path, tmp_path / "out")
