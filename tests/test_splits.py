"""Karpathy splits -> dataset.json contract; COCO 1K folds."""
from __future__ import annotations

import pytest

try:
    from fixtures_data import captions, karpathy_entry
except ImportError:  # pragma: no cover
    from tests.fixtures_data import captions, karpathy_entry

from fga.data import split_images
from fga.data.splits import coco_1k_folds, convert_karpathy, karpathy_file_name, validate_dataset
from fga.errors import UserError


def _convert(entries, **kw):
    return convert_karpathy({"images": entries}, dataset="coco", size_of=lambda i, f: (640, 480), **kw)


def test_coco_entries_become_the_contract():
    entries = [
        karpathy_entry(0, "COCO_val2014_000000391895.jpg", "test", captions("a", 7), filepath="val2014", cocoid=391895),
        karpathy_entry(1, "COCO_train2014_000000000009.jpg", "restval", captions("b"), filepath="train2014", cocoid=9),
    ]
    out = _convert(entries)
    validate_dataset(out)
    first = out["images"][0]
    assert first == {"id": 391895, "file_name": "val2014/COCO_val2014_000000391895.jpg", "split": "test",
                     "width": 640, "height": 480, "sentences": captions("a", 7)[:5]}
    assert [img["id"] for img in out["images"]] == [391895, 9]  # file order kept


def test_flickr_entries_use_imgid_and_a_prefix():
    entry = karpathy_entry(17, "1000092795.jpg", "train", captions("f"))
    assert karpathy_file_name(entry, "flickr30k-images") == "flickr30k-images/1000092795.jpg"
    out = convert_karpathy({"images": [entry]}, dataset="flickr30k", size_of=lambda i, f: (3, 4))
    assert out["images"][0]["id"] == 17 and out["images"][0]["file_name"] == "1000092795.jpg"


def test_raw_missing_falls_back_to_tokens_and_whitespace_is_stripped():
    entry = karpathy_entry(0, "x.jpg", "val", captions("t"))
    entry["sentences"][0] = {"tokens": ["a", "dog"]}
    entry["sentences"][1]["raw"] = "  A cat sits.\n"
    caps = _convert([entry])["images"][0]["sentences"]
    assert caps[:2] == ["a dog", "A cat sits."]


def test_fewer_than_five_captions_names_the_image():
    with pytest.raises(UserError, match=r"'COCO_x.jpg' \(id 5\) has 4 captions, 5 are required"):
        _convert([karpathy_entry(0, "COCO_x.jpg", "train", captions("a", 4), cocoid=5)])


def test_bad_split_and_duplicate_ids_are_errors():
    with pytest.raises(UserError, match="split 'holdout'"):
        _convert([karpathy_entry(0, "a.jpg", "holdout", captions("a"))])
    dup = [karpathy_entry(0, "a.jpg", "train", captions("a"), cocoid=1),
           karpathy_entry(1, "b.jpg", "train", captions("b"), cocoid=1)]
    with pytest.raises(UserError, match="image id 1 appears twice"):
        _convert(dup)


def test_coco_1k_folds_are_consecutive_blocks_of_1000():
    folds = coco_1k_folds(5000)
    assert folds == [slice(0, 1000), slice(1000, 2000), slice(2000, 3000), slice(3000, 4000), slice(4000, 5000)]
    test_ids = list(range(5000))
    assert sorted(i for f in folds for i in test_ids[f]) == test_ids
    assert coco_1k_folds(10) == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8), slice(8, 10)]
    with pytest.raises(UserError, match="cannot be cut"):
        coco_1k_folds(4999)


def test_split_images_keeps_file_order():
    splits = ["test", "train", "test", "restval", "val"]
    dataset = _convert([karpathy_entry(i, f"{i}.jpg", s, captions(str(i))) for i, s in enumerate(splits)])
    assert [img["id"] for img in split_images(dataset, "test")] == [0, 2]
    assert [img["split"] for img in dataset["images"]] == splits  # restval kept as its own label


def test_validate_dataset_rejects_four_captions():
    bad = {"dataset": "coco", "images": [{"id": 1, "file_name": "a.jpg", "split": "train", "width": 1, "height": 1,
                                          "sentences": ["a"] * 4}]}
    with pytest.raises(UserError, match=r"images\[0\]: needs exactly 5"):
        validate_dataset(bad)
