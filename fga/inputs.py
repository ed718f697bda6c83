"""A split's inputs: the region features of its images and its tokenised captions.

Shared by training (fga.train) and evaluation (fga.evaluate). Regions come from the frozen
feature store (`features/<dataset>/<backbone>/<split>.h5`, the default `train.mode:
frozen_features`) or are computed elsewhere and wrapped with the captions by `caption_inputs`
(a fine-tuned backbone: fga.finetune). Captions are read from dataset.json and become what the run's text
encoder (`train.text_encoder`, fga.models.text_encoder) takes:

- `bigru`: word ids of the dataset's train vocabulary (`features/<dataset>/text_bigru/vocab.json`), [n, L] int64;
- a transformer in frozen_features mode: the text store's cached word-piece features
  (`features/<dataset>/text_<encoder>/<split>.h5`), [CLS] and [SEP] dropped, [n, L, D] float16;
- a transformer in finetune mode: the tokenizer's word-piece ids without [CLS]/[SEP], [n, L] int64.

`lengths` always count the caption's tokens (words or word pieces).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fga.errors import UserError
from fga.features.store import feature_hash, open_store, open_text_store, read_store
from fga.features.text import (TextEncoder, caption_rows, encode_captions, encoder_max_words, encoder_spec,
                               load_tokenizer, load_vocab, max_pieces, resolve_model_dir, split_captions,
                               text_feature_hash, text_store_dir, vocab_file, word_piece_ids)
from fga.grid import run_text_encoder
from fga.io import read_json
from fga.models.text_encoder import BIGRU, TextEncoderSpec


@dataclass
class SplitInputs:
    """One split: regions of each image, and its 5 captions per image (caption j -> image j // 5)."""

    regions: torch.Tensor  # [N, R, D] float16
    mask: torch.Tensor  # [N, R] bool
    tokens: torch.Tensor  # [5N, L] int64 word / word-piece ids, or [5N, L, D] float16 cached word-piece features
    lengths: torch.Tensor  # [5N] words / word pieces per caption
    image_ids: list[int]
    attrs: dict[str, Any]

    @property
    def n_images(self) -> int:
        return len(self.image_ids)


def paths(dataset: str, backbone: str) -> dict[str, Path]:
    """Where a split's inputs live: dataset.json, the train vocabulary, the backbone's feature store directory."""
    return {
        "dataset_json": Path("data") / dataset / "dataset.json",
        "vocab": vocab_file(dataset),
        "features": Path("features") / dataset / backbone,
    }


def is_finetune(cfg: dict[str, Any]) -> bool:
    """Whether runs of this config train (and are evaluated with) their own backbone."""
    return cfg["train"].get("mode", "frozen_features") == "finetune"


def _model_width(model_dir: Path) -> int:
    """hidden_size of a local transformers model (config.json), the width of its cached features."""
    config = read_json(model_dir / "config.json", "transformers config.json")
    width = next((config[k] for k in ("hidden_size", "dim", "d_model") if k in config), None)
    if not isinstance(width, int):
        raise UserError(f"{model_dir / 'config.json'}: no hidden_size; give a transformers encoder directory")
    return width


def text_encoder_spec(cfg: dict[str, Any]) -> TextEncoderSpec:
    """The `TextEncoderSpec` a run of `cfg` builds its models with (model directories checked, one-line errors)."""
    name, mode = run_text_encoder(cfg), cfg["train"].get("mode", "frozen_features")
    if name == BIGRU:
        return TextEncoderSpec(BIGRU, mode)
    try:
        spec = encoder_spec(cfg, name)
    except UserError:
        raise UserError(f"params.yaml: train.text_encoder = {name!r} is neither {BIGRU!r} nor under "
                        "features.text.encoders; name one of those") from None
    model_dir, _ = resolve_model_dir(spec, name)
    return TextEncoderSpec(name, mode, feature_dim=None if mode == "finetune" else _model_width(model_dir),
                           model_dir=str(model_dir))


def text_store_words(cfg: dict[str, Any], dataset: str, split: str, dataset_json: dict[str, Any],
                     rows: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached word-piece features of a split's captions (some rows, sorted; all when None) -> (features
    [n, L, D] float16 without [CLS]/[SEP], word pieces per caption [n]), checked against the params and dataset."""
    name = run_text_encoder(cfg)
    path = text_store_dir(dataset, name) / f"{split}.h5"
    fix = f"re-run `fga features text-encode --dataset {dataset} --encoder {name}`"
    if not path.exists():
        raise UserError(f"{path} not found; train.text_encoder = {name} reads it: run "
                        f"`fga features text-encode --dataset {dataset} --encoder {name}`")
    _, caption_images = caption_rows(dataset_json, split)
    sel: Any = slice(None) if rows is None else np.asarray(sorted(rows), dtype=np.int64)
    f = open_text_store(path, text_feature_hash(cfg, dataset, name))
    try:
        if len(f["image_id"]) != len(caption_images) or not np.array_equal(f["image_id"][:], caption_images):
            raise UserError(f"{path}: its captions differ from data/{dataset}/dataset.json; {fix}")
        tokens, mask = f["tokens"][sel], f["mask"][sel]
    except OSError as exc:
        raise UserError(f"{path}: unreadable HDF5 ({exc}); delete it and {fix}") from None
    finally:
        f.close()
    return strip_special_tokens(tokens, mask)


def strip_special_tokens(tokens: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Text-store rows ([CLS] at 0, [SEP] at the last real index) -> (word pieces only, left-aligned, zero-padded
    [n, L', D]; their counts [n]). A caption with no word piece keeps its [SEP] as its one token."""
    lengths = np.maximum(mask.sum(axis=1).astype(np.int64) - 2, 1)
    width = int(lengths.max()) if len(lengths) else 1
    out = np.array(tokens[:, 1 : 1 + width], dtype=np.float16)
    out[np.arange(width)[None, :] >= lengths[:, None]] = 0
    return torch.from_numpy(out), torch.from_numpy(lengths)


def split_texts(cfg: dict[str, Any], dataset: str, backbone: str, split: str, dataset_json: dict[str, Any],
                rows: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's captions (some rows, sorted; all when None) as the run's text encoder takes them: (tokens, lengths)."""
    name = run_text_encoder(cfg)
    if name != BIGRU and not is_finetune(cfg):
        return text_store_words(cfg, dataset, split, dataset_json, rows)
    _, captions = split_captions(dataset_json, split)
    if rows is not None:
        captions = [captions[j] for j in sorted(rows)]
    return caption_tokens(cfg, captions, paths(dataset, backbone)["vocab"])


def vocab_size(dataset: str, backbone: str) -> int:
    return len(load_vocab(paths(dataset, backbone)["vocab"]))


def caption_tokens(cfg: dict[str, Any], captions: list[str], vocab_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Any captions -> (tokens, lengths) as the run's text encoder takes them: ids of the dataset's train vocabulary
    (`vocab_path`, the BiGRU), word-piece ids (finetune), or word-piece features the transformer computes now
    (frozen_features: what its text store holds for a split's captions, used for captions no store holds)."""
    name = run_text_encoder(cfg)
    if name == BIGRU:
        tokens, lengths = encode_captions(captions, load_vocab(vocab_path), cfg["features"]["text"]["max_words"])
        return torch.from_numpy(tokens), torch.from_numpy(lengths)
    spec = text_encoder_spec(cfg)
    if spec.runs_transformer:
        ids, lengths = word_piece_ids(load_tokenizer(spec.model_dir), captions, max_pieces(cfg, name))
        return torch.from_numpy(ids), torch.from_numpy(lengths)
    encoder = TextEncoder(spec.model_dir, encoder_max_words(cfg, name))
    bs = int(encoder_spec(cfg, name).get("batch_size") or cfg["features"]["batch_size"])
    parts = [strip_special_tokens(*encoder.encode(captions[a : a + bs])) for a in range(0, len(captions), bs)]
    width = max(int(t.shape[1]) for t, _ in parts)
    tokens = torch.cat([torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[1])) for t, _ in parts])
    return tokens, torch.cat([n for _, n in parts])


def caption_pieces(cfg: dict[str, Any], captions: list[str]) -> list[list[str]] | None:
    """The word pieces a transformer text encoder sees in each caption ([CLS]/[SEP] dropped, as it gets them);
    None for the BiGRU (its words come from the vocabulary)."""
    name = run_text_encoder(cfg)
    if name == BIGRU:
        return None
    tokenizer = load_tokenizer(text_encoder_spec(cfg).model_dir)
    return [tokenizer.tokenize(c)[: max_pieces(cfg, name)] or [tokenizer.unk_token] for c in captions]


def load_split(cfg: dict[str, Any], dataset: str, backbone: str, split: str) -> SplitInputs:
    """A split's regions from the feature store (checked against the current feature params) and its captions."""
    p = paths(dataset, backbone)
    store = read_store(p["features"] / f"{split}.h5", expect_hash=feature_hash(cfg, dataset, backbone))
    ds = read_json(p["dataset_json"], "dataset.json")
    image_ids, _ = split_captions(ds, split)
    if list(store.image_id) != image_ids:
        raise UserError(f"{p['features'] / f'{split}.h5'}: image ids differ from {p['dataset_json']}; re-run `fga features extract`")
    tokens, lengths = split_texts(cfg, dataset, backbone, split, ds)
    return SplitInputs(torch.from_numpy(store.regions), torch.from_numpy(store.mask), tokens, lengths, image_ids,
                       store.attrs)


def caption_inputs(cfg: dict[str, Any], dataset: str, backbone: str, split: str, regions: torch.Tensor,
                   mask: torch.Tensor, attrs: dict[str, Any]) -> SplitInputs:
    """A split's captions (as `load_split` reads them) around regions computed elsewhere (finetune mode)."""
    p = paths(dataset, backbone)
    ds = read_json(p["dataset_json"], "dataset.json")
    image_ids, _ = split_captions(ds, split)
    if not image_ids:
        raise UserError(f"{p['dataset_json']}: no {split!r} images")
    tokens, lengths = split_texts(cfg, dataset, backbone, split, ds)
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
