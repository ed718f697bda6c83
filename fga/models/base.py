"""The interface every retrieval method implements, so one loop trains and evaluates them all.

A method encodes each modality once into a dict of tensors whose leading dimension is the
item (image or caption), then scores any set of images against any set of captions in one
batched call. Training and evaluation both go through `similarity`, so the matrix the loss
sees is exactly the one recall is computed from.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

Encoded = dict[str, torch.Tensor]


class RetrievalModel(nn.Module):
    """Base class: subclasses implement the four methods below."""

    def encode_image(self, regions: torch.Tensor, mask: torch.Tensor) -> Encoded:
        """regions [B, R, D_img] float, mask [B, R] bool (True = real region) -> dict of [B, ...]."""
        raise NotImplementedError

    def encode_text(self, tokens: torch.Tensor, lengths: torch.Tensor) -> Encoded:
        """tokens [B, L] int64 (0 = padding), lengths [B] int64 -> dict of [B, ...]."""
        raise NotImplementedError

    def similarity(self, img: Encoded, txt: Encoded) -> torch.Tensor:
        """All images against all captions: [n_img, n_txt], batched (no Python loop over pairs)."""
        raise NotImplementedError

    def training_loss(
        self, img: Encoded, txt: Encoded, positives: torch.Tensor, epoch: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss for a batch of B (image, caption) pairs; positives [B, B] bool marks pairs of the same image.

        Returns the scalar to backpropagate and its named components (logged per epoch).
        """
        raise NotImplementedError


def slice_encoded(enc: Encoded, index: slice | torch.Tensor) -> Encoded:
    """Select items (leading dim) from an encoded dict."""
    return {k: v[index] for k, v in enc.items()}


def cat_encoded(parts: list[Encoded]) -> Encoded:
    """Concatenate encoded dicts along the item dimension, padding the token dims to the longest."""
    out: dict[str, Any] = {}
    for key in parts[0]:
        tensors = [p[key] for p in parts]
        if tensors[0].dim() >= 2 and len({t.shape[1:] for t in tensors}) > 1:
            longest = max(t.shape[1] for t in tensors)
            tensors = [
                torch.nn.functional.pad(t, [0, 0] * (t.dim() - 2) + [0, longest - t.shape[1]]) for t in tensors
            ]
        out[key] = torch.cat(tensors)
    return out
