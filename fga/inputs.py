"""A split's inputs: the region features of its images and its tokenised captions.

Shared by training (fga.train) and evaluation (fga.evaluate). Regions come from the frozen
feature store (`features/<dataset>/<backbone>/<split>.h5`, the default `train.mode:
frozen_features`) or are computed elsewhere and wrapped with the captions by `caption_inputs`
(a fine-tuned backbone: fga.finetune). Captions are always read from dataset.json and tokenised
with the dataset's train vocabulary (`features/<dataset>/vocab.json`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fga.errors import UserError
from fga.features.store import feature_hash, open_store, read_store
from fga.features.text import encode_captions, load_vocab, split_captions
from fga.io import read_json


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
    """Where a split's inputs live: dataset.json, the train vocabulary, the backbone's feature store directory."""
    return {
        "dataset_json": Path("data") / dataset / "dataset.json",
        "vocab": Path("features") / dataset / "vocab.json",
        "features": Path("features") / dataset / backbone,
    }


def is_finetune(cfg: dict[str, Any]) -> bool:
    """Whether runs of this config train (and are evaluated with) their own backbone."""
    return cfg["train"].get("mode", "frozen_features") == "finetune"


def vocab_size(dataset: str, backbone: str) -> int:
    return len(load_vocab(paths(dataset, backbone)["vocab"]))


def caption_tokens(cfg: dict[str, Any], captions: list[str], vocab_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions -> (tokens [n, L] int64, lengths [n]) with the dataset's train vocabulary."""
    tokens, lengths = encode_captions(captions, load_vocab(vocab_path), cfg["features"]["text"]["max_words"])
    return torch.from_numpy(tokens), torch.from_numpy(lengths)


def load_split(cfg: dict[str, Any], dataset: str, backbone: str, split: str) -> SplitInputs:
    """A split's regions from the feature store (checked against the current feature params) and its captions."""
    p = paths(dataset, backbone)
    store = read_store(p["features"] / f"{split}.h5", expect_hash=feature_hash(cfg, dataset, backbone))
    image_ids, captions = split_captions(read_json(p["dataset_json"], "dataset.json"), split)
    if list(store.image_id) != image_ids:
        raise UserError(f"{p['features'] / f'{split}.h5'}: image ids differ from {p['dataset_json']}; re-run `fga features extract`")
    tokens, lengths = caption_tokens(cfg, captions, p["vocab"])
    return SplitInputs(torch.from_numpy(store.regions), torch.from_numpy(store.mask), tokens, lengths, image_ids,
                       store.attrs)


def caption_inputs(cfg: dict[str, Any], dataset: str, backbone: str, split: str, regions: torch.Tensor,
                   mask: torch.Tensor, attrs: dict[str, Any]) -> SplitInputs:
    """A split's captions (as `load_split` reads them) around regions computed elsewhere (finetune mode)."""
    p = paths(dataset, backbone)
    image_ids, captions = split_captions(read_json(p["dataset_json"], "dataset.json"), split)
    if not image_ids:
        raise UserError(f"{p['dataset_json']}: no {split!r} images")
    tokens, lengths = caption_tokens(cfg, captions, p["vocab"])
    return SplitInputs(regions, mask, tokens, lengths, image_ids, {"dataset": dataset, "backbone": backbone, **attrs})


def store_rows(path: Path, expect_hash: str | None, rows: Sequence[int] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, list[int], dict[str, Any]]:
    """(regions, mask, image ids, attrs) of some rows of a region store (all rows when None), read lazily."""
    f = open_store(path, expect_hash)
    try:
        if rows is None:
            sel: Any = slice(None)
        else:
            sel = np.asarray(sorted(rows), dtype=np.int64)
            if sel.size and (sel[0] < 0 or sel[-1] >= f["image_id"].shape[0]):
                raise UserError(f"{path}: row {int(sel[-1])} out of range; re-run `fga features extract`")
        regions = torch.from_numpy(f["regions"][sel])
        mask = torch.from_numpy(f["mask"][sel])
        ids = [int(i) for i in f["image_id"][sel]]
        return regions, mask, ids, dict(f.attrs)
    except OSError as exc:
        raise UserError(f"{path}: unreadable HDF5 ({exc}); delete it and re-run `fga features extract`") from None
    finally:
        f.close()


def caps_per_image(data: SplitInputs) -> int:
    n = len(data.tokens) // data.n_images
    if n * data.n_images != len(data.tokens):
        raise UserError("every image needs the same number of captions (5); check dataset.json")
    return n
