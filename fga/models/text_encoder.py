"""Word embeddings + bidirectional GRU over a caption vocabulary (the SCAN/VSE text path)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class BiGRUTextEncoder(nn.Module):
    """Token ids -> per-word features [B, L, embed_dim]; forward and backward GRU states are averaged."""

    def __init__(self, vocab_size: int, word_dim: int = 300, embed_dim: int = 512, num_layers: int = 1):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        self.gru = nn.GRU(word_dim, embed_dim, num_layers=num_layers, batch_first=True, bidirectional=True)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
        half = out.shape[-1] // 2
        return (out[..., :half] + out[..., half:]) / 2


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B] lengths -> [B, max_len] bool, True at real tokens."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]
