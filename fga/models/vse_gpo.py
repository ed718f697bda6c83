"""VSE-infinity (Chen et al., CVPR 2021): VSE with the Generalized Pooling Operator (GPO).

GPO pools a variable-size set of n feature vectors {x_i} in R^D into one vector. Every feature
dimension is sorted in descending order over the set, and a learned weight per rank k is applied:

    pe_k       = sinusoidal positional encoding of rank k (k = 0..n-1, d_pe = 32)
    h_k        = mean of the two directions of BiGRU(pe_0..pe_{n-1})   (hidden 32)
    theta_k    = softmax_k( (w^T h_k) / 0.1 )                           (over the n valid ranks)
    GPO(x)_d   = sum_k theta_k * sort_desc(x_{., d})_k

The weights depend only on n, so GPO can learn max pooling, mean pooling, K-max and everything
between. Padded items never enter: they sort last and their ranks get no weight.

Image side: FC(regions) (+ a 2-layer MLP residual, the published precomputed-feature encoder;
BatchNorm statistics come from the valid regions only), then GPO, then l2norm. Text side:
BiGRU (directions averaged), GPO, l2norm. Loss: VSE++ hardest-negative hinge (margin 0.2)
after `warmup_epochs` epochs of summed negatives.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fga.losses import hinge_triplet
from fga.models.base import Encoded, RetrievalModel
from fga.models.text_encoder import TextEncoderSpec, build_text_encoder, length_mask


def positional_encoding(length: int, dim: int, device=None) -> torch.Tensor:
    """Sinusoidal encoding [length, dim]: sin on even, cos on odd channels, wavelengths up to 10000."""
    pos = torch.arange(length, dtype=torch.float32, device=device)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return pe


class GPO(nn.Module):
    """Generalized Pooling Operator: features [B, N, D] + mask [B, N] bool -> ([B, D], rank weights [B, N])."""

    def __init__(self, d_pe: int = 32, d_hidden: int = 32, temperature: float = 0.1):
        super().__init__()
        self.d_pe, self.temperature = d_pe, temperature
        self.gru = nn.GRU(d_pe, d_hidden, batch_first=True, bidirectional=True)
        self.linear = nn.Linear(d_hidden, 1, bias=False)

    def rank_weights(self, counts: torch.Tensor, n: int) -> torch.Tensor:
        """counts [B] valid items per set -> softmax weights [B, n] over ranks, 0 beyond counts."""
        b = counts.shape[0]
        pe = positional_encoding(n, self.d_pe, counts.device).unsqueeze(0).expand(b, n, self.d_pe)
        packed = pack_padded_sequence(pe, counts.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=n)
        half = out.shape[-1] // 2
        scores = self.linear((out[..., :half] + out[..., half:]) / 2).squeeze(-1)
        valid = length_mask(counts.clamp(min=1), n)
        scores = scores.masked_fill(~valid, -10000.0)
        return torch.softmax(scores / self.temperature, dim=1) * valid

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = feats.shape[1]
        counts = mask.sum(dim=1)
        weights = self.rank_weights(counts, n)
        # padded items sort last (they need not be a suffix of the input); their values become 0
        ordered = feats.masked_fill(~mask.unsqueeze(-1), float("-inf")).sort(dim=1, descending=True).values
        ordered = ordered.masked_fill(~length_mask(counts, n).unsqueeze(-1), 0.0)
        return (ordered * weights.unsqueeze(-1).to(ordered.dtype)).sum(dim=1), weights


class VSEInfinity(RetrievalModel):
    def __init__(self, img_dim: int, vocab_size: int, embed_dim: int = 1024, word_dim: int = 300,
                 margin: float = 0.2, warmup_epochs: int = 1, mlp_residual: bool = True,
                 gpo_d_pe: int = 32, gpo_d_hidden: int = 32, size_augment: float = 0.0,
                 text_encoder: TextEncoderSpec | None = None, **_: object):
        super().__init__()
        self.fc = nn.Linear(img_dim, embed_dim)
        nn.init.xavier_uniform_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)
        self.mlp = (nn.Sequential(nn.Linear(img_dim, embed_dim // 2), nn.BatchNorm1d(embed_dim // 2), nn.ReLU(),
                                  nn.Linear(embed_dim // 2, embed_dim)) if mlp_residual else None)
        self.img_gpo = GPO(gpo_d_pe, gpo_d_hidden)
        self.txt = build_text_encoder(text_encoder, vocab_size=vocab_size, word_dim=word_dim, embed_dim=embed_dim)
        self.txt_gpo = GPO(gpo_d_pe, gpo_d_hidden)
        if not 0.0 <= size_augment < 1.0:
            raise ValueError(f"size_augment must be in [0, 1), got {size_augment}")
        self.margin, self.warmup_epochs, self.size_augment = margin, warmup_epochs, size_augment

    def encode_image(self, regions: torch.Tensor, mask: torch.Tensor) -> Encoded:
        regions, mask = regions.float(), mask.bool()
        if self.training and self.size_augment > 0:  # drop a random share of the regions, keep at least one
            drop = torch.rand(mask.shape, device=mask.device) < self.size_augment
            kept = mask & ~drop
            mask = torch.where(kept.any(dim=1, keepdim=True), kept, mask)
        feats = self.fc(regions)
        if self.mlp is not None:
            residual = torch.zeros_like(feats)
            residual[mask] = self.mlp(regions[mask]).to(feats.dtype)  # BatchNorm sees valid regions only
            feats = feats + residual
        pooled, _ = self.img_gpo(feats, mask)
        return {"emb": F.normalize(pooled, dim=-1)}

    def encode_text(self, tokens: torch.Tensor, lengths: torch.Tensor) -> Encoded:
        words = self.txt(tokens, lengths)
        pooled, _ = self.txt_gpo(words, length_mask(lengths.clamp(min=1).to(words.device), tokens.shape[1]))
        return {"emb": F.normalize(pooled, dim=-1)}

    def similarity(self, img: Encoded, txt: Encoded) -> torch.Tensor:
        return img["emb"] @ txt["emb"].T

    def pair_similarity(self, img_one: Encoded, txt_one: Encoded) -> float:
        """Reference score of one image and one caption (batch-size-1 dicts)."""
        a, b = img_one["emb"][0].double().tolist(), txt_one["emb"][0].double().tolist()
        return float(sum(x * y for x, y in zip(a, b)))

    def training_loss(self, img: Encoded, txt: Encoded, positives: torch.Tensor, epoch: int):
        loss = hinge_triplet(self.similarity(img, txt), positives, self.margin, hardest=epoch >= self.warmup_epochs)
        return loss, {"triplet": loss.item()}
