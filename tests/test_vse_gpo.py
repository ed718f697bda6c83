"""VSE-infinity: GPO against a per-item reference, masks, gradients, overfitting."""

import pytest
import torch

from fga.models.registry import build_model
from fga.models.vse_gpo import GPO, VSEInfinity, positional_encoding

from model_inputs import D_IMG, VOCAB, encode, make_batch, one, overfit_recall_at_1

torch.set_num_threads(1)

TINY = dict(embed_dim=16, word_dim=8)


def build(**kw):
    torch.manual_seed(0)
    return VSEInfinity(D_IMG, VOCAB, **{**TINY, **kw})


def test_positional_encoding():
    pe = positional_encoding(5, 32)
    assert pe.shape == (5, 32)
    assert torch.allclose(pe[0, 0::2], torch.zeros(16)) and torch.allclose(pe[0, 1::2], torch.ones(16))
    assert pe[3, 0].item() == pytest.approx(torch.sin(torch.tensor(3.0)).item())


def test_gpo_matches_per_item_reference():
    torch.manual_seed(0)
    gpo = GPO(32, 32)
    feats = torch.randn(4, 6, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 1, 0, 1, 1, 0], [1, 0, 0, 0, 0, 0]],
                        dtype=torch.bool)  # masks need not be a prefix
    pooled, weights = gpo(feats, mask)
    for b in range(4):
        valid = feats[b][mask[b]]  # [n, D]
        n = len(valid)
        w = gpo.rank_weights(torch.tensor([n]), n)[0]  # the weights of a set of n items, on its own
        assert w.sum().item() == pytest.approx(1.0, abs=1e-6)
        assert torch.allclose(weights[b, :n], w, atol=1e-6) and torch.all(weights[b, n:] == 0)
        ref = torch.stack([sum(w[k] * sorted(valid[:, d].tolist(), reverse=True)[k] for k in range(n))
                           for d in range(valid.shape[1])])
        assert torch.allclose(pooled[b], ref.float(), atol=1e-6)


def test_batched_matches_pair_reference_and_shapes():
    model = build_model("vse_inf", TINY, img_dim=D_IMG, vocab_size=VOCAB).eval()
    with torch.no_grad():
        img, _ = encode(model, make_batch(b=3, seed=1))
        _, txt = encode(model, make_batch(b=5, seed=2))
        sim = model.similarity(img, txt)
    assert sim.shape == (3, 5)
    for i in range(3):
        for j in range(5):
            assert sim[i, j].item() == pytest.approx(model.pair_similarity(one(img, i), one(txt, j)), abs=1e-5)


@pytest.mark.parametrize("train", [False, True])
def test_padding_never_changes_scores(train):
    """Also in train mode: the MLP's BatchNorm takes its statistics from valid regions only."""
    model = build().train(train)
    regions, mask, tokens, lengths = make_batch(b=4)
    g = torch.Generator().manual_seed(9)
    junk_regions = torch.cat([regions, 100 * torch.randn(4, 3, D_IMG, generator=g)], dim=1)
    junk_regions[:, : regions.shape[1]][~mask] = 40.0
    junk_mask = torch.cat([mask, torch.zeros(4, 3, dtype=torch.bool)], 1)
    junk_tokens = torch.cat([tokens, torch.randint(1, VOCAB, (4, 2), generator=g)], dim=1)
    junk_tokens[:, : tokens.shape[1]][tokens == 0] = 3
    with torch.no_grad():
        base = model.similarity(*encode(model, (regions, mask, tokens, lengths)))
        padded = model.similarity(*encode(model, (junk_regions, junk_mask, junk_tokens, lengths)))
    assert torch.allclose(base, padded, atol=1e-5)


def test_size_augment_only_in_training():
    model = build(size_augment=0.5)
    batch = make_batch(b=4, r=10)
    model.eval()
    with torch.no_grad():
        assert torch.equal(encode(model, batch)[0]["emb"], encode(model, batch)[0]["emb"])
    model.train()
    torch.manual_seed(1)
    with torch.no_grad():
        a = encode(model, batch)[0]["emb"]
        b = encode(model, batch)[0]["emb"]
    assert not torch.equal(a, b)


def test_gradient_reaches_every_parameter():
    model = build().train()
    img, txt = encode(model, make_batch(b=6, seed=1))
    loss, logs = model.training_loss(img, txt, torch.eye(6, dtype=torch.bool), epoch=0)
    loss.backward()
    assert set(logs) == {"triplet"}
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_overfits_32_pairs():
    torch.manual_seed(0)
    r1 = overfit_recall_at_1(VSEInfinity(D_IMG, VOCAB, embed_dim=32, word_dim=16))
    assert min(r1) >= 0.9, r1
