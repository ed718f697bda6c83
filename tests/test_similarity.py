"""Blocked similarity matrix: equals the per-pair reference for every method, block plans from the budget."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fga.errors import UserError
from fga.evaluate.similarity import (load_matrix, plan_blocks, reference_similarity_matrix, save_matrix,
                                     similarity_matrix)
from fga.models.grm import GRM
from fga.models.grm.similarity import _exclude_padding, token_similarity
from fga.models.scan import SCAN
from fga.models.vse_gpo import VSEInfinity

from model_inputs import D_IMG, VOCAB, encode, make_batch

torch.set_num_threads(1)
TINY = dict(embed_dim=16, word_dim=8)


def _inputs(model, n_img=5, n_txt=7):
    with torch.no_grad():
        img, _ = encode(model, make_batch(b=n_img, seed=1))
        _, txt = encode(model, make_batch(b=n_txt, seed=2))
    return img, txt


def _check(model, **blocks):
    torch.manual_seed(0)
    model.eval()
    img, txt = _inputs(model)
    ref = reference_similarity_matrix(model, img, txt)
    got = similarity_matrix(model, img, txt, **blocks)
    assert got.shape == ref.shape == (5, 7) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    return got


@pytest.mark.parametrize("level", ["weighted", "ori", "key", "unc"])
@pytest.mark.parametrize("blocks", [{}, {"block_images": 2, "block_captions": 3}])
def test_grm_matches_pair_reference(level, blocks):
    torch.manual_seed(0)
    _check(GRM(D_IMG, VOCAB, num_prompts=3, test_similarity=level, **TINY), **blocks)


def test_grm_padding_exclusion_writes_only_padded_scores():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 4, 5, 6, generator=g)
    x_mask, y_mask = torch.rand(3, 4, generator=g) > 0.4, torch.rand(5, 6, generator=g) > 0.4
    keep = x_mask[:, :, None, None] & y_mask[None, None]
    got = _exclude_padding(s.clone(), x_mask, y_mask)
    assert torch.equal(got[keep], s[keep]) and bool((got[~keep] == float("-inf")).all())


@pytest.mark.parametrize("combine", ["mean", "t2i", "i2t"])
def test_grm_kernel_gives_the_same_bits_with_and_without_autograd(combine):
    """Under autograd the max keeps its indices (cheap backward), else amax: the scores must not differ."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 6, 8, generator=g), torch.randn(5, 7, 8, generator=g)
    x_mask, y_mask = torch.rand(4, 6, generator=g) > 0.3, torch.rand(5, 7, generator=g) > 0.3
    x_mask[0] = False  # an image without a valid token scores -1 on the t2i side
    with torch.no_grad():
        plain = token_similarity(x, x_mask, y, y_mask, combine)
    tracked = token_similarity(x.requires_grad_(), x_mask, y, y_mask, combine)
    assert tracked.requires_grad and torch.equal(tracked.detach(), plain)


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("blocks", [{}, {"block_images": 3, "block_captions": 2}])
def test_scan_matches_pair_reference(direction, blocks):
    torch.manual_seed(0)
    _check(SCAN(D_IMG, VOCAB, direction=direction, **TINY), **blocks)


def test_vse_infinity_matches_pair_reference():
    torch.manual_seed(0)
    _check(VSEInfinity(D_IMG, VOCAB, **TINY), block_images=4, block_captions=4)


def test_memory_budget_plans_blocks_and_one_call_per_block(monkeypatch):
    torch.manual_seed(0)
    model = SCAN(D_IMG, VOCAB, **TINY).eval()
    img, txt = _inputs(model, 40, 60)
    scores = img["regions"].shape[1] * txt["words"].shape[1]
    big = plan_blocks(model, img, txt, memory_budget_mb=1024)
    assert (big.block_images, big.block_captions) == (40, 60)  # everything fits: one call
    tiny = plan_blocks(model, img, txt, memory_budget_mb=0.05)
    assert tiny.block_images * tiny.block_captions * tiny.bytes_per_pair <= 0.05 * 2 ** 20
    assert tiny.block_images < 40 and tiny.scores_per_pair == scores
    assert plan_blocks(model, img, txt, 0.05, block_images=3).block_images == 3
    fixed = plan_blocks(model, img, txt, 1024, block_images=7, block_captions=11)
    assert (fixed.block_images, fixed.block_captions) == (7, 11)
    with pytest.raises(UserError):
        plan_blocks(model, img, txt, 0)
    with pytest.raises(UserError):
        plan_blocks(model, img, txt, 64, block_images=0, block_captions=3)

    calls = []
    inner = model.similarity

    def spy(a, b):
        calls.append((next(iter(a.values())).shape[0], next(iter(b.values())).shape[0], model.sim_chunk_elems))
        return inner(a, b)

    monkeypatch.setattr(model, "similarity", spy)
    old = model.sim_chunk_elems
    whole = similarity_matrix(model, img, txt, memory_budget_mb=1024)
    assert len(calls) == 1 and calls[0][:2] == (40, 60)
    calls.clear()
    blocked = similarity_matrix(model, img, txt, memory_budget_mb=0.05)
    n_blocks = -(-40 // tiny.block_images) * -(-60 // tiny.block_captions)
    assert len(calls) == n_blocks > 1
    assert model.sim_chunk_elems == old  # restored after the pass
    np.testing.assert_allclose(blocked, whole, atol=1e-6)


def test_global_model_gets_big_blocks():
    torch.manual_seed(0)
    model = VSEInfinity(D_IMG, VOCAB, **TINY).eval()
    img, txt = _inputs(model, 6, 9)
    plan = plan_blocks(model, img, txt, 1)
    assert plan.scores_per_pair == 1 and (plan.block_images, plan.block_captions) == (6, 9)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_save_and_load_matrix(tmp_path, dtype):
    sim = np.random.default_rng(0).standard_normal((4, 20)).astype(np.float32)
    path = save_matrix(tmp_path / "r" / "sim_test.npy", sim, dtype)
    assert path.exists() and not list(path.parent.glob(".sim_test*"))  # no temp file left
    assert np.load(path).dtype == np.dtype(dtype)
    back = load_matrix(path, (4, 20))
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, sim, atol=1e-2 if dtype == "float16" else 0)
    with pytest.raises(UserError, match="shape"):
        load_matrix(path, (5, 20))
    assert save_matrix(tmp_path / "none.npy", sim, "none") is None and not (tmp_path / "none.npy").exists()
    with pytest.raises(UserError):
        save_matrix(tmp_path / "x.npy", sim, "bf16")
    with pytest.raises(UserError, match="not found"):
        load_matrix(tmp_path / "missing.npy")


def test_non_finite_scores_are_refused():
    class Broken(torch.nn.Module):
        def similarity(self, img, txt):
            return torch.full((img["e"].shape[0], txt["e"].shape[0]), float("nan"))

    with pytest.raises(UserError, match="NaN"):
        similarity_matrix(Broken(), {"e": torch.zeros(2, 3)}, {"e": torch.zeros(4, 3)})


@pytest.mark.parametrize("arch", ["grm", "grm_no_rp", "scan_i2t"])
def test_length_sorted_blocks_trim_padding_exactly(monkeypatch, arch):
    """Blocks of short captions / few regions drop the all-padding token columns; scores do not change."""
    torch.manual_seed(0)
    model = {"grm": lambda: GRM(D_IMG, VOCAB, num_prompts=3, **TINY),
             "grm_no_rp": lambda: GRM(D_IMG, VOCAB, use_region_prompt=False, **TINY),
             "scan_i2t": lambda: SCAN(D_IMG, VOCAB, direction="i2t", **TINY)}[arch]().eval()
    with torch.no_grad():
        img, _ = encode(model, make_batch(b=12, r=9, seed=3))
        _, txt = encode(model, make_batch(b=30, l=11, seed=4))
    whole = model.similarity(img, txt).numpy()
    shapes = []
    inner = model.similarity

    def spy(a, b):
        shapes.append((next(v for k, v in a.items() if k in ("v", "regions")).shape[1],
                       next(v for k, v in b.items() if k in ("t", "words")).shape[1]))
        return inner(a, b)

    monkeypatch.setattr(model, "similarity", spy)
    got = similarity_matrix(model, img, txt, block_images=4, block_captions=8)
    np.testing.assert_allclose(got, whole, atol=1e-5)
    assert len(shapes) == 3 * 4
    assert min(s[1] for s in shapes) < 11 and min(s[0] for s in shapes) < 9  # some blocks were trimmed
    assert max(s[1] for s in shapes) <= 11 and max(s[0] for s in shapes) <= 9
