"""QB-Norm (Inverted Softmax / Dynamic Inverted Softmax) hubness correction."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp

from fga.errors import UserError
from fga.evaluate.hubness import qb_norm, qb_norm_both, rank_metrics_qb
from fga.evaluate.recall import rank_metrics

HUB_BOOST = 0.6


def _hub_world(n: int = 60, n_bank: int = 300, seed: int = 0):
    """Test matrix [n_img, n_cap] (1 caption per image) with a hub in each direction, plus
    train-query banks drawn from the same distribution (independent noise, never test rows).

    Image 0 scores high for every caption (t2i hub); caption 0 scores high for every image
    (i2t hub).
    """
    rng = np.random.default_rng(seed)
    sim = 0.5 * np.eye(n) + rng.normal(0, 0.1, (n, n))
    sim[0, :] += HUB_BOOST
    sim[:, 0] += HUB_BOOST
    # bank of train captions vs test images: each matches a random image, image 0 is a hub
    bank_t2i = rng.normal(0, 0.1, (n_bank, n))
    bank_t2i[np.arange(n_bank), rng.integers(0, n, n_bank)] += 0.5
    bank_t2i[:, 0] += HUB_BOOST
    # bank of train images vs test captions: caption 0 is a hub
    bank_i2t = rng.normal(0, 0.1, (n_bank, n))
    bank_i2t[np.arange(n_bank), rng.integers(0, n, n_bank)] += 0.5
    bank_i2t[:, 0] += HUB_BOOST
    f32 = np.float32
    return sim.astype(f32), bank_t2i.astype(f32), bank_i2t.astype(f32)


@pytest.mark.parametrize("mode", ["is", "dis"])
def test_hub_is_demoted_and_recall_improves(mode):
    sim, bank_t2i, bank_i2t = _hub_world()
    raw = rank_metrics(sim, caps_per_image=1)
    # the hubs dominate raw retrieval
    assert raw["i2t"]["R@1"] < 30 and raw["t2i"]["R@1"] < 30
    assert np.mean(sim.argmax(axis=0) == 0) > 0.7  # image 0 is the top image for most captions

    s_i2t, s_t2i = qb_norm_both(sim, bank_t2i, bank_i2t, beta=20.0, k=1, mode=mode)
    assert s_i2t.shape == sim.shape and s_t2i.shape == sim.shape
    assert s_i2t.dtype == np.float32 and s_t2i.dtype == np.float32
    fixed = rank_metrics_qb(s_i2t, s_t2i, caps_per_image=1)
    assert fixed["i2t"]["R@1"] > raw["i2t"]["R@1"] + 40
    assert fixed["t2i"]["R@1"] > raw["t2i"]["R@1"] + 40
    assert fixed["rsum"] > raw["rsum"]
    # the hub is no longer the top image for most captions
    assert np.mean(s_t2i.argmax(axis=0) == 0) < 0.2


def test_is_matches_reference_formula():
    rng = np.random.default_rng(1)
    q = rng.normal(0, 1, (7, 11)).astype(np.float32)
    bank = rng.normal(0, 1, (13, 11)).astype(np.float32)
    beta = 3.0
    got = qb_norm(q, bank, beta=beta, mode="is")
    # direct formula (no overflow at this beta): IS = exp(b s) / sum_bank exp(b s_bank)
    naive = np.exp(beta * q.astype(np.float64)) / np.exp(beta * bank.astype(np.float64)).sum(axis=0)
    np.testing.assert_allclose(got, np.log(naive), rtol=1e-5, atol=1e-5)
    assert (np.argsort(-got, axis=1, kind="stable") == np.argsort(-naive, axis=1, kind="stable")).all()
    np.testing.assert_allclose(got, beta * q - logsumexp(beta * bank.astype(np.float64), axis=0), atol=1e-5)


def test_numerically_stable_for_large_beta():
    rng = np.random.default_rng(2)
    q = rng.uniform(0.5, 1.0, (5, 9)).astype(np.float16)
    bank = rng.uniform(0.5, 1.0, (50, 9)).astype(np.float16)
    with np.errstate(over="ignore"):
        assert not np.isfinite(np.exp(1000.0 * bank.astype(np.float64))).all()  # naive would overflow
    out = qb_norm(q, bank, beta=1000.0, mode="is")
    assert np.isfinite(out).all()
    ref = 1000.0 * q.astype(np.float64) - logsumexp(1000.0 * bank.astype(np.float64), axis=0)
    np.testing.assert_allclose(out, ref, rtol=1e-6)


def test_dis_gates_per_query_on_activation_set():
    # Bank: every train query's top-1 is gallery item 2 -> activation set (k=1) = {2}.
    bank = np.array([[0.1, 0.2, 0.9, 0.0], [0.3, 0.0, 0.8, 0.1]], dtype=np.float32)
    q = np.array([
        [0.1, 0.2, 0.7, 0.3],   # top-1 = 2 (in activation set) -> normalised row
        [0.1, 0.9, 0.2, 0.3],   # top-1 = 1 (not a hub)         -> raw row
    ], dtype=np.float32)
    dis = qb_norm(q, bank, beta=10.0, k=1, mode="dis")
    is_ = qb_norm(q, bank, beta=10.0, mode="is")
    np.testing.assert_array_equal(dis[0], is_[0])
    np.testing.assert_array_equal(dis[1], q[1])
    # k=2: the bank's top-2 are {2, 1} and {2, 0}: item 1 joins the set -> row 1 normalised too
    dis2 = qb_norm(q, bank, beta=10.0, k=2, mode="dis")
    np.testing.assert_array_equal(dis2, is_)


@pytest.mark.parametrize("k", [60, 61, 1000])
def test_dis_with_large_k_equals_is(k):
    sim, bank_t2i, _ = _hub_world()
    q = np.ascontiguousarray(sim.T)  # caption queries vs images
    np.testing.assert_array_equal(qb_norm(q, bank_t2i, k=k, mode="dis"), qb_norm(q, bank_t2i, mode="is"))
    # while with k=1 some rows stay raw
    assert not np.array_equal(qb_norm(q, bank_t2i, k=1, mode="dis"), qb_norm(q, bank_t2i, mode="is"))


def test_chunked_equals_unchunked(monkeypatch):
    from fga.evaluate import hubness

    sim, bank_t2i, bank_i2t = _hub_world(n=30, n_bank=70, seed=5)
    full = qb_norm_both(sim, bank_t2i, bank_i2t, k=3)
    monkeypatch.setattr(hubness, "_CHUNK_ELEMS", 37)
    small = qb_norm_both(sim, bank_t2i, bank_i2t, k=3)
    for a, b in zip(full, small):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_both_directions_layout():
    sim, bank_t2i, bank_i2t = _hub_world(n=20, n_bank=40)
    s_i2t, s_t2i = qb_norm_both(sim, bank_t2i, bank_i2t, mode="is")
    np.testing.assert_array_equal(s_i2t, qb_norm(sim, bank_i2t, mode="is"))  # rows = image queries
    np.testing.assert_array_equal(s_t2i.T, qb_norm(sim.T.copy(), bank_t2i, mode="is"))  # cols = captions


def test_bank_test_separation_and_validation():
    sim, bank_t2i, bank_i2t = _hub_world(n=10, n_bank=20)
    with pytest.raises(UserError, match="training-split"):
        qb_norm(sim, sim)  # test queries as their own bank
    with pytest.raises(UserError, match="training-split"):
        qb_norm(sim, sim[:5])  # a slice of the test queries
    with pytest.raises(UserError, match="gallery"):
        qb_norm(sim, bank_t2i[:, :5])
    with pytest.raises(UserError, match="bank_t2i"):
        qb_norm_both(sim, bank_t2i[:, :5], bank_i2t)
    with pytest.raises(UserError, match="bank_i2t"):
        qb_norm_both(np.zeros((2, 10), np.float32), np.zeros((4, 2), np.float32), bank_i2t[:, :4])
    with pytest.raises(UserError, match="mode"):
        qb_norm(sim, bank_t2i, mode="softmax")
    with pytest.raises(UserError, match="beta"):
        qb_norm(sim, bank_t2i, beta=0.0)
    with pytest.raises(UserError, match="k must"):
        qb_norm(sim, bank_t2i, k=0)
    bad = bank_t2i.copy()
    bad[0, 0] = np.nan
    with pytest.raises(UserError, match="NaN"):
        qb_norm(sim, bad)
