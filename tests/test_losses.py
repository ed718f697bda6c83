"""Ranking loss and GRM regularisers, checked against hand-computed values."""
import math

import pytest
import torch

from fga.losses import attention_entropy, hinge_triplet, kl_gaussian, recon_loss, region_diversity

SIM = torch.tensor([[0.9, 0.5, 0.1],
                    [0.8, 0.6, 0.7],
                    [0.0, 0.3, 0.4]])
EYE = torch.eye(3, dtype=torch.bool)


def test_hinge_sum_vs_hardest_by_hand():
    m = 0.2
    # image anchors (rows): violations m + s_ij - s_ii off the diagonal, clipped at 0
    # row0: 0.5-0.9+0.2=-0.2->0, 0.1-0.9+.2->0 ; row1: 0.8-0.6+.2=0.4, 0.7-0.6+.2=0.3 ; row2: 0-.4+.2->0, .3-.4+.2=0.1
    # caption anchors (cols): col0: .8-.9+.2=0.1, 0-.9+.2->0 ; col1: .5-.6+.2=0.1, .3-.6+.2->0 ;
    #                         col2: .1-.4+.2->0, .7-.4+.2=0.5
    summed = hinge_triplet(SIM, EYE, m, hardest=False)
    hardest = hinge_triplet(SIM, EYE, m, hardest=True)
    assert summed.item() == pytest.approx(0.4 + 0.3 + 0.1 + 0.1 + 0.1 + 0.5)
    assert hardest.item() == pytest.approx(0.4 + 0.1 + 0.1 + 0.1 + 0.5)
    assert hardest.item() < summed.item()


def test_hinge_positives_are_never_negatives():
    pos = EYE.clone()
    pos[1, 2] = pos[2, 1] = True  # pretend caption 2 also belongs to image 1 and vice versa
    full = hinge_triplet(SIM, EYE, 0.2, hardest=False)
    masked = hinge_triplet(SIM, pos, 0.2, hardest=False)
    # drops the image-anchor violations at (1,2) 0.3 and (2,1) 0.1, and the caption-anchor one at (1,2) 0.5
    assert (full - masked).item() == pytest.approx(0.3 + 0.1 + 0.5)


def test_kl_gaussian_forms():
    mu = torch.zeros(2, 3, 4)
    logvar = torch.zeros(2, 3, 4)
    assert torch.allclose(kl_gaussian(mu, logvar), torch.zeros(2))
    mu1 = torch.ones(2, 3, 4)
    assert torch.allclose(kl_gaussian(mu1, logvar, form="full"), torch.full((2,), 0.5))
    assert torch.allclose(kl_gaussian(mu1, logvar, form="var_only"), torch.zeros(2))
    lv = torch.full((2, 3, 4), math.log(2.0))  # sigma^2 = 2: 0.5 (2 - log 2 - 1)
    assert torch.allclose(kl_gaussian(mu, lv, form="var_only"), torch.full((2,), 0.5 * (1 - math.log(2.0))))
    # masked regions do not count
    mu_m = torch.zeros(1, 2, 4)
    mu_m[0, 1] = 10.0
    mask = torch.tensor([[True, False]])
    assert kl_gaussian(mu_m, torch.zeros(1, 2, 4), mask).item() == pytest.approx(0.0)
    with pytest.raises(ValueError):
        kl_gaussian(mu, logvar, form="nope")


def test_attention_entropy_usage_and_region():
    uniform = torch.ones(1, 6, 3)
    assert attention_entropy(uniform, form="usage").item() == pytest.approx(0.0, abs=1e-6)
    assert attention_entropy(uniform, form="region").item() == pytest.approx(0.0, abs=1e-6)
    collapsed = torch.zeros(1, 6, 3)
    collapsed[0, :, 0] = 1.0  # every patch goes to prompt 0
    assert attention_entropy(collapsed, form="usage").item() == pytest.approx(1.0, abs=1e-4)
    peaked = torch.full((1, 6, 3), 1e-9)
    peaked[0, 0, :] = 1.0  # every region sits on patch 0 only
    assert attention_entropy(peaked, form="region").item() == pytest.approx(1.0, abs=1e-4)
    # padding patches are ignored: a padded patch with huge attention changes nothing
    padded = torch.cat([uniform, torch.full((1, 1, 3), 50.0)], dim=1)
    padded[0, -1, 0] = 1000.0
    mask = torch.tensor([[True] * 6 + [False]])
    assert attention_entropy(padded, mask, "usage").item() == pytest.approx(0.0, abs=1e-6)
    assert attention_entropy(padded, mask, "region").item() == pytest.approx(0.0, abs=1e-6)


def test_recon_forms():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    assert torch.allclose(recon_loss(a, b, "mse"), torch.tensor([1.0, 1.0]))
    assert torch.allclose(recon_loss(a, b, "cos"), torch.tensor([1.0, 0.0]), atol=1e-6)
    with pytest.raises(ValueError):
        recon_loss(a, b, "l1")


def test_kl_gaussian_sum_reduction_is_the_spec_sum():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    per_dim = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1)
    assert torch.allclose(kl_gaussian(mu, logvar, reduction="sum"), per_dim.sum(dim=(1, 2)))
    assert torch.allclose(kl_gaussian(mu, logvar, reduction="sum"), 12 * kl_gaussian(mu, logvar), rtol=1e-5)
    mask = torch.tensor([[True, False, True], [True, True, True]])
    expected = (per_dim.sum(-1) * mask).sum(1)
    assert torch.allclose(kl_gaussian(mu, logvar, mask, reduction="sum"), expected)
    var_only = 0.5 * (logvar.exp() - logvar - 1)
    assert torch.allclose(kl_gaussian(mu, logvar, form="var_only", reduction="sum"), var_only.sum(dim=(1, 2)))
    with pytest.raises(ValueError):
        kl_gaussian(mu, logvar, reduction="max")


def _peaked(l: int, k: int, patches: list[int]) -> torch.Tensor:
    """[1, l, k] sigmoid-like attention: prompt j sits on patch patches[j], near 0 elsewhere."""
    attn = torch.full((1, l, k), 1e-6)
    for j, patch in enumerate(patches):
        attn[0, patch, j] = 1.0
    return attn


def test_mi_form_penalises_both_collapses_and_rewards_distinct_peaks():
    l, k = 6, 3
    uniform = torch.full((1, l, k), 0.5)
    same_patch = _peaked(l, k, [2, 2, 2])  # every prompt on the same patch
    distinct = _peaked(l, k, [0, 3, 5])
    mi = {name: attention_entropy(a, form="mi").item()
          for name, a in (("uniform", uniform), ("same", same_patch), ("distinct", distinct))}
    assert mi["uniform"] == pytest.approx(1.0, abs=1e-5)
    assert mi["same"] == pytest.approx(1.0, abs=1e-4)
    assert mi["distinct"] == pytest.approx(0.0, abs=1e-4)
    # the existing forms score one of the two collapses as well as (or better than) distinct prompts
    assert attention_entropy(same_patch, form="usage").item() <= attention_entropy(distinct, form="usage").item() + 1e-6
    assert attention_entropy(uniform, form="region").item() < attention_entropy(distinct, form="region").item()
    # half-way: peaked prompts, two of the three on one patch
    partial = attention_entropy(_peaked(l, k, [0, 0, 5]), form="mi").item()
    assert mi["distinct"] < partial < mi["same"]


def test_mi_form_ignores_padding():
    distinct = _peaked(4, 2, [0, 3])
    padded = torch.cat([distinct, torch.full((1, 3, 2), 0.9)], dim=1)
    padded[0, 4:, 0] = 50.0  # junk attention on padded patches
    mask = torch.tensor([[True] * 4 + [False] * 3])
    assert attention_entropy(padded, mask, "mi").item() == pytest.approx(attention_entropy(distinct, form="mi").item(),
                                                                         abs=1e-6)
    # with the padding counted, the junk patches would change the value
    assert attention_entropy(padded, form="mi").item() != pytest.approx(attention_entropy(padded, mask, "mi").item(),
                                                                       abs=1e-3)
    with pytest.raises(ValueError):
        attention_entropy(distinct, form="nope")


def test_region_diversity():
    same = torch.ones(1, 3, 4)
    assert region_diversity(same).item() == pytest.approx(1.0, abs=1e-6)
    orthogonal = torch.eye(3, 4).unsqueeze(0) * 5.0
    assert region_diversity(orthogonal).item() == pytest.approx(0.0, abs=1e-6)
    opposite = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])
    assert region_diversity(opposite).item() == pytest.approx(-1.0, abs=1e-6)
    # masked regions are left out: the two valid ones are orthogonal, the junk one parallel to one of them
    mu = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [3.0, 0.0]]])
    assert region_diversity(mu, torch.tensor([[True, True, False]])).item() == pytest.approx(0.0, abs=1e-6)
    assert region_diversity(mu).item() == pytest.approx(1 / 3, abs=1e-6)
    assert region_diversity(torch.ones(2, 1, 4)).tolist() == [0.0, 0.0]  # one region: nothing to compare
