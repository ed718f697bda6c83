"""Recall@K / median rank / mean rank for image-text retrieval from a similarity matrix.

Conventions
-----------
``sim`` has shape ``[n_images, n_captions]`` (float32 or float16; higher = more similar) and
caption ``j`` belongs to image ``j // caps_per_image``: image ``i``'s ground-truth (GT)
captions are columns ``caps_per_image*i .. caps_per_image*i + caps_per_image - 1``.

* i2t: every image is a query over all captions; its rank is the best (lowest) rank of any of
  its GT captions.
* t2i: every caption is a query over all images; its rank is the rank of its image.

Ranks are 1-based. R@K is the percentage (0..100) of queries with rank <= K, ``medr`` is the
floor of the median rank (the VSE++/SCAN convention, identical to ``np.median`` when the
median is an integer), ``meanr`` the mean rank, and ``rsum`` the sum of the six recalls.

Tie rule (``ties=``)
--------------------
Similarity matrices stored in float16 do contain exact ties, so the rule is explicit:

* ``"pessimistic"`` (default): a competitor whose score *equals* the GT score is ranked above
  the GT, i.e. ``rank = 1 + #{non-GT items with score >= GT score}``. A degenerate model that
  outputs a constant matrix therefore gets the worst rank, never a perfect one; reported
  numbers are a lower bound.
* ``"optimistic"``: ties are resolved in favour of the GT,
  ``rank = 1 + #{items with score > GT score}``.
* ``"argsort"``: the rule of the SCAN and VSE∞ evaluation code (``evaluation.py``, ``i2t``/``t2i``): a
  query's rank is ``1 +`` the position of its GT item in ``np.argsort(scores)[::-1]``, numpy's default
  (introsort/SIMD, not stable) sort of the query's row (i2t) or column (t2i). Among equal scores the
  order is whatever that sort leaves, neither index order nor its reverse (numpy 2.x, AVX2), and it can
  differ between numpy builds and CPUs; ranks lie between the pessimistic and the optimistic ones.

Every rule gives the same ranks on a matrix without ties. ``evaluate.tie_rule`` picks the rule of
``fga evaluate`` (:func:`tie_rule_of`); every metrics block records it under ``"ties"``.

For i2t the GT score is the best of the image's GT captions and its other GT captions are never
competitors. NaN entries are rejected (``UserError``).

Memory: image rows are processed in chunks, so the extra memory is a few tens of MB even for a
5,000 x 25,000 matrix (plus O(n_captions) vectors); the matrix itself is never copied.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from fga.errors import UserError

KS = (1, 5, 10)
RECALL_KEYS = tuple(f"R@{k}" for k in KS)
METRIC_KEYS = RECALL_KEYS + ("medr", "meanr")
TIE_RULES = ("pessimistic", "optimistic", "argsort")
DEFAULT_TIE_RULE = "pessimistic"
# One line per rule, for the notes of the tables that show recalls.
TIE_RULE_TEXT = {
    "pessimistic": "a competitor scoring exactly the ground truth's score ranks above it (a lower bound)",
    "optimistic": "a competitor scoring exactly the ground truth's score ranks below it (an upper bound)",
    "argsort": "ties ordered by numpy's default argsort, as SCAN's and VSE∞'s evaluation code ranks",
}
PROTOCOLS = ("full", "coco5k", "coco1k")
COCO_TEST_IMAGES = 5000
COCO_FOLD_IMAGES = 1000
# Elements per chunk of the boolean comparison block (~32 MB).
_CHUNK_ELEMS = 32 * 1024 * 1024
_DECIMALS = 4


def _check_sim(sim, caps_per_image: int, name: str = "sim") -> np.ndarray:
    sim = np.asarray(sim)
    if sim.ndim != 2:
        raise UserError(f"{name} must be a 2-D [n_images, n_captions] matrix, got shape {sim.shape}")
    if not isinstance(caps_per_image, (int, np.integer)) or caps_per_image < 1:
        raise UserError(f"caps_per_image must be a positive integer, got {caps_per_image!r}")
    n_img, n_cap = sim.shape
    if n_img == 0:
        raise UserError(f"{name} has no images (shape {sim.shape}); evaluate a non-empty split")
    if n_cap != n_img * caps_per_image:
        raise UserError(
            f"{name} has shape {sim.shape} but {n_img} images x {caps_per_image} captions per image "
            f"= {n_img * caps_per_image} captions; fix caps_per_image or the caption order/count"
        )
    if not np.issubdtype(sim.dtype, np.floating):
        raise UserError(f"{name} must be a float matrix, got dtype {sim.dtype}")
    return sim


def _check_ties(ties: str) -> None:
    if ties not in TIE_RULES:
        raise UserError(f"unknown tie rule {ties!r}; use one of {', '.join(TIE_RULES)}")


def tie_rule_of(evaluate_settings: dict) -> str:
    """The tie rule an `evaluate` params section asks for (`tie_rule`; pessimistic when absent), checked."""
    rule = evaluate_settings.get("tie_rule") or DEFAULT_TIE_RULE
    if rule not in TIE_RULES:
        raise UserError(f"params.yaml: evaluate.tie_rule is {rule!r}; use one of {', '.join(TIE_RULES)}")
    return rule


def argsort_positions(scores: np.ndarray) -> np.ndarray:
    """0-based position of every item in ``np.argsort(row)[::-1]`` of each row of a 2-D block (the peers' order)."""
    order = np.argsort(scores, axis=1)[:, ::-1]
    pos = np.empty(order.shape, dtype=np.int64)
    np.put_along_axis(pos, order, np.arange(order.shape[1], dtype=np.int64)[None, :], axis=1)
    return pos


def _argsort_ranks(sim: np.ndarray, caps_per_image: int, want_i2t: bool, want_t2i: bool):
    """Ranks under the `argsort` rule: rows sorted for i2t, contiguous copies of columns for t2i, in chunks."""
    n_img, n_cap = sim.shape
    if np.isnan(sim).any():
        raise UserError("sim contains NaN similarity scores; fix the model/feature export")
    step = max(1, _CHUNK_ELEMS // 8 // max(1, max(n_img, n_cap)))  # the int64 order and position blocks
    i2t = t2i = None
    if want_i2t:
        i2t = np.zeros(n_img, dtype=np.int64)
        for r0 in range(0, n_img, step):
            rows = np.arange(r0, min(n_img, r0 + step))
            pos = argsort_positions(sim[rows])
            gt = rows[:, None] * caps_per_image + np.arange(caps_per_image)[None, :]
            i2t[rows] = np.take_along_axis(pos, gt, axis=1).min(axis=1) + 1
    if want_t2i:
        t2i = np.zeros(n_cap, dtype=np.int64)
        for c0 in range(0, n_cap, step):
            cols = np.arange(c0, min(n_cap, c0 + step))
            pos = argsort_positions(np.ascontiguousarray(sim[:, cols].T))
            t2i[cols] = pos[np.arange(len(cols)), cols // caps_per_image] + 1
    return i2t, t2i


def _ranks(sim: np.ndarray, caps_per_image: int, ties: str, want_i2t: bool, want_t2i: bool):
    """Chunked rank computation; returns (i2t ranks or None, t2i ranks or None), int64, 1-based."""
    if ties == "argsort":
        return _argsort_ranks(sim, caps_per_image, want_i2t, want_t2i)
    n_img, n_cap = sim.shape
    img = np.arange(n_img)
    gt_cols = img[:, None] * caps_per_image + np.arange(caps_per_image)[None, :]  # [n_img, cpi]
    gt_block = sim[img[:, None], gt_cols]  # [n_img, cpi], same dtype as sim
    if np.isnan(gt_block).any():
        raise UserError("sim contains NaN similarity scores; fix the model/feature export")
    gt_i2t = gt_block.max(axis=1)  # best GT caption score per image
    gt_t2i = gt_block.reshape(-1)  # score of each caption with its own image (caption order)
    cmp = np.greater_equal if ties == "pessimistic" else np.greater

    i2t = np.zeros(n_img, dtype=np.int64) if want_i2t else None
    t2i = np.zeros(n_cap, dtype=np.int64) if want_t2i else None
    step = max(1, _CHUNK_ELEMS // max(1, n_cap))
    for r0 in range(0, n_img, step):
        r1 = min(n_img, r0 + step)
        block = sim[r0:r1]
        if np.isnan(block).any():
            raise UserError("sim contains NaN similarity scores; fix the model/feature export")
        if want_i2t:
            i2t[r0:r1] = np.count_nonzero(cmp(block, gt_i2t[r0:r1, None]), axis=1)
        if want_t2i:
            t2i += np.count_nonzero(cmp(block, gt_t2i[None, :]), axis=0)

    if want_i2t:
        if ties == "pessimistic":
            # The ">=" count includes the image's GT captions at the max score; drop them, +1.
            i2t += 1 - np.count_nonzero(gt_block == gt_i2t[:, None], axis=1)
        else:
            i2t += 1  # no GT caption is strictly above the best GT score
    if want_t2i and ties == "optimistic":
        t2i += 1  # pessimistic ">=" already counted the GT image itself, i.e. the "+1"
    return i2t, t2i


def query_ranks(sim, caps_per_image: int = 5, ties: str = "pessimistic") -> tuple[np.ndarray, np.ndarray]:
    """Per-query 1-based ranks: ``(i2t_ranks [n_images], t2i_ranks [n_captions])`` (int64).

    ``t2i_ranks`` is in caption (column) order, so the captions of image ``i`` are entries
    ``caps_per_image*i .. caps_per_image*(i+1)-1``. See the module docstring for the tie rule.
    """
    _check_ties(ties)
    sim = _check_sim(sim, caps_per_image)
    return _ranks(sim, caps_per_image, ties, True, True)


def _direction_metrics(ranks: np.ndarray) -> dict:
    ranks = np.asarray(ranks)
    out = {f"R@{k}": round(float(100.0 * np.mean(ranks <= k)), _DECIMALS) for k in KS}
    out["medr"] = round(float(np.floor(np.median(ranks))), _DECIMALS)
    out["meanr"] = round(float(np.mean(ranks)), _DECIMALS)
    return out


def metrics_from_ranks(i2t_ranks, t2i_ranks) -> dict:
    """Metric dict ``{"i2t": {R@1, R@5, R@10, medr, meanr}, "t2i": {...}, "rsum": float}``.

    Plain Python floats rounded to 4 decimals; ``rsum`` is computed from unrounded recalls.
    """
    i2t_ranks = np.asarray(i2t_ranks)
    t2i_ranks = np.asarray(t2i_ranks)
    if i2t_ranks.ndim != 1 or t2i_ranks.ndim != 1 or i2t_ranks.size == 0 or t2i_ranks.size == 0:
        raise UserError("i2t_ranks and t2i_ranks must be non-empty 1-D rank arrays")
    rsum = sum(100.0 * np.mean(r <= k) for r in (i2t_ranks, t2i_ranks) for k in KS)
    return {
        "i2t": _direction_metrics(i2t_ranks),
        "t2i": _direction_metrics(t2i_ranks),
        "rsum": round(float(rsum), _DECIMALS),
    }


def rank_metrics(sim, caps_per_image: int = 5, ties: str = "pessimistic") -> dict:
    """Recall@1/5/10, medr, meanr for both directions plus rSum over the whole matrix."""
    return metrics_from_ranks(*query_ranks(sim, caps_per_image, ties))


def rank_metrics_qb(sim_i2t, sim_t2i, caps_per_image: int = 5, ties: str = "pessimistic") -> dict:
    """Metrics when each direction has its own (e.g. query-bank normalised) matrix.

    Both matrices are ``[n_images, n_captions]``: i2t ranks come from ``sim_i2t`` (row-wise),
    t2i ranks from ``sim_t2i`` (column-wise). See :func:`fga.evaluate.hubness.qb_norm_both`.
    """
    _check_ties(ties)
    sim_i2t = _check_sim(sim_i2t, caps_per_image, "sim_i2t")
    sim_t2i = _check_sim(sim_t2i, caps_per_image, "sim_t2i")
    if sim_i2t.shape != sim_t2i.shape:
        raise UserError(f"sim_i2t {sim_i2t.shape} and sim_t2i {sim_t2i.shape} must have the same shape")
    i2t, _ = _ranks(sim_i2t, caps_per_image, ties, True, False)
    _, t2i = _ranks(sim_t2i, caps_per_image, ties, False, True)
    return metrics_from_ranks(i2t, t2i)


def mean_metrics(dicts: Sequence[dict]) -> dict:
    """Element-wise mean of metric dicts (as returned by :func:`metrics_from_ranks`)."""
    if not dicts:
        raise UserError("no metric dicts to average")
    out = {
        d: {m: round(float(np.mean([x[d][m] for x in dicts])), _DECIMALS) for m in METRIC_KEYS}
        for d in ("i2t", "t2i")
    }
    out["rsum"] = round(float(np.mean([x["rsum"] for x in dicts])), _DECIMALS)
    return out


def fold_metrics(sim, n_folds: int, caps_per_image: int = 5, ties: str = "pessimistic") -> dict:
    """Mean of every metric over ``n_folds`` folds of consecutive images (and their captions).

    Each fold is evaluated on its own sub-matrix (its images vs its captions only). medr and
    meanr are averaged too, as in the standard COCO 1K protocol. Per-fold dicts are under
    ``"folds"``.
    """
    _check_ties(ties)
    sim = _check_sim(sim, caps_per_image)
    n_img = sim.shape[0]
    if not isinstance(n_folds, (int, np.integer)) or n_folds < 1:
        raise UserError(f"n_folds must be a positive integer, got {n_folds!r}")
    if n_img % n_folds:
        raise UserError(
            f"{n_img} images cannot be split into {n_folds} equal folds; "
            f"use an image count divisible by {n_folds} or another protocol"
        )
    size = n_img // n_folds
    folds = []
    for f in range(n_folds):
        sub = sim[f * size:(f + 1) * size, f * size * caps_per_image:(f + 1) * size * caps_per_image]
        folds.append(metrics_from_ranks(*_ranks(sub, caps_per_image, ties, True, True)))
    out = mean_metrics(folds)
    out["folds"] = folds
    return out


def evaluate_protocol(sim, protocol: str, caps_per_image: int = 5, ties: str = "pessimistic") -> dict:
    """Metrics for a named protocol, ready for ``metrics.json``.

    * ``"full"``: the whole matrix (Flickr30K 1K test, or any split evaluated as one gallery).
    * ``"coco5k"``: the whole 5,000-image COCO test matrix (requires exactly 5,000 images).
    * ``"coco1k"``: mean over 5 folds of 1,000 consecutive images and their 5,000 captions
      (requires exactly 5,000 images); per-fold dicts under ``"folds"``.
    """
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown evaluation protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    _check_ties(ties)
    sim = _check_sim(sim, caps_per_image)
    n_img = sim.shape[0]
    if protocol in ("coco5k", "coco1k") and n_img != COCO_TEST_IMAGES:
        raise UserError(
            f"protocol {protocol!r} needs the {COCO_TEST_IMAGES}-image COCO test split, got {n_img} "
            f"images; use protocol 'full' for other splits"
        )
    if protocol == "coco1k":
        out = fold_metrics(sim, n_img // COCO_FOLD_IMAGES, caps_per_image, ties)
    else:
        out = metrics_from_ranks(*_ranks(sim, caps_per_image, ties, True, True))
    return {"protocol": protocol, "n_images": int(n_img), "n_captions": int(sim.shape[1]),
            "ties": ties, **out}
