"""Uncertainty for retrieval metrics: bootstrap CIs, paired tests, across-seed mean/std.

All functions work on per-query ranks from :func:`fga.evaluate.recall.query_ranks`
(``i2t_ranks [n_images]``, ``t2i_ranks [n_images * caps_per_image]`` in caption order), so the
similarity matrix is never recomputed. The resampling unit is the IMAGE: an image's i2t query
and its ``caps_per_image`` caption queries are always drawn together.

Every recall is linear in per-image hit indicators, so each resample is a gather + mean over a
small ``[n_images, 6]`` table; resamples are processed in chunks to bound memory.

Across seeds (one run per seed, in pandas frames): :func:`over_seeds` (mean and sample std per
cell) and :func:`paired_tests_over_seeds` (one verdict from the per-seed paired tests).
The bootstrap options are ``evaluate.bootstrap`` of the params (:func:`bootstrap_options`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from fga.errors import UserError
from fga.evaluate.recall import KS, RECALL_KEYS

if TYPE_CHECKING:
    import pandas as pd

BOOTSTRAP_DEFAULTS: dict[str, Any] = {"n_resamples": 1000, "confidence": 0.95, "seed": 0}
_CHUNK_ELEMS = 8 * 1024 * 1024  # resample-index elements per chunk (~64 MB of int64)
_DECIMALS = 4


def _check_ranks(i2t_ranks, t2i_ranks, caps_per_image: int, name: str = "ranks"):
    i2t = np.asarray(i2t_ranks)
    t2i = np.asarray(t2i_ranks)
    if i2t.ndim != 1 or t2i.ndim != 1 or i2t.size == 0:
        raise UserError(f"{name}: i2t_ranks and t2i_ranks must be non-empty 1-D arrays")
    if not isinstance(caps_per_image, (int, np.integer)) or caps_per_image < 1:
        raise UserError(f"caps_per_image must be a positive integer, got {caps_per_image!r}")
    if t2i.size != i2t.size * caps_per_image:
        raise UserError(
            f"{name}: {t2i.size} caption ranks for {i2t.size} images x {caps_per_image} captions; "
            "pass ranks from the same matrix and the right caps_per_image"
        )
    return i2t, t2i


def _hit_table(i2t, t2i, caps_per_image: int) -> np.ndarray:
    """``[n_images, 6]`` float table whose column means (x100) are the six recalls.

    Columns 0..2: i2t hit (0/1) at K = 1, 5, 10; columns 3..5: fraction of the image's
    captions with t2i rank <= K.
    """
    n = i2t.size
    t2i = t2i.reshape(n, caps_per_image)
    cols = [(i2t <= k).astype(np.float64) for k in KS]
    cols += [np.mean(t2i <= k, axis=1) for k in KS]
    return np.stack(cols, axis=1)


def _resampled_means(table: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_resamples, table.shape[1]]`` column means over bootstrap resamples of the rows."""
    n = table.shape[0]
    out = np.empty((n_resamples, table.shape[1]))
    step = max(1, _CHUNK_ELEMS // n)
    for b0 in range(0, n_resamples, step):
        b1 = min(n_resamples, b0 + step)
        idx = rng.integers(0, n, size=(b1 - b0, n))
        # Per-resample multiplicity of each image: means become a matrix product.
        idx += np.arange(b1 - b0)[:, None] * n
        counts = np.bincount(idx.ravel(), minlength=(b1 - b0) * n).reshape(b1 - b0, n).astype(np.float64)
        out[b0:b1] = counts @ table / n
    return out


def _check_conf(confidence: float, n_resamples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise UserError(f"confidence must be in (0, 1), got {confidence!r}")
    if not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise UserError(f"n_resamples must be a positive integer, got {n_resamples!r}")


def _interval(x: np.ndarray, confidence: float) -> list[float]:
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(x, [alpha, 1.0 - alpha])
    return [round(float(lo), _DECIMALS), round(float(hi), _DECIMALS)]


def bootstrap_options(cfg: dict[str, Any]) -> dict[str, Any]:
    """`evaluate.bootstrap` (defaults filled in) as keyword arguments of :func:`bootstrap_ci` and :func:`paired_test`."""
    bs = {**BOOTSTRAP_DEFAULTS, **((cfg.get("evaluate") or {}).get("bootstrap") or {})}
    return {"n_resamples": int(bs["n_resamples"]), "confidence": float(bs["confidence"]), "seed": int(bs["seed"])}


def bootstrap_ci(i2t_ranks, t2i_ranks, caps_per_image: int = 5, n_resamples: int = 1000,
                 confidence: float = 0.95, seed: int = 0) -> dict:
    """Percentile bootstrap CIs for every recall and rSum, resampling images with their captions.

    Each resample draws ``n_images`` image indices with replacement (``np.random.default_rng(seed)``)
    and takes those images' i2t ranks and all of their captions' t2i ranks.
    Returns ``{"i2t": {"R@1": [lo, hi], ...}, "t2i": {...}, "rsum": [lo, hi],
    "confidence": c, "n_resamples": B}`` (recalls in percent).
    """
    _check_conf(confidence, n_resamples)
    i2t, t2i = _check_ranks(i2t_ranks, t2i_ranks, caps_per_image)
    table = _hit_table(i2t, t2i, caps_per_image)
    rec = 100.0 * _resampled_means(table, n_resamples, np.random.default_rng(seed))
    out = {
        "i2t": {key: _interval(rec[:, j], confidence) for j, key in enumerate(RECALL_KEYS)},
        "t2i": {key: _interval(rec[:, 3 + j], confidence) for j, key in enumerate(RECALL_KEYS)},
        "rsum": _interval(rec.sum(axis=1), confidence),
        "confidence": float(confidence),
        "n_resamples": int(n_resamples),
    }
    return out


def paired_test(ranks_a, ranks_b, caps_per_image: int = 5, n_resamples: int = 10000,
                confidence: float = 0.95, seed: int = 0) -> dict:
    """Paired comparison of two methods on the same test set, in rSum.

    ``ranks_a`` / ``ranks_b`` are ``(i2t_ranks, t2i_ranks)`` of methods A and B on the SAME
    images and captions (same order). rSum is a mean of per-image contributions ``d_i``
    (A minus B), so:

    * ``p_value``: one-sided paired permutation test of H1 "A > B in rSum". Under H0 the A/B
      labels are exchangeable within each image (image + its captions), i.e. each ``d_i``'s
      sign is flipped at random (the ``permutation_type="samples"`` test of
      ``scipy.stats.permutation_test``, vectorised). ``p = (1 + #{T* >= T}) / (1 + n_resamples)``,
      never 0. Identical methods give ``p = 1``; a clearly better A gives ``p ~ 1/(B+1)``;
      a clearly worse A gives ``p ~ 1``.
    * ``ci``: paired percentile bootstrap CI for ``delta_rsum`` (images resampled, the same
      indices for A and B).

    Returns ``{"delta_rsum", "p_value", "ci": [lo, hi], "n_resamples"}``.
    """
    _check_conf(confidence, n_resamples)
    for name, r in (("ranks_a", ranks_a), ("ranks_b", ranks_b)):
        if not isinstance(r, (tuple, list)) or len(r) != 2:
            raise UserError(f"{name} must be a pair (i2t_ranks, t2i_ranks)")
    a_i2t, a_t2i = _check_ranks(*ranks_a, caps_per_image, "ranks_a")
    b_i2t, b_t2i = _check_ranks(*ranks_b, caps_per_image, "ranks_b")
    if a_i2t.size != b_i2t.size:
        raise UserError(
            f"ranks_a has {a_i2t.size} images but ranks_b has {b_i2t.size}; compare methods on the same test set"
        )
    # Per-image rSum contribution (x100 so that the mean is the rSum difference).
    d = 100.0 * (_hit_table(a_i2t, a_t2i, caps_per_image).sum(axis=1)
                 - _hit_table(b_i2t, b_t2i, caps_per_image).sum(axis=1))
    n = d.size
    observed = float(d.mean())
    rng = np.random.default_rng(seed)

    # Sign-flip permutation null distribution of the mean difference.
    tol = 1e-9 * max(1.0, float(np.abs(d).max()))
    n_ge = 0
    step = max(1, _CHUNK_ELEMS // n)
    for b0 in range(0, n_resamples, step):
        b1 = min(n_resamples, b0 + step)
        signs = rng.integers(0, 2, size=(b1 - b0, n), dtype=np.int8).astype(np.float64) * 2.0 - 1.0
        null = signs @ d / n
        n_ge += int(np.count_nonzero(null >= observed - tol))
    p_value = (1.0 + n_ge) / (1.0 + n_resamples)

    boot = _resampled_means(d[:, None], n_resamples, rng)[:, 0]
    return {
        "delta_rsum": round(observed, _DECIMALS),
        "p_value": float(p_value),
        "ci": _interval(boot, confidence),
        "n_resamples": int(n_resamples),
    }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) across seeds; std is 0.0 for one value."""
    x = np.asarray(list(values), dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise UserError("mean_std needs at least one value (e.g. one metric per seed)")
    if not np.all(np.isfinite(x)):
        raise UserError(f"mean_std got non-finite values {x.tolist()}; check the per-seed metrics")
    std = float(np.std(x, ddof=1)) if x.size > 1 else 0.0
    return float(np.mean(x)), std


def over_seeds(runs: pd.DataFrame, keys: Sequence[str], columns: Sequence[str],
               mean_only: Sequence[str] = ()) -> pd.DataFrame:
    """Per cell of `keys` (one row per seed): `<c>_mean` and the sample std `<c>_std` (ddof=1, 0.0 for one seed)
    of each of `columns`, `<c>_mean` of each of `mean_only`, and `seeds` (rows in the cell); indexed by `keys`."""
    grouped = runs.groupby(list(keys), sort=True)
    mean = grouped[list(columns)].mean()
    std = grouped[list(columns)].std(ddof=1).fillna(0.0)
    out = mean.add_suffix("_mean").join(std.add_suffix("_std"))
    if mean_only:
        out = out.join(grouped[list(mean_only)].mean().add_suffix("_mean"))
    out["seeds"] = grouped.size()
    return out


def paired_tests_over_seeds(per_seed: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """One row per cell of `keys` with two or more seeds, from one :func:`paired_test` row per seed
    (`delta_rsum`, `p_value`, `seed`, `n_images`, `n_resamples`): the mean Δ and the LARGEST per-seed p, `seed` "all".

    The largest p is the intersection-union test of "A better at every seed": it rejects at level α iff every
    seed's test does. No CI: the seeds share their test images, so their intervals do not pool.
    """
    combined = (per_seed.groupby(list(keys), sort=True)
                .agg(delta_rsum=("delta_rsum", "mean"), p_value=("p_value", "max"), n_seeds=("seed", "size"),
                     n_images=("n_images", "first"), n_resamples=("n_resamples", "first")).reset_index())
    return combined[combined["n_seeds"] > 1].drop(columns="n_seeds").assign(seed="all")
