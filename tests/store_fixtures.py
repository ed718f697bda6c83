"""A tiny project on disk for loop/evaluation tests: real synthetic scenes, their vocabulary and random features."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fga.data.synthetic import generate
from fga.features.store import StoreWriter, feature_hash
from fga.features.text import build_vocab_file
from fga.io import read_json


def write_random_project(root: Path, cfg: dict, dataset: str, backbone: str, n_regions: int, feat_dim: int,
                         pad_every: int) -> None:
    """data/<dataset>, features/<dataset>/text_bigru/vocab.json and random region stores for every split.

    Every `pad_every`-th image has its last region masked out, so padding is exercised.
    """
    generate(root / "data" / dataset, progress=False, **cfg["data"][dataset])
    build_vocab_file(root / "data" / dataset / "dataset.json", root / "features" / dataset / "text_bigru" / "vocab.json", 1)
    ds = read_json(root / "data" / dataset / "dataset.json")
    rng = np.random.default_rng(0)
    attrs = {"backbone": backbone, "dataset": dataset, "model": "none", "region_source": "grid",
             "weights_source": "random", "feature_dim": feat_dim, "params_hash": feature_hash(cfg, dataset, backbone)}
    for split in ("train", "val", "test"):
        ids = [im["id"] for im in ds["images"] if im["split"] == split]
        writer = StoreWriter(root / "features" / dataset / backbone / f"{split}.h5", len(ids), n_regions, feat_dim, attrs)
        regions = rng.standard_normal((len(ids), n_regions, feat_dim)).astype(np.float32)
        mask = np.ones((len(ids), n_regions), bool)
        mask[::pad_every, -1] = False
        writer.write(0, regions, np.zeros((len(ids), n_regions, 4), np.float32), mask, np.array(ids, np.int64))
        writer.finish()
