"""Robustness breakdowns: recall per clutter bin (object count per image) and distractor curves.

Per-bin metrics use the bin's queries against the FULL gallery: an image query of the bin is
ranked over all captions, and a caption query whose image is in the bin is ranked over all
images. Bins therefore differ only in which queries they hold, never in gallery size, and are
directly comparable with each other and with the overall numbers. Ranks are computed once on
the whole matrix (:func:`fga.evaluate.recall.query_ranks`) and then selected per bin; a bin's
bootstrap CI resamples that bin's images with their captions (:func:`fga.evaluate.stats.bootstrap_ci`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from fga.errors import UserError
from fga.evaluate.recall import metrics_from_ranks, query_ranks
from fga.evaluate.stats import bootstrap_ci

CLUTTER_QUANTILE = 2.0 / 3.0


@dataclass(frozen=True)
class Bin:
    """Inclusive integer range ``lo <= count <= hi`` of objects per image; ``hi=None`` = open."""

    label: str
    lo: int
    hi: int | None

    def contains(self, count: int) -> bool:
        return count >= self.lo and (self.hi is None or count <= self.hi)

    def mask(self, counts: np.ndarray) -> np.ndarray:
        m = counts >= self.lo
        if self.hi is not None:
            m &= counts <= self.hi
        return m


def _label(lo: int, hi: int | None) -> str:
    if hi is None:
        return f"{lo}+"
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _count_values(counts: Mapping[int, int]) -> np.ndarray:
    if not isinstance(counts, Mapping) or not counts:
        raise UserError("counts must be a non-empty mapping image_id -> number of objects")
    vals = list(counts.values())
    bad = [v for v in vals if not _is_int(v) or v < 0]
    if bad:
        raise UserError(f"object counts must be non-negative integers, got e.g. {bad[0]!r}; fix the counts file")
    return np.asarray(vals, dtype=np.int64)


def _bins_from_edges(spec: Sequence) -> list[Bin]:
    bins: list[Bin] = []
    for i, edge in enumerate(spec):
        if not isinstance(edge, (list, tuple)) or len(edge) != 2:
            raise UserError(f"clutter bin #{i} is {edge!r}; write each bin as [lo, hi] (hi null for open-ended)")
        lo, hi = edge
        if not _is_int(lo) or lo < 0 or (hi is not None and (not _is_int(hi) or hi < lo)):
            raise UserError(f"clutter bin #{i} {edge!r} needs integers 0 <= lo <= hi (or hi null)")
        if bins:
            prev = bins[-1]
            if prev.hi is None or lo <= prev.hi:
                raise UserError(
                    f"clutter bin #{i} {edge!r} overlaps or precedes the previous bin; "
                    "list bins in increasing, non-overlapping order, open-ended last"
                )
        bins.append(Bin(_label(int(lo), None if hi is None else int(hi)), int(lo), None if hi is None else int(hi)))
    if not bins:
        raise UserError("clutter bin spec is an empty list; give at least one [lo, hi] bin")
    return bins


def _equal_count_bins(values: np.ndarray, k: Any) -> list[Bin]:
    if not _is_int(k) or k < 1:
        raise UserError(f"equal_count must be a positive integer number of bins, got {k!r}")
    distinct, freq = np.unique(values, return_counts=True)
    n_distinct = distinct.size
    if n_distinct < k:
        raise UserError(
            f"equal_count: {k} bins requested but only {n_distinct} distinct object counts; "
            f"use equal_count <= {n_distinct} or explicit edges"
        )
    cum = np.cumsum(freq)  # images with count <= distinct[d]
    n = values.size
    cuts: list[int] = []  # index d of the last distinct value in each bin but the last
    prev = -1
    for b in range(1, k):
        lo_d, hi_d = prev + 1, n_distinct - 1 - (k - b)  # leave >= 1 distinct value per later bin
        cand = np.arange(lo_d, hi_d + 1)
        d = int(cand[np.argmin(np.abs(cum[cand] - b * n / k))])
        cuts.append(d)
        prev = d
    bins = []
    lo = int(distinct[0])
    for d in cuts:
        hi = int(distinct[d])
        bins.append(Bin(_label(lo, hi), lo, hi))
        lo = hi + 1
    bins.append(Bin(_label(lo, None), lo, None))
    return bins


def make_bins(counts: Mapping[int, int], spec) -> list[Bin]:
    """Clutter bins from a spec.

    * ``spec`` = list of inclusive ``[lo, hi]`` edges in increasing order, ``hi`` may be
      ``None`` (open-ended, last bin only), e.g. COCO ``[[1, 3], [4, 7], [8, 15], [16, None]]``
      -> labels ``"1-3", "4-7", "8-15", "16+"``. Images outside every bin (e.g. 0 objects) are
      simply not in any bin.
    * ``spec = {"equal_count": k}``: ``k`` bins with about equal numbers of images. Edges fall
      on integer counts (all images with the same count share a bin, so exact balance is not
      always possible); no bin is empty; bins are contiguous from the minimum count and the last
      is open-ended.
    """
    values = _count_values(counts)
    if isinstance(spec, Mapping):
        if set(spec) != {"equal_count"}:
            raise UserError(f"clutter bin spec {dict(spec)!r} is not understood; use {{'equal_count': k}} or a list of [lo, hi]")
        return _equal_count_bins(values, spec["equal_count"])
    if isinstance(spec, (list, tuple)):
        return _bins_from_edges(spec)
    raise UserError(f"clutter bin spec {spec!r} is not understood; use {{'equal_count': k}} or a list of [lo, hi]")


def cluttered_bin(counts: Mapping[int, int], quantile: float = CLUTTER_QUANTILE) -> Bin:
    """The "cluttered" subset as a bin: images with count >= the ``quantile`` (default 2/3,
    linear interpolation) of all counts, i.e. the top tertile of clutter."""
    if not 0.0 <= quantile <= 1.0:
        raise UserError(f"clutter quantile must be in [0, 1], got {quantile!r}")
    values = _count_values(counts)
    lo = int(math.ceil(float(np.quantile(values, quantile))))  # counts are integers
    return Bin("cluttered", lo, None)


def cluttered_subset(counts: Mapping[int, int], quantile: float = CLUTTER_QUANTILE) -> list[int]:
    """Image ids (sorted) of the cluttered subset, see :func:`cluttered_bin`."""
    b = cluttered_bin(counts, quantile)
    return sorted(i for i, c in counts.items() if b.contains(c))


def recall_block(i2t_ranks, t2i_ranks, caps_per_image: int = 5, bootstrap: Mapping[str, Any] | None = None) -> dict:
    """Recalls of some queries' ranks, plus their bootstrap ``ci`` when ``bootstrap`` holds bootstrap_ci's options."""
    out = metrics_from_ranks(i2t_ranks, t2i_ranks)
    if bootstrap is not None:
        out["ci"] = bootstrap_ci(i2t_ranks, t2i_ranks, caps_per_image, **bootstrap)
    return out


def per_bin_metrics(sim, image_ids: Sequence[int], counts: Mapping[int, int], bins: Sequence[Bin],
                    caps_per_image: int = 5, ties: str = "pessimistic", ranks=None,
                    bootstrap: Mapping[str, Any] | None = None) -> dict:
    """Metrics of each bin's queries against the full gallery.

    ``image_ids`` lists the image of each matrix row. ``ranks`` may pass precomputed
    ``query_ranks(sim, caps_per_image, ties)`` to skip the matrix pass (``sim`` is then only
    used for its shape). ``bootstrap`` (``n_resamples``, ``confidence``, ``seed``) adds each bin's
    CI (:func:`recall_block`). Returns ``{label: {"lo", "hi", "n_images", "n_queries_i2t",
    "n_queries_t2i", "i2t", "t2i", "rsum"[, "ci"]}}``; an empty bin has ``None`` metrics.
    """
    n_img = int(np.shape(sim)[0])
    ids = list(image_ids)
    if len(ids) != n_img:
        raise UserError(f"{len(ids)} image_ids for a similarity matrix with {n_img} rows; pass one id per row")
    missing = [i for i in ids if i not in counts]
    if missing:
        raise UserError(
            f"{len(missing)} images have no object count (e.g. image id {missing[0]!r}); "
            "add them to the counts file"
        )
    labels = [b.label for b in bins]
    if len(set(labels)) != len(labels):
        raise UserError(f"clutter bin labels must be unique, got {labels}")
    _count_values(counts)
    if ranks is None:
        i2t, t2i = query_ranks(sim, caps_per_image, ties)
    else:
        i2t, t2i = (np.asarray(r) for r in ranks)
        if i2t.shape != (n_img,) or t2i.shape != (n_img * caps_per_image,):
            raise UserError("precomputed ranks do not match sim's shape; recompute them with query_ranks(sim)")
    cvec = np.asarray([counts[i] for i in ids], dtype=np.int64)
    out: dict = {}
    for b in bins:
        m = b.mask(cvec)
        n = int(m.sum())
        row = {"lo": b.lo, "hi": b.hi, "n_images": n, "n_queries_i2t": n,
               "n_queries_t2i": n * caps_per_image}
        if n:
            row.update(recall_block(i2t[m], t2i[np.repeat(m, caps_per_image)], caps_per_image, bootstrap))
        else:
            row.update({"i2t": None, "t2i": None, "rsum": None, **({"ci": None} if bootstrap is not None else {})})
        out[b.label] = row
    return out


def distractor_curve(results: Mapping[int, Mapping]) -> list[dict]:
    """Turn ``{n_extra: metrics}`` into plot rows sorted by ``n_extra``.

    Each row is ``{"n_extra": n, "rsum": ..., "i2t_R@1": ..., "t2i_medr": ..., ...}``: numeric
    top-level values are kept, per-direction dicts are flattened as ``<direction>_<metric>``,
    everything else (protocol names, per-fold lists, bootstrap ``ci`` blocks) is dropped.
    """
    rows = []
    for n_extra in sorted(results, key=int):
        metrics = results[n_extra]
        row: dict = {"n_extra": int(n_extra)}
        for key, val in metrics.items():
            if key == "ci":  # intervals, not metrics: its confidence / n_resamples would pass as numbers
                continue
            if isinstance(val, Mapping):
                for sub, v in val.items():
                    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
                        row[f"{key}_{sub}"] = float(v)
            elif isinstance(val, (int, float, np.integer, np.floating)) and not isinstance(val, bool):
                row[key] = float(val)
        rows.append(row)
    return rows
