"""The batches of an epoch: caption order, per-rank slices, caption noise, and loading the images' side.

Each epoch visits every training caption once with its image, in an order drawn from (seed,
epoch). Everything random about a global batch that is added here (token perturbation, image
augmentation seeds) is drawn from a generator seeded by (seed, epoch, step), so it does not
depend on the RNG state, the number of DDP ranks or loader workers. A global batch is split into
equal contiguous slices, one per rank.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn

from fga.errors import UserError
from fga.inputs import SplitInputs, caps_per_image
from fga.rng import step_generator

UNK_ID = 1  # fga.features.text: 0 = <pad>, 1 = <unk>, words from 2


@dataclass(frozen=True)
class TokenNoise:
    """What caption noise writes: the id a masked token becomes, and the range [random_low, random_high) random
    tokens are drawn from (empty: masked instead). Padding is id 0 in both vocabularies."""

    mask_id: int
    random_low: int
    random_high: int

    @classmethod
    def words(cls, vocab_size: int) -> "TokenNoise":
        """The BiGRU vocabulary: <unk>, or a random word (ids from 2)."""
        return cls(UNK_ID, 2, vocab_size) if vocab_size > 2 else cls(UNK_ID, 0, 0)

    @classmethod
    def word_pieces(cls, tokenizer: Any) -> "TokenNoise":
        """A BERT-style word-piece vocabulary: [MASK], or a random real word piece (`piece_noise_ids`)."""
        from fga.features.text import piece_noise_ids

        return cls(*piece_noise_ids(tokenizer))


def token_perturb_rate(tc: dict[str, Any], mode: str) -> float:
    """`train.token_perturb` for this mode: one rate for both, or a {mode: rate} mapping."""
    value = tc.get("token_perturb", 0.0)
    return float(value.get(mode, 0.0) if isinstance(value, dict) else value)


def perturb_tokens(tokens: torch.Tensor, lengths: torch.Tensor, p: float, noise: TokenNoise | int,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style caption noise: each real token, with probability p, is masked (<unk> / [MASK]), replaced by a
    random word (piece), or dropped. `noise`: a `TokenNoise`, or the BiGRU vocabulary's size.

    tokens [B, L] (0 = padding), lengths [B] -> new (tokens [B, L], lengths [B]); kept tokens keep
    their order, the rest is padding; a caption never loses all its tokens.
    """
    noise = noise if isinstance(noise, TokenNoise) else TokenNoise.words(int(noise))
    b, n = tokens.shape
    pos = torch.arange(n)[None, :]
    real = pos < lengths[:, None]
    hit = (torch.rand(b, n, generator=generator) < p) & real
    action = torch.randint(0, 3, (b, n), generator=generator)
    random_ids = torch.randint(noise.random_low, noise.random_high, (b, n), generator=generator) \
        if noise.random_high > noise.random_low else torch.full((b, n), noise.mask_id)
    out = torch.where(hit & (action == 0), torch.full_like(tokens, noise.mask_id), tokens)
    out = torch.where(hit & (action == 1), random_ids, out)
    keep = real & ~(hit & (action == 2))
    keep[:, 0] |= keep.sum(1) == 0  # all dropped: keep the first (unchanged) token
    new_lengths = keep.sum(1)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept tokens first, in order
    out = out.gather(1, order).masked_fill(pos >= new_lengths[:, None], 0)
    return out, new_lengths


@dataclass
class StepPlan:
    """What one step trains on, fixed before the epoch starts (so a loader can run ahead in workers)."""

    step: int
    cap_idx: torch.Tensor  # caption rows of the global batch
    img_idx: torch.Tensor  # image rows of this rank's slice
    aug: torch.Tensor | None  # augmentation seeds of this rank's slice (augmenting region sources only)


@dataclass
class Batching:
    """How a run cuts its training captions into global batches and this rank's slices."""

    data: SplitInputs  # the train split's captions (caption j -> image j // caps_per_image)
    caps_per_image: int
    seed: int
    batch_size: int  # global
    rank_slice: slice
    augments: bool  # draw augmentation seeds for the region source
    token_perturb: float = 0.0
    noise: TokenNoise | int = 0  # what perturbation writes (an int: the BiGRU vocabulary's size)

    @classmethod
    def for_run(cls, data: SplitInputs, tc: dict[str, Any], seed: int, rank: int, world: int, augments: bool,
                token_perturb: float, noise: TokenNoise | int) -> "Batching":
        bs = min(tc["batch_size"], len(data.tokens))  # tiny configs: one batch of everything
        if bs % world:
            raise UserError(f"train.batch_size {bs} does not split into {world} equal per-rank slices; "
                            f"use a multiple of {world}")
        per_rank = bs // world
        if token_perturb > 0 and data.tokens.dim() != 2:
            raise UserError("train.token_perturb perturbs token ids, but this run's captions are cached transformer "
                            "features: set train.token_perturb.frozen_features to 0 (or train in finetune mode)")
        return cls(data, caps_per_image(data), seed, bs, slice(rank * per_rank, (rank + 1) * per_rank), augments,
                   token_perturb, noise)

    def plan_epoch(self, epoch: int) -> list[StepPlan]:
        """The epoch's steps: a permutation of the captions drawn from (seed, epoch), cut into full global batches."""
        n_pairs, bs, caps = len(self.data.tokens), self.batch_size, self.caps_per_image
        order = torch.randperm(n_pairs, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        plans = []
        for step, start in enumerate(range(0, n_pairs - bs + 1, bs)):
            cap_idx = order[start : start + bs]
            aug = None
            if self.augments:
                seeds = torch.randint(0, 2 ** 62, (bs,), generator=step_generator(self.seed, epoch, step, "augment"))
                aug = seeds[self.rank_slice]
            plans.append(StepPlan(step, cap_idx, (cap_idx // caps)[self.rank_slice], aug))
        return plans

    def captions(self, plan: StepPlan, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens, lengths) of this rank's slice, and which captions of the global batch share an image."""
        tokens, lengths = self.data.tokens[plan.cap_idx], self.data.lengths[plan.cap_idx]
        if self.token_perturb > 0:
            tokens, lengths = perturb_tokens(tokens, lengths, self.token_perturb, self.noise,
                                             step_generator(self.seed, epoch, plan.step, "tokens"))
        tokens = tokens[:, : int(lengths.max())]  # the global batch's longest: equal shapes on every rank
        img_idx = plan.cap_idx // self.caps_per_image
        positives = img_idx[:, None] == img_idx[None, :]  # over the global batch
        return tokens[self.rank_slice], lengths[self.rank_slice], positives


class _PlannedLoads(torch.utils.data.Dataset):
    """Step i's CPU-side batch (for DataLoader workers): `loader.load(img_idx, aug)` of plan i."""

    def __init__(self, loader: Any, plans: list[StepPlan]):
        self.loader, self.plans = loader, plans

    def __len__(self) -> int:
        return len(self.plans)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.loader.load(self.plans[i].img_idx, self.plans[i].aug)


def load_batches(source: nn.Module, plans: list[StepPlan], workers: int) -> Iterable[dict[str, Any]]:
    """The CPU side of each step's batch (`source.load`), in order; in loader worker processes when asked."""
    if workers <= 0:
        return (source.load(p.img_idx, p.aug) for p in plans)
    # workers get only the CPU loader (never the device-side backbone); the loader's own generator
    # keeps its base seed from being drawn from (and shifting) the global RNG
    return torch.utils.data.DataLoader(_PlannedLoads(getattr(source, "loader", source), plans), batch_size=None,
                                       num_workers=workers, shuffle=False, generator=torch.Generator().manual_seed(0),
                                       persistent_workers=False)
