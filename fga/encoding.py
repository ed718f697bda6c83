"""Every image and caption of a split encoded once, in eval mode, in batches (validation and evaluation)."""
from __future__ import annotations

import torch

from fga.inputs import SplitInputs
from fga.models.base import Encoded, RetrievalModel, cat_encoded


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
