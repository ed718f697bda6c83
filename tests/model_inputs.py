"""Tiny random inputs shared by the model tests (region features, masks, caption tokens)."""
from __future__ import annotations

import torch

D_IMG, VOCAB = 12, 40


def make_batch(b: int = 5, r: int = 7, l: int = 6, seed: int = 0, full: bool = False):
    """(regions [b, r, D_IMG], mask [b, r], tokens [b, l], lengths [b]); `full` = no padding."""
    g = torch.Generator().manual_seed(seed)
    regions = torch.randn(b, r, D_IMG, generator=g)
    n_reg = torch.full((b,), r) if full else torch.randint(2, r + 1, (b,), generator=g)
    mask = torch.arange(r)[None] < n_reg[:, None]
    lengths = torch.full((b,), l) if full else torch.randint(2, l + 1, (b,), generator=g)
    tokens = torch.randint(1, VOCAB, (b, l), generator=g)
    tokens[torch.arange(l)[None] >= lengths[:, None]] = 0
    return regions, mask, tokens, lengths


def one(enc: dict, i: int) -> dict:
    """Item i of an encoded dict, keeping the leading dimension."""
    return {k: v[i : i + 1] for k, v in enc.items()}


def encode(model, batch):
    regions, mask, tokens, lengths = batch
    return model.encode_image(regions, mask), model.encode_text(tokens, lengths)
