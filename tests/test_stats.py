"""Bootstrap CIs, paired test, across-seed mean/std."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from fga.errors import UserError
from fga.evaluate.recall import RECALL_KEYS, metrics_from_ranks
from fga.evaluate.stats import (BOOTSTRAP_DEFAULTS, bootstrap_ci, bootstrap_options, mean_std, over_seeds,
                               paired_test, paired_tests_over_seeds)

CPI = 5


def _ranks(n_img: int, seed: int, quality: float = 0.4):
    """Synthetic ranks: rank 1 with prob ~quality, otherwise geometric tail."""
    rng = np.random.default_rng(seed)
    i2t = rng.geometric(quality, size=n_img)
    t2i = rng.geometric(quality * 0.8, size=n_img * CPI)
    return i2t, t2i


def _width(ci):
    return ci[1] - ci[0]


def test_ci_contains_point_estimate_and_is_deterministic():
    i2t, t2i = _ranks(400, seed=1)
    point = metrics_from_ranks(i2t, t2i)
    ci = bootstrap_ci(i2t, t2i, CPI, n_resamples=500, seed=7)
    for d in ("i2t", "t2i"):
        assert set(ci[d]) == set(RECALL_KEYS)
        for k in RECALL_KEYS:
            lo, hi = ci[d][k]
            assert type(lo) is float and type(hi) is float
            assert lo <= point[d][k] <= hi, (d, k)
            assert hi - lo > 0
    assert ci["rsum"][0] <= point["rsum"] <= ci["rsum"][1]
    assert bootstrap_ci(i2t, t2i, CPI, n_resamples=500, seed=7) == ci
    assert bootstrap_ci(i2t, t2i, CPI, n_resamples=500, seed=8) != ci


def test_ci_narrows_with_more_images_and_has_binomial_width():
    small = bootstrap_ci(*_ranks(200, seed=2), CPI, n_resamples=1000)
    large = bootstrap_ci(*_ranks(5000, seed=3), CPI, n_resamples=1000)
    assert _width(large["rsum"]) < 0.5 * _width(small["rsum"])
    for d in ("i2t", "t2i"):
        assert _width(large[d]["R@1"]) < _width(small[d]["R@1"])
    # i2t R@1 is a proportion over images: width ~ 2 * 1.96 * sqrt(p(1-p)/n) * 100
    i2t, t2i = _ranks(5000, seed=3)
    p = np.mean(i2t <= 1)
    expected = 2 * 1.96 * np.sqrt(p * (1 - p) / 5000) * 100
    assert _width(large["i2t"]["R@1"]) == pytest.approx(expected, rel=0.15)


def test_resampling_keeps_images_with_their_captions():
    # Half the images are perfect in both directions (i2t rank 1, all 5 captions rank 1),
    # half fail in both. If the unit is the image, every resample has
    # i2t R@1 == t2i R@1, so the two CIs coincide exactly. Resampling captions independently
    # (25 draws per 5 images) would make the t2i interval ~sqrt(5) narrower.
    n = 300
    good = np.arange(n) % 2 == 0
    i2t = np.where(good, 1, 50)
    t2i = np.repeat(np.where(good, 1, 50), CPI)
    ci = bootstrap_ci(i2t, t2i, CPI, n_resamples=800, seed=0)
    assert ci["i2t"]["R@1"] == ci["t2i"]["R@1"]
    assert _width(ci["i2t"]["R@1"]) > 5.0
    # rSum = 3 * (i2t R@1 + t2i R@1) = 6 * i2t R@1 in every resample
    assert ci["rsum"] == pytest.approx([6 * x for x in ci["i2t"]["R@1"]], abs=1e-3)
    # Caption order matters: the same caption ranks assigned to the wrong images break the tie.
    shuffled = np.random.default_rng(0).permutation(t2i)
    ci2 = bootstrap_ci(i2t, shuffled, CPI, n_resamples=800, seed=0)
    assert ci2["t2i"]["R@1"] != ci2["i2t"]["R@1"]


def test_bootstrap_validation():
    i2t, t2i = _ranks(10, seed=0)
    with pytest.raises(UserError):
        bootstrap_ci(i2t, t2i[:-1], CPI)
    with pytest.raises(UserError):
        bootstrap_ci(i2t, t2i, CPI, confidence=1.5)
    with pytest.raises(UserError):
        bootstrap_ci(i2t, t2i, CPI, n_resamples=0)


def _method(n_img: int, seed: int, quality: float):
    return _ranks(n_img, seed=seed, quality=quality)


def test_paired_test_clear_winner_tie_and_reverse():
    n = 1000
    base = _method(n, seed=10, quality=0.3)
    # A: the same images, but each query improved (rank halved) -> clearly better
    better = (np.maximum(1, base[0] // 2), np.maximum(1, base[1] // 2))
    res = paired_test(better, base, CPI, n_resamples=2000, seed=0)
    expect = metrics_from_ranks(*better)["rsum"] - metrics_from_ranks(*base)["rsum"]
    assert res["delta_rsum"] == pytest.approx(expect, abs=1e-3)
    assert res["delta_rsum"] > 0
    assert res["p_value"] < 0.01
    assert res["ci"][0] > 0 and res["ci"][0] <= res["delta_rsum"] <= res["ci"][1]

    same = paired_test(base, base, CPI, n_resamples=2000, seed=0)
    assert same["delta_rsum"] == 0.0 and same["p_value"] >= 0.5 and same["ci"] == [0.0, 0.0]

    rev = paired_test(base, better, CPI, n_resamples=2000, seed=0)
    assert rev["p_value"] > 0.99 and rev["delta_rsum"] < 0 and rev["ci"][1] < 0

    # Two independent draws of an equally good method: no significant difference either way.
    other = _method(n, seed=11, quality=0.3)
    mid = paired_test(other, base, CPI, n_resamples=2000, seed=0)
    assert 0.01 < mid["p_value"] < 0.99
    assert mid["ci"][0] < 0 < mid["ci"][1] or abs(mid["delta_rsum"]) < 5


def test_paired_test_matches_scipy_exact_permutation():
    # 12 images -> 2^12 sign patterns: scipy enumerates them exactly.
    n = 12

    def per_image_rsum(r):
        i2t, t2i = r
        t = t2i.reshape(n, CPI)
        return 100.0 * sum((i2t <= k).astype(float) + (t <= k).mean(axis=1) for k in (1, 5, 10))

    ref_ps = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        a = (rng.geometric(0.45, n), rng.geometric(0.45, n * CPI))
        b = (rng.geometric(0.4, n), rng.geometric(0.4, n * CPI))
        res = paired_test(a, b, CPI, n_resamples=20000, seed=1)
        xa, xb = per_image_rsum(a), per_image_rsum(b)
        ref = sps.permutation_test((xa, xb), lambda x, y, axis: np.mean(x - y, axis=axis),
                                   permutation_type="samples", alternative="greater",
                                   vectorized=True, n_resamples=np.inf)
        assert res["delta_rsum"] == pytest.approx(np.mean(xa - xb), abs=1e-3)
        assert res["p_value"] == pytest.approx(ref.pvalue, abs=0.015), seed
        ref_ps.append(ref.pvalue)
    assert min(ref_ps) < 0.05 and any(0.1 < p < 0.9 for p in ref_ps)  # non-trivial cases


def test_paired_test_validation():
    a = _method(20, 0, 0.3)
    b = _method(21, 1, 0.3)
    with pytest.raises(UserError, match="same test set"):
        paired_test(a, b, CPI)
    with pytest.raises(UserError):
        paired_test(a[0], a, CPI)


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    m, s = mean_std([5.0])
    assert (m, s) == (5.0, 0.0) and type(m) is float and type(s) is float
    m, s = mean_std(np.array([10.0, 12.0]))
    assert m == 11.0 and s == pytest.approx(np.sqrt(2.0))
    with pytest.raises(UserError):
        mean_std([])
    with pytest.raises(UserError):
        mean_std([1.0, float("nan")])


def test_bootstrap_options_from_params():
    """`evaluate.bootstrap` with the evaluate stage's defaults filled in, usable by both bootstrap_ci and paired_test."""
    assert bootstrap_options({}) == {"n_resamples": 1000, "confidence": 0.95, "seed": 0}
    opts = bootstrap_options({"evaluate": {"bootstrap": {"n_resamples": 50, "seed": 7}}})
    assert opts == {"n_resamples": 50, "confidence": 0.95, "seed": 7}
    a, b = _method(30, 0, 0.6), _method(30, 1, 0.3)
    assert bootstrap_ci(*a, **opts)["n_resamples"] == 50 and paired_test(a, b, **opts)["n_resamples"] == 50


def test_bootstrap_options_are_owned_by_stats_not_the_evaluate_stage():
    """The options come from the params here: importing stats leaves the evaluate stage (and torch) unimported."""
    import subprocess
    import sys

    code = ("import sys; from fga.evaluate.stats import bootstrap_options; "
            "assert bootstrap_options({'evaluate': {'bootstrap': {'confidence': 0.9}}})['confidence'] == 0.9; "
            "print(sorted(m for m in ('fga.evaluate.run', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    from fga.evaluate.run import settings

    assert settings({})["bootstrap"] == BOOTSTRAP_DEFAULTS  # the stage's defaults are stats' own


def test_over_seeds_mean_sample_std_and_seed_count():
    import pandas as pd

    runs = pd.DataFrame({"method": ["a", "a", "a", "b"], "rsum": [1.0, 2.0, 6.0, 5.0], "lo": [0.0, 1.0, 2.0, 4.0]})
    out = over_seeds(runs, ["method"], ["rsum"], mean_only=["lo"])
    assert list(out.columns) == ["rsum_mean", "rsum_std", "lo_mean", "seeds"]
    assert out.loc["a"].tolist() == pytest.approx([3.0, np.std([1.0, 2.0, 6.0], ddof=1), 1.0, 3])
    assert out.loc["b"].tolist() == [5.0, 0.0, 4.0, 1]  # one seed: std 0, not NaN


def test_paired_tests_over_seeds_mean_delta_and_largest_p():
    import pandas as pd

    per_seed = pd.DataFrame({"cell": ["x", "x", "y"], "seed": ["0", "1", "0"], "delta_rsum": [4.0, 2.0, 9.0],
                             "p_value": [0.01, 0.04, 0.001], "n_images": [100] * 3, "n_resamples": [500] * 3})
    out = paired_tests_over_seeds(per_seed, ["cell"])
    assert out.to_dict("records") == [{"cell": "x", "delta_rsum": 3.0, "p_value": 0.04, "n_images": 100,
                                       "n_resamples": 500, "seed": "all"}]  # y has one seed: nothing to combine
