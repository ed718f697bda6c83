"""`fga data prepare` of the precomputed-feature datasets end to end: checksum failure, dry run, second run,
user root (fga.data.prepare)."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

try:
    from fixtures_data import base_cfg, precomp_files, serve_set, server  # noqa: F401
except ImportError:  # pragma: no cover - tests imported as a package
    from tests.fixtures_data import base_cfg, precomp_files, serve_set, server  # noqa: F401

from fga.data.disk import human_size
from fga.data.prepare import prepare
from fga.errors import UserError


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


def test_dry_run_fetches_nothing(tmp_path, server, precomp_files, capsys):
    cfg = base_cfg(tmp_path, **serve_set(server, precomp_files))
    out = tmp_path / "data" / "coco_precomp"
    prepare("coco_precomp", cfg, out, dry_run=True, progress=False)
    text = capsys.readouterr().out
    size = len(precomp_files.files["scan_precomp"][1])
    assert "would fetch scan_data.zip" in text and server.url("data.zip") in text
    assert human_size(size) in text and "nothing was fetched" in text
    assert server.count() == 0 and not (tmp_path / "downloads").exists() and not out.exists()


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
