"""Split loading and encoding: partial store reads, batched encoding, the QB-Norm query bank (train only)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fga.encoding import encode_images, encode_split, encode_texts
from fga.errors import UserError
from fga.evaluate.run import query_bank
from fga.features.store import feature_hash, read_store
from fga.inputs import caps_per_image, load_split, store_rows
from fga.io import read_json
from fga.models.grm import GRM
from store_fixtures import write_random_project

DS, BK = "synthetic", "rand"
R, D = 3, 10


def cfg() -> dict:
    return {"data": {DS: {"seed": 0, "n_train": 20, "n_val": 3, "n_test": 6, "image_size": 48, "min_objects": 1,
                          "max_objects": 3}},
            "features": {"batch_size": 8, "text": {"min_count": 1, "max_words": 90},
                         "backbones": {BK: {"model": "none", "weights": "random", "regions": "grid", "grid_size": 2}}},
            "train": {"mode": "frozen_features"}}


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = cfg()
    write_random_project(tmp_path, c, DS, BK, R, D, pad_every=3)
    return tmp_path, c


def test_store_rows_reads_a_subset(project):
    root, c = project
    path = root / "features" / DS / BK / "train.h5"
    whole = read_store(path)
    regions, mask, ids, attrs = store_rows(path, feature_hash(c, DS, BK), [7, 2, 11])
    assert ids == [int(whole.image_id[i]) for i in (2, 7, 11)]  # sorted rows
    assert np.array_equal(regions.numpy(), whole.regions[[2, 7, 11]]) and np.array_equal(mask.numpy(), whole.mask[[2, 7, 11]])
    assert attrs["dataset"] == DS
    with pytest.raises(UserError, match="out of range"):
        store_rows(path, None, [0, 99])
    with pytest.raises(UserError, match="other feature params"):
        store_rows(path, "deadbeef")


def test_encode_split_in_batches_equals_one_batch(project):
    root, c = project
    data = load_split(c, DS, BK, "test")
    assert caps_per_image(data) == 5 and data.n_images == 6
    torch.manual_seed(0)
    model = GRM(D, 200, embed_dim=8, word_dim=4, num_prompts=2).eval()
    img, txt = encode_split(model, data, torch.device("cpu"), batch_size=4)
    img1 = encode_images(model, data.regions, data.mask, torch.device("cpu"), batch_size=100)
    txt1 = encode_texts(model, data.tokens, data.lengths, torch.device("cpu"), batch_size=100)
    for a, b in ((img, img1), (txt, txt1)):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k
    np.testing.assert_allclose(model.similarity(img, txt).numpy(), model.similarity(img1, txt1).numpy(), atol=1e-6)


def test_query_bank_is_a_seeded_train_subset(project):
    root, c = project
    ds = read_json(root / "data" / DS / "dataset.json")
    train_ids = {im["id"] for im in ds["images"] if im["split"] == "train"}
    test_ids = {im["id"] for im in ds["images"] if im["split"] == "test"}
    qb = {"bank_size": {"images": 8, "captions": 30}, "seed": 0}
    bank = query_bank(c, DS, BK, qb, {}, torch.device("cpu"), test_ids)
    assert bank["n_images"] == 8 and bank["n_captions"] == 30 and bank["regions"].shape == (8, R, D)
    assert len(bank["tokens"]) == 30
    again = query_bank(c, DS, BK, qb, {}, torch.device("cpu"), test_ids)
    assert torch.equal(bank["regions"], again["regions"]) and torch.equal(bank["tokens"], again["tokens"])
    other = query_bank(c, DS, BK, {**qb, "seed": 1}, {}, torch.device("cpu"), test_ids)
    assert not torch.equal(bank["regions"], other["regions"])
    capped = query_bank(c, DS, BK, {"bank_size": {"images": 500, "captions": 5000}, "seed": 0}, {},
                        torch.device("cpu"), test_ids)
    assert capped["n_images"] == 20 and capped["n_captions"] == 100  # the whole train split, never more
    with pytest.raises(UserError, match="overlaps"):  # a bank that would contain evaluated images is refused
        query_bank(c, DS, BK, qb, {}, torch.device("cpu"), train_ids)
