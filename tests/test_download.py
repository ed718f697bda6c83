"""Downloads (resume, retries, verification, lock file, dry run, disk check) and safe extraction."""
from __future__ import annotations

import io
import json
import shutil
import zipfile
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

try:
    from fixtures_data import (base_cfg, precomp_files, serve_set, server, sha256, tar_bytes,  # noqa: F401
                               zip_bytes)
except ImportError:  # pragma: no cover - tests imported as a package
    from tests.fixtures_data import (base_cfg, precomp_files, serve_set, server, sha256, tar_bytes,  # noqa: F401
                                     zip_bytes)

from fga.data import download
from fga.data.download import (LOCK_NAME, MARKER_NAME, Fetcher, is_extracted, resolve_specs, safe_extract,
                               verify_file)
from fga.data.manifests import MANIFESTS, manifest
from fga.data.prepare import prepare
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


# --------------------------------------------------------------------------- manifests


def test_manifest_entries_are_well_formed():
    for dataset, specs in MANIFESTS.items():
        for spec in specs:
            assert spec.url is None or spec.url.startswith(("http://", "https://")), spec
            assert spec.sha256 is None or len(spec.sha256) == 64, spec
            if spec.url is None:
                assert spec.config_keys, f"{dataset}/{spec.key}: user-supplied files must name a config key"
    coco = manifest("coco")
    assert coco["coco_train2014"].url == "http://images.cocodataset.org/zips/train2014.zip"
    assert coco["karpathy_captions"].url.endswith("/deepimagesent/caption_datasets.zip")
    assert manifest("f30k_precomp")["scan_precomp"].url == "https://scanproject.blob.core.windows.net/scan-data/data.zip"


def test_config_overrides_and_unknown_keys(tmp_path):
    specs = resolve_specs("coco", {"urls": {"coco_val2014": "http://127.0.0.1:1/v.zip"},
                                   "mirrors": {"coco_val2014": "http://127.0.0.1:2/v.zip"},
                                   "checksums": {"coco_val2014": {"sha256": None}}})
    assert specs["coco_val2014"].urls() == ["http://127.0.0.1:1/v.zip", "http://127.0.0.1:2/v.zip"]
    assert specs["coco_val2014"].sha256 is None and specs["coco_val2014"].size == 6_645_013_297
    with pytest.raises(UserError, match="urls.*unknown file key.*nope"):
        resolve_specs("coco", {"urls": {"nope": "x"}})


# --------------------------------------------------------------------------- HTTP behaviour


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


def test_wrong_checksum_deletes_part_and_extracts_nothing(tmp_path, server, precomp_files):
    cfg = base_cfg(tmp_path, **serve_set(server, precomp_files))
    server.behaviors["data.zip"].corrupt = True
    out = tmp_path / "data" / "f30k_precomp"
    with pytest.raises(UserError) as err:
        prepare("f30k_precomp", cfg, out, progress=False)
    msg = str(err.value)
    assert "scan_data.zip" in msg and "expected" in msg and "got" in msg and "rerun" in msg and "\n" not in msg
    cache = tmp_path / "downloads"
    assert not (cache / "scan_data.zip.part").exists() and not (cache / "scan_data.zip").exists()
    assert not out.exists()


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


def test_dry_run_fetches_nothing(tmp_path, server, precomp_files, capsys):
    cfg = base_cfg(tmp_path, **serve_set(server, precomp_files))
    out = tmp_path / "data" / "coco_precomp"
    prepare("coco_precomp", cfg, out, dry_run=True, progress=False)
    text = capsys.readouterr().out
    size = len(precomp_files.files["scan_precomp"][1])
    assert "would fetch scan_data.zip" in text and server.url("data.zip") in text
    assert download.human_size(size) in text and "nothing was fetched" in text
    assert server.count() == 0 and not (tmp_path / "downloads").exists() and not out.exists()


# --------------------------------------------------------------------------- precomp end to end


def test_precomp_download_extract_and_second_run_downloads_nothing(tmp_path, server, precomp_files):
    cfg = base_cfg(tmp_path, **serve_set(server, precomp_files))
    data = tmp_path / "data"
    prepare("f30k_precomp", cfg, data / "f30k_precomp", progress=False)
    prepare("coco_precomp", cfg, data / "coco_precomp", progress=False)  # same archive: no new request
    assert server.count() == 1
    ims = np.load(data / "coco_precomp" / "testall_ims.npy")
    assert ims.shape == (2, 36, 2048) and ims.dtype == np.float32
    assert (data / "f30k_precomp" / "test_caps.txt").read_text().count("\n") == 10
    assert not (data / "f30k_precomp" / "testall_ims.npy").exists()  # only its own subdir
    prepare("f30k_precomp", cfg, data / "f30k_precomp", progress=False)
    prepare("coco_precomp", cfg, data / "coco_precomp", progress=False)
    assert server.count() == 1


def test_precomp_missing_split_names_the_files(tmp_path, server, precomp_files):
    cfg = base_cfg(tmp_path, splits=["train", "test5k"], **serve_set(server, precomp_files))
    with pytest.raises(UserError, match="test5k_ims.npy, test5k_caps.txt, test5k_ids.txt"):
        prepare("f30k_precomp", cfg, tmp_path / "out", progress=False)


def test_precomp_user_root_makes_no_request(tmp_path, server, precomp_files):
    root = tmp_path / "mine"
    with zipfile.ZipFile(io.BytesIO(precomp_files.files["scan_precomp"][1])) as zf:
        zf.extractall(root)
    cfg = base_cfg(tmp_path, root=str(root), **serve_set(server, precomp_files))
    out = tmp_path / "data" / "f30k_precomp"
    prepare("f30k_precomp", cfg, out, progress=False)
    assert server.count() == 0
    assert np.load(out / "train_ims.npy").shape == (2, 36, 2048)
    (root / "data" / "f30k_precomp" / "dev_ids.txt").unlink()
    with pytest.raises(UserError, match="missing dev_ids.txt"):
        prepare("f30k_precomp", cfg, tmp_path / "other", progress=False)


# --------------------------------------------------------------------------- safe extraction

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

    monkeypatch.setattr(download, "_extract_zip", boom)
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
