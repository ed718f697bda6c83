"""Load a split's inputs (feature store + captions) and encode every image and caption once."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fga.errors import UserError
from fga.features.extract import feature_hash
from fga.features.store import read_store
from fga.features.text import encode_captions, load_vocab, split_captions
from fga.io import read_json
from fga.models.base import Encoded, RetrievalModel, cat_encoded


@dataclass
class SplitInputs:
    """One split: regions of each image, and its 5 captions per image (caption j -> image j // 5)."""

    regions: torch.Tensor  # [N, R, D] float16
    mask: torch.Tensor  # [N, R] bool
    tokens: torch.Tensor  # [5N, L] int64
    lengths: torch.Tensor  # [5N]
    image_ids: list[int]
    attrs: dict[str, Any]

    @property
    def n_images(self) -> int:
        return len(self.image_ids)


def paths(dataset: str, backbone: str) -> dict[str, Path]:
    return {
        "dataset_json": Path("data") / dataset / "dataset.json",
        "vocab": Path("features") / dataset / "vocab.json",
        "features": Path("features") / dataset / backbone,
    }


def load_split(cfg: dict[str, Any], dataset: str, backbone: str, split: str) -> SplitInputs:
    p = paths(dataset, backbone)
    store = read_store(p["features"] / f"{split}.h5", expect_hash=feature_hash(cfg, dataset, backbone))
    image_ids, captions = split_captions(read_json(p["dataset_json"], "dataset.json"), split)
    if list(store.image_id) != image_ids:
        raise UserError(f"{p['features'] / f'{split}.h5'}: image ids differ from {p['dataset_json']}; re-run `fga features extract`")
    tokens, lengths = encode_captions(captions, load_vocab(p["vocab"]), cfg["features"]["text"]["max_words"])
    return SplitInputs(torch.from_numpy(store.regions), torch.from_numpy(store.mask), torch.from_numpy(tokens),
                       torch.from_numpy(lengths), image_ids, store.attrs)


@torch.no_grad()
def encode_split(model: RetrievalModel, data: SplitInputs, device: torch.device, batch_size: int = 256) -> tuple[Encoded, Encoded]:
    """Every image and caption encoded once, in eval mode, kept on `device`."""
    model.eval()
    images = [model.encode_image(data.regions[i : i + batch_size].to(device).float(), data.mask[i : i + batch_size].to(device))
              for i in range(0, data.n_images, batch_size)]
    texts = [model.encode_text(data.tokens[i : i + batch_size].to(device), data.lengths[i : i + batch_size].to(device))
             for i in range(0, len(data.tokens), batch_size)]
    return cat_encoded(images), cat_encoded(texts)


def caps_per_image(data: SplitInputs) -> int:
    n = len(data.tokens) // data.n_images
    if n * data.n_images != len(data.tokens):
        raise UserError("every image needs the same number of captions (5); check dataset.json")
    return n


def as_numpy(sim: torch.Tensor) -> np.ndarray:
    return sim.float().cpu().numpy()
