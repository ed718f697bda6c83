"""Downloads: resume, retries, mirrors, verification, lock file and disk check (fga.data.fetch, through
fga.data.sources.Fetcher), against a loopback HTTP server."""
from __future__ import annotations

import json
import shutil
from collections import namedtuple

import numpy as np
import pytest

try:
    from fixtures_data import base_cfg, server, sha256  # noqa: F401
except ImportError:  # pragma: no cover - tests imported as a package
    from tests.fixtures_data import base_cfg, server, sha256  # noqa: F401

from fga.data.fetch import LOCK_NAME, verify_file
from fga.data.sources import Fetcher
from fga.errors import UserError

BLOB = np.random.default_rng(7).integers(0, 256, size=300_000, dtype=np.uint8).tobytes()


def blob_cfg(tmp_path, server, data=BLOB, *, pin=True, **behavior):
    """Config for `scan_precomp` (file key) served from the loopback server."""
    url = server.serve("data.zip", data, **behavior)
    checksums = {"sha256": sha256(data), "size": len(data)} if pin else {"sha256": None, "size": None}
    return base_cfg(tmp_path, urls={"scan_precomp": url}, checksums={"scan_precomp": checksums})


def fetch_blob(cfg, **kw):
    fetcher = Fetcher("f30k_precomp", cfg, progress=False, **kw)
    try:
        return fetcher.archive("scan_precomp")
    finally:
        fetcher.close()


def test_plain_download_verifies_and_records_lock(tmp_path, server):
    cfg = blob_cfg(tmp_path, server)
    path = fetch_blob(cfg)
    assert path.read_bytes() == BLOB and not path.with_name(path.name + ".part").exists()
    lock = json.loads((tmp_path / "downloads" / LOCK_NAME).read_text())
    assert lock["files"]["scan_precomp"]["sha256"] == sha256(BLOB)


def test_resume_after_cut_continues_from_the_byte_it_stopped_at(tmp_path, server):
    cut = 123_457
    cfg = blob_cfg(tmp_path, server, cut_at=cut)
    path = fetch_blob(cfg)
    assert path.read_bytes() == BLOB
    log = server.log("data.zip")
    assert [r["range"] for r in log] == [None, f"bytes={cut}-"]
    assert [r["status"] for r in log] == [200, 206]


def test_resume_of_a_part_file_left_by_an_earlier_run(tmp_path, server):
    cfg = blob_cfg(tmp_path, server)
    part = tmp_path / "downloads" / "scan_data.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(BLOB[:50_000])
    assert fetch_blob(cfg).read_bytes() == BLOB
    assert [r["range"] for r in server.log("data.zip")] == ["bytes=50000-"]


def test_read_timeout_mid_body_resumes(tmp_path, server):
    cfg = blob_cfg(tmp_path, server, stall_at=70_000, stall_s=1.5)
    cfg["timeout"] = 0.4
    assert fetch_blob(cfg).read_bytes() == BLOB
    assert [r["range"] for r in server.log("data.zip")] == [None, "bytes=70000-"]


def test_wrong_bytes_from_primary_fall_back_to_a_mirror(tmp_path, server):
    cfg = blob_cfg(tmp_path, server)
    bad = server.serve("bad.zip", BLOB, corrupt=True)
    cfg["urls"] = {"scan_precomp": bad}
    cfg["mirrors"] = {"scan_precomp": [server.url("data.zip")]}
    assert fetch_blob(cfg).read_bytes() == BLOB
    assert server.count("bad.zip") == 1 and server.count("data.zip") == 1


def test_503_twice_then_success(tmp_path, server):
    cfg = blob_cfg(tmp_path, server, fail_503=2)
    assert fetch_blob(cfg).read_bytes() == BLOB
    assert [r["status"] for r in server.log("data.zip")] == [503, 503, 200]


def test_server_ignoring_range_restarts_from_zero(tmp_path, server):
    cfg = blob_cfg(tmp_path, server, ignore_range=True)
    part = tmp_path / "downloads" / "scan_data.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 40_000)  # stale bytes that must not survive
    assert fetch_blob(cfg).read_bytes() == BLOB
    log = server.log("data.zip")
    assert log[0]["range"] == "bytes=40000-" and log[0]["status"] == 200


def test_cut_and_range_ignored_together_still_correct(tmp_path, server):
    cfg = blob_cfg(tmp_path, server, cut_at=100_000, ignore_range=True)
    assert fetch_blob(cfg).read_bytes() == BLOB
    assert [r["status"] for r in server.log("data.zip")] == [200, 200]


def test_lock_file_records_unknown_checksum_and_refuses_a_changed_file(tmp_path, server):
    cfg = blob_cfg(tmp_path, server, pin=False)
    path = fetch_blob(cfg)
    lock = json.loads((tmp_path / "downloads" / LOCK_NAME).read_text())["files"]["scan_precomp"]
    assert lock["sha256"] == sha256(BLOB) and lock["size"] == len(BLOB)
    path.unlink()
    changed = BLOB[:-1] + bytes([BLOB[-1] ^ 1])
    server.serve("data.zip", changed)
    with pytest.raises(UserError, match=f"expected {sha256(BLOB)}, got {sha256(changed)}"):
        fetch_blob(cfg)
    assert not path.exists() and not path.with_name(path.name + ".part").exists()


def test_mirror_used_when_primary_fails(tmp_path, server):
    primary = server.serve("gone.zip", b"", status=404)
    cfg = blob_cfg(tmp_path, server)
    cfg["urls"] = {"scan_precomp": primary}
    cfg["mirrors"] = {"scan_precomp": [server.url("data.zip")]}
    assert fetch_blob(cfg).read_bytes() == BLOB
    assert server.count("gone.zip") == 1 and server.count("data.zip") == 1


def test_unreachable_source_is_a_one_line_user_error(tmp_path, server):
    cfg = blob_cfg(tmp_path, server, status=500)
    cfg["retries"] = 1
    with pytest.raises(UserError, match="download failed.*HTTP 500.*mirrors.scan_precomp") as err:
        fetch_blob(cfg)
    assert "\n" not in str(err.value)


def test_free_disk_check_fails_before_any_request(tmp_path, server, monkeypatch):
    cfg = blob_cfg(tmp_path, server)
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(UserError, match=r"not enough free disk space for scan_data.zip \(needs 293.0 KiB"):
        fetch_blob(cfg)
    assert server.count() == 0


def test_verify_file_keeps_non_temp_files(tmp_path):
    path = tmp_path / "user.tar.gz"
    path.write_bytes(b"abc")
    with pytest.raises(UserError, match="size mismatch"):
        verify_file(path, name=str(path), sha256=None, size=4, temp=False, hint="fix it")
    assert path.exists()
    assert verify_file(path, name="x", sha256=sha256(b"abc"), size=3, temp=False, hint="") == sha256(b"abc")
    part = tmp_path / "x.part"
    part.write_bytes(b"abd")
    with pytest.raises(UserError, match="sha256 mismatch"):
        verify_file(part, name="x", sha256=sha256(b"abc"), size=3, temp=True, hint="rerun")
    assert not part.exists()
