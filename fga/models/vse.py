"""VSE++ (Faghri et al., BMVC 2018) on region features: mean-pooled regions vs mean-pooled BiGRU words.

The global-embedding baseline: one vector per image and per caption, cosine similarity,
hardest-negative hinge loss. It cannot bind attributes to objects, which is the point of
comparing it with the fine-grained methods.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fga.losses import hinge_triplet
from fga.models.base import Encoded, RetrievalModel
from fga.models.text_encoder import TextEncoderSpec, build_text_encoder, length_mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of [B, N, D] using a [B, N] bool mask."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1)


class VSEMean(RetrievalModel):
    def __init__(self, img_dim: int, vocab_size: int, embed_dim: int = 512, word_dim: int = 300,
                 margin: float = 0.2, warmup_epochs: int = 1,
                 text_encoder: TextEncoderSpec | None = None, **_: object):
        super().__init__()
        self.img_proj = nn.Sequential(nn.Linear(img_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, embed_dim))
        self.txt = build_text_encoder(text_encoder, vocab_size=vocab_size, word_dim=word_dim, embed_dim=embed_dim)
        self.margin = margin
        self.warmup_epochs = warmup_epochs

    def encode_image(self, regions: torch.Tensor, mask: torch.Tensor) -> Encoded:
        return {"emb": F.normalize(masked_mean(self.img_proj(regions.float()), mask), dim=-1)}

    def encode_text(self, tokens: torch.Tensor, lengths: torch.Tensor) -> Encoded:
        words = self.txt(tokens, lengths)
        return {"emb": F.normalize(masked_mean(words, length_mask(lengths, tokens.shape[1])), dim=-1)}

    def similarity(self, img: Encoded, txt: Encoded) -> torch.Tensor:
        return img["emb"] @ txt["emb"].T

    def training_loss(self, img: Encoded, txt: Encoded, positives: torch.Tensor, epoch: int):
        loss = hinge_triplet(self.similarity(img, txt), positives, self.margin, hardest=epoch >= self.warmup_epochs)
        return loss, {"triplet": loss.item()}
