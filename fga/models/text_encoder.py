"""Caption encoders behind one interface: `build_text_encoder(spec, ...)`, forward(text, lengths) -> [B, L, embed].

Every method builds its text side with `build_text_encoder`; `TextEncoderSpec` (made from a run's cfg by
`fga.inputs.text_encoder_spec`) says which encoder, selected by `train.text_encoder`:

- `bigru` (default): word ids of the dataset's train vocabulary -> embeddings -> BiGRU (the SCAN/VSE text path).
- a transformer (`features.text.encoders.<name>`, e.g. `minilm`, `bert_base`) in `train.mode: frozen_features`:
  the text store's cached last hidden states of the caption's word pieces ([B, L, feature_dim], float) ->
  a learned Linear(feature_dim, embed_dim) (`WordPieceProjection`).
- a transformer in `train.mode: finetune`: word-piece ids -> the transformer, trained inside the graph (its
  parameters go to the backbone AdamW group, `backbone_parameters`) -> Linear(hidden_size, embed_dim)
  (`TransformerTextEncoder`).

[CLS] / [SEP]: the text a transformer encoder receives and returns holds the caption's word pieces only. Frozen:
`fga.inputs` drops [CLS] (index 0) and [SEP] (the last real index) from the store's rows, after the transformer saw
them; finetune: the encoder wraps the ids in [CLS] ... [SEP] for the transformer and returns the outputs of the
word pieces only. So the token-level methods (GRM, SCAN) align words with regions over word pieces, and the
poolers (VSE-infinity's GPO, VSE++'s mean) pool word pieces, in both modes alike. A caption with no word piece keeps
one token (its [SEP] output frozen, [UNK] in finetune). `lengths` count word pieces; every encoder returns zeros at
padded positions, as the BiGRU does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fga.grid import DEFAULT_TEXT_ENCODER

BIGRU = DEFAULT_TEXT_ENCODER  # the name lives in the torch-free fga.grid (run paths, the report)
TEXT_MODES = ("frozen_features", "finetune")


@dataclass(frozen=True)
class TextEncoderSpec:
    """Which caption encoder a model builds.

    name: `bigru` or a `features.text.encoders` entry; mode: `train.mode`; feature_dim: width of the cached
    word-piece features (frozen transformer, required there); model_dir: the transformer's local directory (required
    in finetune, where the model loads its weights from it; frozen: the store's encoder, for captions no store holds).
    """

    name: str = BIGRU
    mode: str = "frozen_features"
    feature_dim: int | None = None
    model_dir: str | None = None

    @property
    def is_transformer(self) -> bool:
        return self.name != BIGRU

    @property
    def runs_transformer(self) -> bool:
        """True when the transformer runs inside the model (finetune), False when its features are inputs."""
        return self.is_transformer and self.mode == "finetune"


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


class WordPieceProjection(nn.Module):
    """Cached word-piece features [B, L, feature_dim] -> [B, L, embed_dim] (frozen transformer)."""

    def __init__(self, feature_dim: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Linear(feature_dim, embed_dim)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out = self.proj(features.to(self.proj.weight.dtype))
        return out * length_mask(lengths.clamp(min=1).to(out.device), features.shape[1]).unsqueeze(-1).to(out.dtype)


class TransformerTextEncoder(nn.Module):
    """Word-piece ids [B, L] -> the transformer (trained) -> Linear -> [B, L, embed_dim] of the word pieces."""

    def __init__(self, model_dir: str, embed_dim: int):
        super().__init__()
        from fga.features.text import load_transformer

        tokenizer, self.transformer = load_transformer(model_dir)
        self.transformer.train()
        self.cls_id, self.sep_id = int(tokenizer.cls_token_id), int(tokenizer.sep_token_id)
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self.proj = nn.Linear(int(self.transformer.config.hidden_size), embed_dim)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        b, n = ids.shape
        lengths = lengths.clamp(min=1).to(ids.device)
        pos = torch.arange(n + 2, device=ids.device)[None, :]
        pieces = torch.where(pos[:, :n] < lengths[:, None], ids, torch.full_like(ids, self.pad_id))
        full = torch.cat([torch.full((b, 1), self.cls_id, dtype=ids.dtype, device=ids.device), pieces,
                          torch.full((b, 1), self.pad_id, dtype=ids.dtype, device=ids.device)], dim=1)
        full = full.scatter(1, (lengths + 1)[:, None], self.sep_id)  # [SEP] right after the last piece
        attention = (pos < (lengths + 2)[:, None]).long()
        hidden = self.transformer(input_ids=full, attention_mask=attention).last_hidden_state[:, 1 : n + 1]
        out = self.proj(hidden)
        return out * length_mask(lengths, n).unsqueeze(-1).to(out.dtype)


def build_text_encoder(spec: TextEncoderSpec | None, *, vocab_size: int, word_dim: int, embed_dim: int) -> nn.Module:
    """The caption encoder `spec` names (None: the BiGRU), forward(text, lengths) -> [B, L, embed_dim]."""
    spec = spec or TextEncoderSpec()
    if not spec.is_transformer:
        return BiGRUTextEncoder(vocab_size, word_dim, embed_dim)
    if spec.mode not in TEXT_MODES:
        raise ValueError(f"text encoder mode must be one of {TEXT_MODES}, got {spec.mode!r}")
    if spec.runs_transformer:
        if not spec.model_dir:
            raise ValueError(f"text encoder {spec.name!r} in finetune mode needs its model_dir")
        return TransformerTextEncoder(spec.model_dir, embed_dim)
    if not spec.feature_dim:
        raise ValueError(f"text encoder {spec.name!r} in frozen_features mode needs the store's feature_dim")
    return WordPieceProjection(int(spec.feature_dim), embed_dim)


def backbone_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """(name, parameter) of every transformer trained inside `model` (the AdamW backbone group's share)."""
    for prefix, module in model.named_modules():
        if isinstance(module, TransformerTextEncoder):
            for name, p in module.transformer.named_parameters():
                yield f"{prefix}.transformer.{name}", p


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B] lengths -> [B, max_len] bool, True at real tokens."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]
