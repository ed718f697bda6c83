"""Recall@K / medr / meanr: hand-computed case, loop reference with ties, COCO 1K/5K protocols."""
from __future__ import annotations

import math
import statistics
import time

import numpy as np
import pytest

from fga.errors import UserError
from fga.evaluate import recall
from fga.evaluate.recall import (
    evaluate_protocol,
    fold_metrics,
    metrics_from_ranks,
    query_ranks,
    rank_metrics,
    rank_metrics_qb,
)

# 3 images x 15 captions; image i owns captions 5i..5i+4.
HAND = np.array(
    [
        # c0    c1   c2   c3   c4   c5   c6   c7    c8   c9   c10  c11  c12  c13  c14
        [0.90, 0.1, 0.1, 0.1, 0.1, 0.0, 0.0, 0.95, 0.0, 0.0, 0.0, 0.0, 0.0, 0.3, 0.0],  # img0
        [0.50, 0.5, 0.4, 0.0, 0.0, 0.2, 0.2, 0.2, 0.2, 0.2, 0.0, 0.0, 0.2, 0.0, 0.0],  # img1
        [0.85, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85, 0.8, 0.3, 0.8, 0.3, 0.3, 0.3],  # img2
    ],
    dtype=np.float32,
)
# i2t, pessimistic (ties count against the query):
#   img0: best GT 0.90 (c0); non-GT >= 0.90: c7            -> rank 2
#   img1: best GT 0.20;      non-GT >= 0.20: c0 c1 c2 c12  -> rank 5   (optimistic: c12 tie dropped -> 4)
#   img2: best GT 0.80 (c11); non-GT >= 0.80: c0..c8 + c9 tie -> rank 11 (optimistic: 10)
# t2i (column j, GT image j//5):
#   c0:1 c1:3 c2:3 c3:2 c4:2 | c5:2 c6:2 c7:3 c8:2 c9:2 | c10:1 c11:1 c12:1 c13:2 (tie with img0; optimistic 1) c14:1
HAND_I2T = {"pessimistic": [2, 5, 11], "optimistic": [2, 4, 10]}
HAND_T2I = {
    "pessimistic": [1, 3, 3, 2, 2, 2, 2, 3, 2, 2, 1, 1, 1, 2, 1],
    "optimistic": [1, 3, 3, 2, 2, 2, 2, 3, 2, 2, 1, 1, 1, 1, 1],
}
HAND_METRICS = {
    "pessimistic": {
        "i2t": {"R@1": 0.0, "R@5": 66.6667, "R@10": 66.6667, "medr": 5.0, "meanr": 6.0},
        "t2i": {"R@1": 33.3333, "R@5": 100.0, "R@10": 100.0, "medr": 2.0, "meanr": 1.8667},
        "rsum": 366.6667,
    },
    "optimistic": {
        "i2t": {"R@1": 0.0, "R@5": 66.6667, "R@10": 100.0, "medr": 4.0, "meanr": 5.3333},
        "t2i": {"R@1": 40.0, "R@5": 100.0, "R@10": 100.0, "medr": 2.0, "meanr": 1.8},
        "rsum": 406.6667,
    },
}


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_hand_built_matrix(ties, dtype):
    sim = HAND.astype(dtype)
    i2t, t2i = query_ranks(sim, 5, ties=ties)
    assert i2t.tolist() == HAND_I2T[ties]
    assert t2i.tolist() == HAND_T2I[ties]
    m = rank_metrics(sim, 5, ties=ties)
    assert m == HAND_METRICS[ties]
    assert all(type(v) is float for d in ("i2t", "t2i") for v in m[d].values())
    assert type(m["rsum"]) is float


def test_default_tie_rule_is_pessimistic():
    assert rank_metrics(HAND) == HAND_METRICS["pessimistic"]
    # A constant (collapsed) matrix must not look perfect.
    m = rank_metrics(np.zeros((4, 20), np.float32))
    assert m["i2t"]["R@1"] == 0.0 and m["t2i"]["R@1"] == 0.0
    assert m["i2t"]["meanr"] == 16.0 and m["t2i"]["meanr"] == 4.0


def _loop_reference(sim: np.ndarray, cpi: int, ties: str):
    """Straightforward per-query Python loop (independent of the vectorised code)."""
    sim = sim.astype(np.float64)  # exact for float16/float32 inputs
    n_img, n_cap = sim.shape
    beats = (lambda a, b: a >= b) if ties == "pessimistic" else (lambda a, b: a > b)
    i2t = []
    for i in range(n_img):
        gt = set(range(cpi * i, cpi * (i + 1)))
        best = max(sim[i, j] for j in gt)
        i2t.append(1 + sum(1 for j in range(n_cap) if j not in gt and beats(sim[i, j], best)))
    t2i = []
    for j in range(n_cap):
        g = j // cpi
        t2i.append(1 + sum(1 for i in range(n_img) if i != g and beats(sim[i, j], sim[g, j])))

    def direction(ranks):
        n = len(ranks)
        d = {f"R@{k}": 100.0 * sum(r <= k for r in ranks) / n for k in (1, 5, 10)}
        d["medr"] = float(math.floor(statistics.median(ranks)))
        d["meanr"] = sum(ranks) / n
        return d

    a, b = direction(i2t), direction(t2i)
    rsum = sum(a[f"R@{k}"] + b[f"R@{k}"] for k in (1, 5, 10))
    return i2t, t2i, {"i2t": a, "t2i": b, "rsum": rsum}


def _assert_metrics_close(got: dict, want: dict, tol: float = 1e-3):
    for d in ("i2t", "t2i"):
        assert set(got[d]) == set(want[d])
        for k, v in want[d].items():
            assert got[d][k] == pytest.approx(v, abs=tol), (d, k)
    assert got["rsum"] == pytest.approx(want["rsum"], abs=tol)


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
@pytest.mark.parametrize("n_img,cpi", [(1, 5), (2, 5), (7, 5), (23, 5), (30, 3), (12, 1)])
@pytest.mark.parametrize("chunk", [None, 7])
def test_matches_loop_reference_with_ties(monkeypatch, ties, n_img, cpi, chunk):
    if chunk is not None:  # force many tiny chunks through the chunked path
        monkeypatch.setattr(recall, "_CHUNK_ELEMS", chunk)
    rng = np.random.default_rng(n_img * 100 + cpi)
    for dtype in (np.float32, np.float16):
        sim = rng.random((n_img, n_img * cpi)).round(1).astype(dtype)  # many exact ties
        ref_i2t, ref_t2i, ref = _loop_reference(sim, cpi, ties)
        i2t, t2i = query_ranks(sim, cpi, ties=ties)
        assert i2t.tolist() == ref_i2t
        assert t2i.tolist() == ref_t2i
        _assert_metrics_close(rank_metrics(sim, cpi, ties=ties), ref)


def test_metrics_from_ranks_even_median_is_floored():
    m = metrics_from_ranks(np.array([1, 2]), np.array([3, 4, 5, 6]))
    assert m["i2t"]["medr"] == 1.0  # median 1.5 -> 1 (VSE++ convention)
    assert m["t2i"]["medr"] == 4.0  # median 4.5 -> 4
    assert m["i2t"]["R@1"] == 50.0 and m["t2i"]["R@5"] == 75.0


def test_rank_metrics_qb_uses_each_matrix_for_its_direction():
    rng = np.random.default_rng(3)
    a = rng.random((6, 30)).astype(np.float32)
    b = rng.random((6, 30)).astype(np.float32)
    got = rank_metrics_qb(a, b, 5)
    ma, mb = rank_metrics(a, 5), rank_metrics(b, 5)
    assert got["i2t"] == ma["i2t"] and got["t2i"] == mb["t2i"]
    assert got == rank_metrics_qb(a, b.T.copy().T, 5)  # layout does not matter
    with pytest.raises(UserError):
        rank_metrics_qb(a, b[:5, :25], 5)


def test_input_validation():
    with pytest.raises(UserError, match="caps_per_image"):
        rank_metrics(np.zeros((3, 14), np.float32))
    with pytest.raises(UserError):
        rank_metrics(np.zeros(15, np.float32))
    with pytest.raises(UserError, match="tie rule"):
        rank_metrics(HAND, ties="random")
    nan = HAND.copy()
    nan[1, 3] = np.nan
    with pytest.raises(UserError, match="NaN"):
        rank_metrics(nan)
    with pytest.raises(UserError, match="protocol"):
        evaluate_protocol(HAND, "coco2k")
    with pytest.raises(UserError, match="5000"):
        evaluate_protocol(HAND, "coco5k")
    with pytest.raises(UserError, match="divisible"):
        fold_metrics(HAND, 2)


def test_full_protocol_and_fold_metrics_small():
    out = evaluate_protocol(HAND, "full")
    assert out["protocol"] == "full" and out["n_images"] == 3 and out["n_captions"] == 15
    assert {k: out[k] for k in ("i2t", "t2i", "rsum")} == HAND_METRICS["pessimistic"]
    rng = np.random.default_rng(1)
    sim = rng.random((6, 30)).astype(np.float32)
    f = fold_metrics(sim, 3)
    assert len(f["folds"]) == 3
    assert f["folds"][1] == rank_metrics(sim[2:4, 10:20])
    assert f["i2t"]["meanr"] == pytest.approx(np.mean([x["i2t"]["meanr"] for x in f["folds"]]), abs=1e-4)


@pytest.fixture(scope="module")
def coco_sim():
    """Synthetic 5,000 x 25,000 float16 test matrix with boosted GT blocks."""
    rng = np.random.default_rng(2024)
    n_img, cpi = 5000, 5
    sim = np.empty((n_img, n_img * cpi), dtype=np.float16)
    step = 500
    for r0 in range(0, n_img, step):
        sim[r0:r0 + step] = rng.random((step, n_img * cpi), dtype=np.float32)
    # GT captions get a per-image boost so that some win and some lose against 25k / 5k items.
    boost = rng.uniform(0.0, 0.01, size=(n_img, 1)).astype(np.float32)
    rows = np.arange(n_img)[:, None]
    cols = rows * cpi + np.arange(cpi)[None, :]
    gt = rng.uniform(0.99, 1.0, size=(n_img, cpi)).astype(np.float32) + boost
    sim[rows, cols] = gt.astype(np.float16)
    return sim


def _column_row_reference(sim: np.ndarray, cpi: int):
    """Per-query reference (pessimistic) using one row / column at a time, no chunking."""
    n_img, n_cap = sim.shape
    i2t = np.empty(n_img, dtype=np.int64)
    for i in range(n_img):
        row = sim[i]
        gt = row[cpi * i:cpi * (i + 1)]
        best = gt.max()
        i2t[i] = 1 + np.count_nonzero(row >= best) - np.count_nonzero(gt >= best)
    simt = np.ascontiguousarray(sim.T)
    t2i = np.empty(n_cap, dtype=np.int64)
    for j in range(n_cap):
        col = simt[j]
        t2i[j] = np.count_nonzero(col >= col[j // cpi])
    return i2t, t2i


def test_coco_5k_and_1k_protocols(coco_sim):
    sim = coco_sim
    t0 = time.perf_counter()
    m5k = evaluate_protocol(sim, "coco5k")
    t_5k = time.perf_counter() - t0
    print(f"\ncoco5k protocol on 5000x25000 float16: {t_5k:.2f} s; rsum {m5k['rsum']}, i2t {m5k['i2t']}, t2i {m5k['t2i']}")
    assert m5k["protocol"] == "coco5k" and m5k["n_images"] == 5000 and m5k["n_captions"] == 25000

    # 5K == the whole-matrix computation, checked against an independent per-query reference
    ref_i2t, ref_t2i = _column_row_reference(sim, 5)
    assert {k: m5k[k] for k in ("i2t", "t2i", "rsum")} == metrics_from_ranks(ref_i2t, ref_t2i)
    # recalls are non-trivial
    for d in ("i2t", "t2i"):
        assert 2.0 < m5k[d]["R@1"] < 98.0, m5k[d]
    assert m5k["rsum"] < 590.0

    # 1K == mean over 5 folds, each fold's ranks from the independent reference on its own sub-matrix
    m1k = evaluate_protocol(sim, "coco1k")
    assert m1k["protocol"] == "coco1k" and len(m1k["folds"]) == 5
    folds = [metrics_from_ranks(*_column_row_reference(sim[1000 * f:1000 * (f + 1), 5000 * f:5000 * (f + 1)], 5))
             for f in range(5)]
    assert [{k: m[k] for k in ("i2t", "t2i", "rsum")} for m in m1k["folds"]] == folds
    for d in ("i2t", "t2i"):
        for k in ("R@1", "R@5", "R@10", "medr", "meanr"):
            assert m1k[d][k] == pytest.approx(np.mean([f[d][k] for f in folds]), abs=1e-3)
    assert m1k["rsum"] == pytest.approx(np.mean([f["rsum"] for f in folds]), abs=1e-3)
    # smaller galleries are easier
    assert m1k["i2t"]["R@1"] > m5k["i2t"]["R@1"] and m1k["t2i"]["R@1"] > m5k["t2i"]["R@1"]


# ------------------------------------------------------------------ tie rule "argsort" (SCAN's / VSE-inf's code)


def _peer_reference(sim: np.ndarray, cpi: int):
    """The peers' evaluation loop written out: the position of the ground truth in np.argsort(scores)[::-1]."""
    i2t = []
    for i in range(sim.shape[0]):
        order = list(np.argsort(sim[i])[::-1])
        i2t.append(1 + min(order.index(j) for j in range(cpi * i, cpi * (i + 1))))
    cols = sim.T
    t2i = [1 + list(np.argsort(cols[j])[::-1]).index(j // cpi) for j in range(sim.shape[1])]
    return i2t, t2i


@pytest.mark.parametrize("n_img,cpi", [(1, 5), (7, 5), (40, 5), (30, 3)])
@pytest.mark.parametrize("chunk", [None, 50])
def test_argsort_rule_reproduces_the_peers_loop(monkeypatch, n_img, cpi, chunk):
    if chunk is not None:
        monkeypatch.setattr(recall, "_CHUNK_ELEMS", chunk)
    rng = np.random.default_rng(n_img + cpi)
    for dtype in (np.float32, np.float16):
        sim = rng.random((n_img, n_img * cpi)).round(1).astype(dtype)  # many exact ties
        i2t, t2i = query_ranks(sim, cpi, ties="argsort")
        ref_i2t, ref_t2i = _peer_reference(sim, cpi)
        assert i2t.tolist() == ref_i2t
        assert t2i.tolist() == ref_t2i


def test_argsort_rule_lies_between_the_bounds_and_beats_pessimistic_on_ties():
    rng = np.random.default_rng(3)
    sim = rng.integers(0, 4, size=(60, 300)).astype(np.float32)  # heavy ties, as a float16 matrix of a weak model
    ranks = {rule: query_ranks(sim, 5, ties=rule) for rule in recall.TIE_RULES}
    for d in (0, 1):
        assert np.all(ranks["optimistic"][d] <= ranks["argsort"][d])
        assert np.all(ranks["argsort"][d] <= ranks["pessimistic"][d])
        assert np.any(ranks["argsort"][d] < ranks["pessimistic"][d])
    metrics = {rule: rank_metrics(sim, 5, ties=rule) for rule in recall.TIE_RULES}
    assert metrics["argsort"]["i2t"]["R@1"] > metrics["pessimistic"]["i2t"]["R@1"]
    assert metrics["argsort"]["rsum"] > metrics["pessimistic"]["rsum"]


def test_every_rule_agrees_without_ties():
    sim = np.random.default_rng(5).random((9, 45)).astype(np.float32)
    want = rank_metrics(sim, 5)
    for rule in recall.TIE_RULES:
        assert rank_metrics(sim, 5, ties=rule) == want
    assert evaluate_protocol(sim, "full", 5, "argsort")["ties"] == "argsort"


def test_tie_rule_of_params():
    assert recall.tie_rule_of({}) == "pessimistic"
    assert recall.tie_rule_of({"tie_rule": "argsort"}) == "argsort"
    with pytest.raises(UserError, match="evaluate.tie_rule"):
        recall.tie_rule_of({"tie_rule": "index"})
