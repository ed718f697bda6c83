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


def overfit_recall_at_1(model, steps: int = 300, lr: float = 1e-2, warmup_steps: int = 50) -> tuple[float, float]:
    """Train on 32 random pairs until R@1 >= 0.9 both ways (or `steps`); return (i2t R@1, t2i R@1)."""
    batch = make_batch(b=32, r=6, l=6, seed=7)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    positives = torch.eye(32, dtype=torch.bool)
    target = torch.arange(32)
    r1 = (0.0, 0.0)
    for step in range(steps):
        model.train()
        loss, _ = model.training_loss(*encode(model, batch), positives, epoch=0 if step < warmup_steps else 1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 9:
            model.eval()
            with torch.no_grad():
                sim = model.similarity(*encode(model, batch))
            r1 = ((sim.argmax(1) == target).float().mean().item(), (sim.argmax(0) == target).float().mean().item())
            if min(r1) >= 0.9:
                break
    return r1
