"""Load a split's inputs (image regions + captions) and encode every image and caption once.

Regions come from the frozen feature store (`features/<dataset>/<backbone>/<split>.h5`, the
default `train.mode: frozen_features`) or, for a `finetune` run, from the run's own fine-tuned
backbone applied to the images (`region_source` weights of its checkpoint). Captions are always
read from dataset.json and tokenised with the dataset's train vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fga.errors import UserError
from fga.features.extract import feature_hash
from fga.features.store import open_store, read_store
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


def caption_tokens(cfg: dict[str, Any], captions: list[str], vocab_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    tokens, lengths = encode_captions(captions, load_vocab(vocab_path), cfg["features"]["text"]["max_words"])
    return torch.from_numpy(tokens), torch.from_numpy(lengths)


# ------------------------------------------------------------------------------------- fine-tuned runs


def is_finetune(cfg: dict[str, Any]) -> bool:
    return cfg["train"].get("mode", "frozen_features") == "finetune"


def finetuned_regions(cfg: dict[str, Any], backbone: str, region_state: dict[str, Any], data_dir: Path,
                      images: list[dict[str, Any]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Regions of `images` (dataset.json entries of `data_dir`) through the run's fine-tuned backbone."""
    from fga.finetune import BackboneRegions, FinetuneBackbone, ImageSplit

    if not region_state:
        raise UserError("train.mode = finetune but the checkpoint holds no backbone weights; re-run `fga train`")
    spec = cfg["features"]["backbones"][backbone]
    net = FinetuneBackbone(spec)
    source = BackboneRegions(net, ImageSplit(data_dir, images, net.data_config,
                                             box_spec=spec if net.regions == "boxes" else None, max_boxes=net.n_regions))
    source.load_state_dict(region_state)
    source.to(device)
    regions, mask = source.all_regions(device)
    attrs = {"backbone": backbone, "weights_source": f"finetuned:{net.weights_source}", "mode": "finetune"}
    return regions, mask, attrs


# ----------------------------------------------------------------------------------------- encoding


@torch.no_grad()
def encode_images(model: RetrievalModel, regions: torch.Tensor, mask: torch.Tensor, device: torch.device,
                  batch_size: int = 256) -> Encoded:
    model.eval()
    return cat_encoded([model.encode_image(regions[i : i + batch_size].to(device).float(), mask[i : i + batch_size].to(device))
                        for i in range(0, len(regions), batch_size)])


@torch.no_grad()
def encode_texts(model: RetrievalModel, tokens: torch.Tensor, lengths: torch.Tensor, device: torch.device,
                 batch_size: int = 256) -> Encoded:
    model.eval()
    return cat_encoded([model.encode_text(tokens[i : i + batch_size].to(device), lengths[i : i + batch_size].to(device))
                        for i in range(0, len(tokens), batch_size)])


@torch.no_grad()
def encode_split(model: RetrievalModel, data: SplitInputs, device: torch.device, batch_size: int = 256) -> tuple[Encoded, Encoded]:
    """Every image and caption encoded once, in eval mode, kept on `device`."""
    return (encode_images(model, data.regions, data.mask, device, batch_size),
            encode_texts(model, data.tokens, data.lengths, device, batch_size))


def caps_per_image(data: SplitInputs) -> int:
    n = len(data.tokens) // data.n_images
    if n * data.n_images != len(data.tokens):
        raise UserError("every image needs the same number of captions (5); check dataset.json")
    return n


def as_numpy(sim: torch.Tensor) -> np.ndarray:
    return sim.float().cpu().numpy()
