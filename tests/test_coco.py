"""COCO 2014 + Karpathy splits: download, prepare, pycocotools, user root, dry run."""
from __future__ import annotations

import io
import json
import zipfile

import pytest

try:
    from fixtures_data import (COCO_EXTRA_IMAGE, COCO_IMAGES, base_cfg, captions, coco_file_name,  # noqa: F401
                               coco_files, serve_set, server)
except ImportError:  # pragma: no cover
    from tests.fixtures_data import (COCO_EXTRA_IMAGE, COCO_IMAGES, base_cfg, captions,  # noqa: F401
                                     coco_file_name, coco_files, serve_set, server)

from fga.data.prepare import prepare
from fga.data.splits import validate_dataset
from fga.errors import UserError


def _check_outputs(out):
    from pycocotools.coco import COCO

    dataset = json.loads((out / "dataset.json").read_text())
    validate_dataset(dataset, out / "dataset.json")
    assert dataset["dataset"] == "coco"
    assert [img["id"] for img in dataset["images"]] == [cid for _, cid, *_ in COCO_IMAGES]
    for img, (folder, cid, split, w, h, n) in zip(dataset["images"], COCO_IMAGES):
        assert img["file_name"] == f"{folder}/{coco_file_name(folder, cid)}"
        assert (img["split"], img["width"], img["height"]) == (split, w, h)
        assert img["sentences"] == captions(f"coco{cid}", n)[:5]
        assert (out / "images" / img["file_name"]).is_file()
    coco = COCO(str(out / "instances.json"))
    assert sorted(coco.getImgIds()) == sorted(cid for _, cid, *_ in COCO_IMAGES)
    assert COCO_EXTRA_IMAGE not in coco.imgs
    assert len(coco.getAnnIds(imgIds=[9])) == 2 and coco.getAnnIds(imgIds=[30]) == []
    assert len(coco.getAnnIds()) == 10 and {c["name"] for c in coco.loadCats(coco.getCatIds())} == {"person", "car", "dog"}
    assert coco.imgs[74]["file_name"] == "val2014/COCO_val2014_000000000074.jpg"
    return dataset


def test_full_download_and_prepare_then_second_run_downloads_nothing(tmp_path, server, coco_files):
    cfg = base_cfg(tmp_path, **serve_set(server, coco_files))
    out = tmp_path / "data" / "coco"
    prepare("coco", cfg, out, progress=False)
    _check_outputs(out)
    assert server.count() == 4
    cache = tmp_path / "downloads"
    assert (out / "images").is_symlink() and (out / "images").resolve() == (cache / "coco2014").resolve()
    lock = json.loads((cache / "fga-download.lock.json").read_text())["files"]
    assert set(lock) == {"karpathy_captions", "coco_train2014", "coco_val2014", "coco_annotations_trainval2014"}
    before = (out / "dataset.json").read_bytes()
    prepare("coco", cfg, out, progress=False)
    assert server.count() == 4
    assert (out / "dataset.json").read_bytes() == before


def test_user_root_makes_no_request(tmp_path, server, coco_files):
    root = tmp_path / "coco_root"
    for key in ("coco_train2014", "coco_val2014", "coco_annotations_trainval2014"):
        zipfile.ZipFile(io.BytesIO(coco_files.files[key][1])).extractall(root)
    zipfile.ZipFile(io.BytesIO(coco_files.files["karpathy_captions"][1])).extract("dataset_coco.json", root)
    cfg = base_cfg(tmp_path, root=str(root), **serve_set(server, coco_files))
    out = tmp_path / "data" / "coco"
    prepare("coco", cfg, out, progress=False)
    assert server.count() == 0
    _check_outputs(out)
    assert (out / "images").resolve() == root.resolve()
    assert not (tmp_path / "downloads").exists()


def test_user_root_missing_files_are_listed(tmp_path, server, coco_files):
    root = tmp_path / "coco_root"
    zipfile.ZipFile(io.BytesIO(coco_files.files["coco_train2014"][1])).extractall(root)
    cfg = base_cfg(tmp_path, root=str(root))
    with pytest.raises(UserError) as err:
        prepare("coco", cfg, tmp_path / "out", progress=False)
    msg = str(err.value)
    assert "dataset_coco.json" in msg and "annotations/instances_val2014.json" in msg and "val2014/" in msg
    assert "\n" not in msg and server.count() == 0


def test_user_root_missing_image_is_named(tmp_path, coco_files):
    root = tmp_path / "coco_root"
    for key in ("coco_train2014", "coco_val2014", "coco_annotations_trainval2014"):
        zipfile.ZipFile(io.BytesIO(coco_files.files[key][1])).extractall(root)
    zipfile.ZipFile(io.BytesIO(coco_files.files["karpathy_captions"][1])).extract("dataset_coco.json", root)
    (root / "val2014" / coco_file_name("val2014", 74)).unlink()
    with pytest.raises(UserError, match="1 of 6 COCO images missing .*COCO_val2014_000000000074.jpg"):
        prepare("coco", base_cfg(tmp_path, root=str(root)), tmp_path / "out", progress=False)


def test_dry_run_lists_files_and_fetches_nothing(tmp_path, server, coco_files, capsys):
    cfg = base_cfg(tmp_path, **serve_set(server, coco_files))
    prepare("coco", cfg, tmp_path / "out", dry_run=True, progress=False)
    text = capsys.readouterr().out
    for filename, _ in coco_files.files.values():
        assert f"would fetch {filename}" in text
    assert "total to download" in text
    assert server.count() == 0 and not (tmp_path / "out").exists() and not (tmp_path / "downloads").exists()


def test_dry_run_with_real_manifest_reports_real_sizes(tmp_path, capsys):
    prepare("coco", base_cfg(tmp_path), tmp_path / "out", dry_run=True, progress=False)
    text = capsys.readouterr().out
    assert "http://images.cocodataset.org/zips/train2014.zip" in text and "12.6 GiB" in text
    assert "total to download: 19.0 GiB" in text
