"""The batches of an epoch (fga.batches): caption noise, its per-mode rate, the per-rank slices of a global batch."""
from __future__ import annotations

import pytest
import torch

from fga.batches import Batching, perturb_tokens, token_perturb_rate
from fga.errors import UserError
from fga.inputs import SplitInputs


def test_perturb_tokens_rate_order_and_padding():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 30, (400,), generator=gen)
    tokens = torch.randint(2, 50, (400, 30), generator=gen) * (torch.arange(30) < lengths[:, None])
    out, new_len = perturb_tokens(tokens, lengths, 0.2, 50, torch.Generator().manual_seed(1))
    again, _ = perturb_tokens(tokens, lengths, 0.2, 50, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    assert (new_len >= 1).all() and (new_len <= lengths).all()
    pos = torch.arange(30)[None, :]
    assert ((out > 0) == (pos < new_len[:, None])).all()  # real tokens first, then padding
    assert ((out >= 1) & (out < 50) | (out == 0)).all()
    dropped = (lengths - new_len).sum().item() / lengths.sum().item()
    unk = (out == 1).sum().item() / lengths.sum().item()
    assert 0.04 < dropped < 0.1 and 0.04 < unk < 0.1  # each about 0.2 / 3
    same, same_len = perturb_tokens(tokens, lengths, 0.0, 50, torch.Generator().manual_seed(1))
    assert torch.equal(same, tokens) and torch.equal(same_len, lengths)


def test_token_perturb_rate_per_mode():
    per_mode = {"token_perturb": {"frozen_features": 0.0, "finetune": 0.2}}
    assert token_perturb_rate(per_mode, "finetune") == 0.2
    assert token_perturb_rate(per_mode, "frozen_features") == 0.0
    assert token_perturb_rate({"token_perturb": 0.1}, "finetune") == 0.1  # one rate for both modes
    assert token_perturb_rate({}, "finetune") == 0.0


def captions_split(n_images: int = 6, caps: int = 5) -> SplitInputs:
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 9, (n_images * caps,), generator=gen)
    tokens = torch.randint(2, 40, (n_images * caps, 9), generator=gen) * (torch.arange(9) < lengths[:, None])
    return SplitInputs(torch.zeros(n_images, 2, 3), torch.ones(n_images, 2, dtype=torch.bool), tokens, lengths,
                       list(range(n_images)), {})


def test_rank_slices_make_up_the_one_process_batch():
    data, tc = captions_split(), {"batch_size": 8}
    one = Batching.for_run(data, tc, seed=3, rank=0, world=1, augments=True, token_perturb=0.3, noise=40)
    ranks = [Batching.for_run(data, tc, seed=3, rank=r, world=2, augments=True, token_perturb=0.3, noise=40)
             for r in (0, 1)]
    plans = one.plan_epoch(1)
    assert len(plans) == 30 // 8 and one.plan_epoch(0)[0].cap_idx.tolist() != plans[0].cap_idx.tolist()
    seen = torch.cat([p.cap_idx for p in plans])
    assert len(set(seen.tolist())) == len(seen)  # every caption at most once an epoch
    for step, plan in enumerate(plans):
        tokens, lengths, positives = one.captions(plan, 1)
        parts = [b.captions(b.plan_epoch(1)[step], 1) for b in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), tokens) and torch.equal(torch.cat([p[1] for p in parts]), lengths)
        assert all(torch.equal(p[2], positives) for p in parts)  # positives are over the global batch
        rank_plans = [b.plan_epoch(1)[step] for b in ranks]
        assert torch.equal(torch.cat([p.img_idx for p in rank_plans]), plan.img_idx)
        assert torch.equal(torch.cat([p.aug for p in rank_plans]), plan.aug)
    with pytest.raises(UserError, match="multiple of 3"):
        Batching.for_run(data, tc, seed=3, rank=0, world=3, augments=False, token_perturb=0.0, noise=0)
