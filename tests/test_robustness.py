"""Clutter bins, per-bin metrics against the full gallery, distractor curve rows."""
from __future__ import annotations

import numpy as np
import pytest

from fga.errors import UserError
from fga.evaluate.recall import metrics_from_ranks, query_ranks, rank_metrics
from fga.evaluate.stats import bootstrap_ci
from fga.evaluate.robustness import (
    Bin,
    cluttered_bin,
    cluttered_subset,
    distractor_curve,
    make_bins,
    per_bin_metrics,
)

COCO_SPEC = [[1, 3], [4, 7], [8, 15], [16, None]]


def _assign(bins, counts):
    return {i: [b.label for b in bins if b.contains(c)] for i, c in counts.items()}


def test_coco_edges_with_open_end():
    counts = {10: 1, 11: 3, 12: 4, 13: 7, 14: 8, 15: 15, 16: 16, 17: 40, 18: 0}
    bins = make_bins(counts, COCO_SPEC)
    assert [b.label for b in bins] == ["1-3", "4-7", "8-15", "16+"]
    assert bins[-1] == Bin("16+", 16, None)
    got = _assign(bins, counts)
    assert got == {10: ["1-3"], 11: ["1-3"], 12: ["4-7"], 13: ["4-7"], 14: ["8-15"],
                   15: ["8-15"], 16: ["16+"], 17: ["16+"], 18: []}  # 0 objects: no bin
    assert make_bins(counts, [(2, 2), (3, 5)])[0].label == "2"


@pytest.mark.parametrize("spec", [
    [[1, 3], [3, 7]],          # overlap
    [[4, 7], [1, 3]],          # decreasing
    [[1, None], [4, 7]],       # open-ended not last
    [[3, 1]],                  # hi < lo
    [[1, 2, 3]],               # not a pair
    [],                        # empty
    {"equal_counts": 3},       # typo
    "quartiles",
    {"equal_count": 0},
])
def test_bad_specs(spec):
    with pytest.raises(UserError):
        make_bins({1: 1, 2: 5}, spec)


def test_bad_counts():
    with pytest.raises(UserError):
        make_bins({1: -1}, COCO_SPEC)
    with pytest.raises(UserError):
        make_bins({}, COCO_SPEC)


def _sizes(bins, counts):
    return [sum(b.contains(c) for c in counts.values()) for b in bins]


def test_equal_count_bins_balanced_and_cover_everything():
    rng = np.random.default_rng(0)
    values = rng.poisson(6, size=3000) + 1
    counts = {i: int(v) for i, v in enumerate(values)}
    for k in (2, 3, 4, 5):
        bins = make_bins(counts, {"equal_count": k})
        assert len(bins) == k
        sizes = _sizes(bins, counts)
        assert sum(sizes) == len(counts)  # every image in exactly one bin
        assert all(len(v) == 1 for v in _assign(bins, counts).values())
        assert min(sizes) > 0
        # edges fall on integer counts, so a bin can miss n/k by at most one count's mass
        max_freq = np.bincount(values).max()
        assert max(abs(s - len(counts) / k) for s in sizes) <= max_freq, (k, sizes)
        assert bins[0].lo == values.min() and bins[-1].hi is None
        for a, b in zip(bins, bins[1:]):
            assert b.lo == a.hi + 1  # contiguous integer ranges
    # exactly divisible case: 12 distinct counts x 10 images, 3 bins of 40
    counts = {i: 1 + i // 10 for i in range(120)}
    bins = make_bins(counts, {"equal_count": 3})
    assert [b.label for b in bins] == ["1-4", "5-8", "9+"]
    assert _sizes(bins, counts) == [40, 40, 40]


def test_equal_count_skewed_has_no_empty_bins():
    counts = {i: 1 for i in range(90)}
    counts.update({90 + i: 2 + i for i in range(4)})  # 90 ones, then 2,3,4,5
    bins = make_bins(counts, {"equal_count": 3})
    assert len(bins) == 3 and min(_sizes(bins, counts)) > 0
    assert bins[0].label == "1"
    with pytest.raises(UserError, match="distinct"):
        make_bins(counts, {"equal_count": 6})


def test_cluttered_subset_is_top_tertile():
    counts = {100 + c: c for c in range(1, 10)}  # counts 1..9, 2/3 quantile = 6.33
    b = cluttered_bin(counts)
    assert (b.lo, b.hi) == (7, None)
    assert cluttered_subset(counts) == [107, 108, 109]
    counts = {i: c for i, c in enumerate([1, 1, 2, 2, 3, 3])}  # quantile = 2.33 -> >= 3
    assert cluttered_subset(counts) == [4, 5]


def test_per_bin_metrics_uses_full_gallery():
    # 4 images (ids 10, 42, 7, 3), 1 caption each. Bins: {10, 42} sparse, {7, 3} cluttered.
    # Image 10's caption is beaten by the caption of image 7 (other bin): against the full
    # gallery image 10 has i2t rank 2; against a bin-only gallery it would be rank 1.
    # Caption of image 42 is beaten by image 3 (other bin) in t2i.
    sim = np.array([
        # cap10 cap42 cap7 cap3
        [0.8, 0.1, 0.9, 0.0],   # img 10
        [0.0, 0.5, 0.0, 0.0],   # img 42
        [0.0, 0.0, 0.7, 0.1],   # img 7
        [0.0, 0.6, 0.0, 0.9],   # img 3
    ], dtype=np.float32)
    ids = [10, 42, 7, 3]
    counts = {10: 2, 42: 1, 7: 9, 3: 20, 999: 5}
    bins = make_bins(counts, [[1, 3], [4, 8], [9, 15], [16, None]])
    out = per_bin_metrics(sim, ids, counts, bins, caps_per_image=1)
    assert list(out) == ["1-3", "4-8", "9-15", "16+"]
    sparse = out["1-3"]
    assert sparse["n_images"] == 2 and sparse["n_queries_i2t"] == 2 and sparse["n_queries_t2i"] == 2
    assert sparse["i2t"]["R@1"] == 50.0 and sparse["t2i"]["R@1"] == 50.0
    # a bin-only gallery would wrongly give a perfect score
    assert rank_metrics(sim[:2, :2], 1)["i2t"]["R@1"] == 100.0
    assert rank_metrics(sim[:2, :2], 1)["t2i"]["R@1"] == 100.0
    # image 7: i2t rank 1, but its caption is beaten by image 10 (other bin) -> t2i rank 2
    assert out["9-15"]["n_images"] == 1 and out["9-15"]["i2t"]["R@1"] == 100.0
    assert out["9-15"]["t2i"]["R@1"] == 0.0 and out["9-15"]["t2i"]["meanr"] == 2.0
    assert out["16+"]["n_images"] == 1 and out["16+"]["rsum"] == 600.0
    assert out["4-8"]["n_images"] == 0 and out["4-8"]["i2t"] is None and out["4-8"]["rsum"] is None


def test_per_bin_metrics_matches_selected_ranks():
    rng = np.random.default_rng(4)
    n, cpi = 40, 5
    sim = rng.random((n, n * cpi)).astype(np.float32)
    sim[np.arange(n)[:, None], np.arange(n)[:, None] * cpi + np.arange(cpi)] += 0.5
    ids = list(rng.permutation(1000)[:n])
    counts = {i: int(c) for i, c in zip(ids, rng.integers(1, 25, size=n))}
    bins = make_bins(counts, COCO_SPEC) + [cluttered_bin(counts)]
    out = per_bin_metrics(sim, ids, counts, bins, caps_per_image=cpi)
    i2t, t2i = query_ranks(sim, cpi)
    for b in bins:
        rows = [r for r, i in enumerate(ids) if b.contains(counts[i])]
        caps = [c for r in rows for c in range(r * cpi, (r + 1) * cpi)]
        assert out[b.label]["n_images"] == len(rows)
        assert out[b.label]["n_queries_t2i"] == len(caps)
        if rows:
            ref = metrics_from_ranks(i2t[rows], t2i[caps])
            assert {k: out[b.label][k] for k in ("i2t", "t2i", "rsum")} == ref
    # precomputed ranks give the same answer
    assert per_bin_metrics(sim, ids, counts, bins, cpi, ranks=(i2t, t2i)) == out
    assert sum(out[b.label]["n_images"] for b in bins[:-1]) == n
    assert all("ci" not in row for row in out.values())  # no bootstrap asked for


def test_per_bin_ci_resamples_the_bins_own_images():
    rng = np.random.default_rng(5)
    n, cpi = 60, 5
    sim = rng.random((n, n * cpi)).astype(np.float32)
    sim[np.arange(n)[:, None], np.arange(n)[:, None] * cpi + np.arange(cpi)] += 0.3
    ids = list(range(n))
    counts = {i: int(c) for i, c in zip(ids, rng.integers(1, 12, size=n))}
    bins = make_bins(counts, [[1, 3], [4, 7], [8, 15], [16, None]])
    opts = {"n_resamples": 300, "confidence": 0.9, "seed": 3}
    out = per_bin_metrics(sim, ids, counts, bins, cpi, bootstrap=opts)
    i2t, t2i = query_ranks(sim, cpi)
    cvec = np.array([counts[i] for i in ids])
    for b in bins[:3]:
        m = b.mask(cvec)
        ci = out[b.label]["ci"]
        assert ci == bootstrap_ci(i2t[m], t2i[np.repeat(m, cpi)], cpi, **opts)
        assert ci["n_resamples"] == 300 and ci["confidence"] == 0.9
        assert ci["rsum"][0] <= out[b.label]["rsum"] <= ci["rsum"][1]
        # the bin's own images, not the whole test set: a different interval than all images give
        assert ci != bootstrap_ci(i2t, t2i, cpi, **opts)
    assert out["16+"]["n_images"] == 0 and out["16+"]["ci"] is None


def test_per_bin_metrics_validation():
    sim = np.zeros((2, 10), np.float32)
    bins = make_bins({1: 1, 2: 2}, COCO_SPEC)
    with pytest.raises(UserError, match="no object count"):
        per_bin_metrics(sim, [1, 3], {1: 1, 2: 2}, bins)
    with pytest.raises(UserError, match="image_ids"):
        per_bin_metrics(sim, [1], {1: 1, 2: 2}, bins)
    with pytest.raises(UserError, match="unique"):
        per_bin_metrics(sim, [1, 2], {1: 1, 2: 2}, bins + bins[:1])


def test_distractor_curve_rows_sorted():
    def m(r):
        return {"protocol": "full", "i2t": {"R@1": r, "medr": 2.0}, "t2i": {"R@1": r / 2},
                "rsum": 3 * r, "folds": [1, 2]}

    rows = distractor_curve({5000: m(40.0), 0: m(60.0), 1000: m(50.0)})
    assert [r["n_extra"] for r in rows] == [0, 1000, 5000]
    assert rows[0] == {"n_extra": 0, "i2t_R@1": 60.0, "i2t_medr": 2.0, "t2i_R@1": 30.0, "rsum": 180.0}
    assert [r["rsum"] for r in rows] == [180.0, 150.0, 120.0]
    assert distractor_curve({}) == []
    # a level's bootstrap CI is no curve point
    ci = bootstrap_ci(np.array([1, 3]), np.array([1, 2]), 1, n_resamples=10)
    assert distractor_curve({0: {**m(60.0), "ci": ci}}) == rows[:1]
