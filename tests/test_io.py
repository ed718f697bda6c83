"""Atomic writes: complete files only, and the modes a plain open()/mkdir() would give under the umask."""
import os
import stat
from pathlib import Path

import pytest

from fga.io import atomic_dir, atomic_path, current_umask, read_json, write_json


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_current_umask_reads_the_process_umask(umask):
    assert current_umask() == umask
    assert current_umask() == umask  # reading it did not change it


def test_atomic_files_get_the_umask_mode(tmp_path, umask):
    write_json(tmp_path / "metrics.json", {"rsum": 1.0})
    with atomic_path(tmp_path / "sub" / "matrix.npy") as tmp:
        tmp.write_bytes(b"x")
    expected = 0o666 & ~umask
    assert mode(tmp_path / "metrics.json") == expected
    assert mode(tmp_path / "sub" / "matrix.npy") == expected
    assert expected == (0o644 if umask == 0o022 else 0o600)


def test_atomic_dirs_get_the_umask_mode(tmp_path, umask):
    with atomic_dir(tmp_path / "images") as tmp:
        (tmp / "a.txt").write_text("a")
    assert mode(tmp_path / "images") == 0o777 & ~umask
    assert (tmp_path / "images" / "a.txt").read_text() == "a"


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    write_json(tmp_path / "m.json", {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "m.json") as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert read_json(tmp_path / "m.json") == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
