"""Flickr30K + Karpathy splits (+ Flickr30K Entities): user-supplied images, prepare, root."""
from __future__ import annotations

import io
import json
import tarfile
import zipfile

import pytest

try:
    from fixtures_data import FLICKR_IMAGES, base_cfg, captions, flickr_files, serve_set, server  # noqa: F401
except ImportError:  # pragma: no cover
    from tests.fixtures_data import FLICKR_IMAGES, base_cfg, captions, flickr_files, serve_set, server  # noqa: F401

from fga.data.flickr30k import parse_entities_xml, parse_phrase_types
from fga.data.prepare import prepare
from fga.data.splits import validate_dataset
from fga.errors import UserError


def _check_dataset(out, prefix="flickr30k-images/"):
    dataset = json.loads((out / "dataset.json").read_text())
    validate_dataset(dataset, out / "dataset.json")
    assert dataset["dataset"] == "flickr30k"
    for i, (img, (fid, split, w, h, n)) in enumerate(zip(dataset["images"], FLICKR_IMAGES)):
        assert img["id"] == i  # Karpathy imgid
        assert img["file_name"] == f"{prefix}{fid}.jpg"
        assert (img["split"], img["width"], img["height"]) == (split, w, h)  # from the image header
        assert img["sentences"] == captions(f"flickr{fid}", n)[:5]
        assert (out / "images" / img["file_name"]).is_file()
    return dataset


def test_neither_archive_nor_url_names_the_config_keys(tmp_path, server, flickr_files):
    cfg = base_cfg(tmp_path, **serve_set(server, flickr_files, skip=("flickr30k_images",)))
    with pytest.raises(UserError) as err:
        prepare("flickr30k", cfg, tmp_path / "out", progress=False)
    msg = str(err.value)
    assert "data.flickr30k.images_archive" in msg and "data.flickr30k.images_url" in msg and "request form" in msg and "\n" not in msg
    assert server.count() == 0


def test_private_url_and_entities_archive(tmp_path, server, flickr_files):
    from pycocotools.coco import COCO

    overrides = serve_set(server, flickr_files, pin=False, skip=("flickr30k_entities",))
    entities = tmp_path / "annotations.zip"
    entities.write_bytes(flickr_files.files["flickr30k_entities"][1])
    images_url = overrides["urls"].pop("flickr30k_images")
    cfg = base_cfg(tmp_path, images_url=images_url, entities_archive=str(entities), **overrides)
    out = tmp_path / "data" / "flickr30k"
    prepare("flickr30k", cfg, out, progress=False)
    dataset = _check_dataset(out)
    coco = COCO(str(out / "instances.json"))
    assert sorted(coco.getImgIds()) == [img["id"] for img in dataset["images"]]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[0]))
    assert [coco.cats[a["category_id"]]["name"] for a in anns] == ["people", "clothing"]
    assert anns[0]["bbox"] == [0.0, 0.0, 20.0, 30.0] and anns[0]["phrase_ids"] == ["101"]
    assert anns[1]["bbox"] == [9.0, 4.0, 41.0, 36.0]  # clipped to the 50x40 image
    assert [coco.cats[a["category_id"]]["name"] for a in coco.loadAnns(coco.getAnnIds(imgIds=[4]))] == ["animals"]
    assert len(coco.getAnnIds()) == 3
    # sizes and checksums unknown in the manifest: recorded on first use, then a rerun fetches nothing
    lock = json.loads((tmp_path / "downloads" / "fga-download.lock.json").read_text())["files"]
    assert {"karpathy_captions", "flickr30k_images", "flickr30k_entities"} <= set(lock)
    count = server.count()
    assert count == 2
    prepare("flickr30k", cfg, out, progress=False)
    assert server.count() == count


def test_local_images_archive_without_entities(tmp_path, server, flickr_files):
    from pycocotools.coco import COCO

    archive = tmp_path / "flickr30k-images.tar.gz"
    archive.write_bytes(flickr_files.files["flickr30k_images"][1])
    overrides = serve_set(server, flickr_files, skip=("flickr30k_images", "flickr30k_entities"))
    cfg = base_cfg(tmp_path, images_archive=str(archive), **overrides)
    out = tmp_path / "data" / "flickr30k"
    prepare("flickr30k", cfg, out, progress=False)
    _check_dataset(out)
    coco = COCO(str(out / "instances.json"))
    assert len(coco.getImgIds()) == 6 and coco.getAnnIds() == []
    assert server.count() == 1  # only the Karpathy splits
    assert archive.exists()  # the user's file is never touched


def test_local_archive_missing_path(tmp_path):
    cfg = base_cfg(tmp_path, images_archive=str(tmp_path / "nope.tar.gz"))
    with pytest.raises(UserError, match="nope.tar.gz.*data.flickr30k.images_archive does not exist"):
        prepare("flickr30k", cfg, tmp_path / "out", progress=False)


def test_user_root_makes_no_request(tmp_path, server, flickr_files):
    root = tmp_path / "f30k"
    with tarfile.open(fileobj=io.BytesIO(flickr_files.files["flickr30k_images"][1])) as tf:
        tf.extractall(root, filter="data")
    zipfile.ZipFile(io.BytesIO(flickr_files.files["karpathy_captions"][1])).extract("dataset_flickr30k.json", root)
    zipfile.ZipFile(io.BytesIO(flickr_files.files["flickr30k_entities"][1])).extractall(root / "entities")
    cfg = base_cfg(tmp_path, root=str(root), **serve_set(server, flickr_files))
    out = tmp_path / "data" / "flickr30k"
    prepare("flickr30k", cfg, out, progress=False)
    assert server.count() == 0
    _check_dataset(out)
    assert len(json.loads((out / "instances.json").read_text())["annotations"]) == 3
    (root / "flickr30k-images" / f"{FLICKR_IMAGES[5][0]}.jpg").unlink()
    with pytest.raises(UserError, match=f"1 of 6 Flickr30K images missing .*{FLICKR_IMAGES[5][0]}.jpg"):
        prepare("flickr30k", cfg, out, progress=False)


def test_dry_run_with_private_url(tmp_path, server, flickr_files, capsys):
    overrides = serve_set(server, flickr_files, pin=False)
    cfg = base_cfg(tmp_path, images_url=overrides["urls"].pop("flickr30k_images"), **overrides)
    prepare("flickr30k", cfg, tmp_path / "out", dry_run=True, progress=False)
    text = capsys.readouterr().out
    assert "would fetch flickr30k-images.tar.gz (size unknown)" in text and "nothing was fetched" in text
    assert server.count() == 0


def test_entities_parsers(tmp_path, flickr_files):
    zipfile.ZipFile(io.BytesIO(flickr_files.files["flickr30k_entities"][1])).extractall(tmp_path)
    fid = FLICKR_IMAGES[0][0]
    objects = parse_entities_xml(tmp_path / "Annotations" / f"{fid}.xml")
    assert objects == [{"phrase_ids": ["101"], "box": (1, 1, 20, 30)}, {"phrase_ids": ["102"], "box": (10, 5, 50, 40)}]
    assert parse_phrase_types(tmp_path / "Sentences" / f"{fid}.txt") == {"101": "people", "102": "clothing",
                                                                          "103": "scene"}
    bad = tmp_path / "bad.xml"
    bad.write_text("<annotation><object>")
    with pytest.raises(UserError, match="bad.xml: not valid Flickr30K Entities xml"):
        parse_entities_xml(bad)
