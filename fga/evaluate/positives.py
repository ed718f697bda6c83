"""Recall and mAP@R against exhaustive positives: every test image a caption is true of, not only its own.

The standard protocol gives each caption one ground-truth image, so a model that ranks another image the
caption is equally true of first is counted wrong (the false-negative problem ECCV Caption and CxC documented
for COCO). A dataset whose scene graphs are known (the embedded synthetic one: fga.data.synthetic) can say
which images every caption is true of; with that ``positives`` list (caption j -> indices of the split's
images it is true of, its own image included) this module reports, on the whole ``[n_images, n_captions]``
matrix:

* recall where any true item counts: i2t ranks an image's best-placed caption among those true of it,
  t2i a caption's best-placed true image (R@1/5/10, medr, meanr, rSum, as fga.evaluate.recall);
* mAP@R (ECCV Caption, Chun et al. 2022): per query with R positives, the mean over the top R ranks of
  precision@i at each rank i that holds a positive; 100 = all R positives ranked first.

Ties follow the same named rules as fga.evaluate.recall: `pessimistic` ranks negatives that tie a positive
above it, `optimistic` below it, `argsort` keeps the order of ``np.argsort(scores)[::-1]``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fga.errors import UserError
from fga.evaluate.recall import _check_ties, argsort_positions, metrics_from_ranks

_ROWS_PER_CHUNK = 1024
_DECIMALS = 4


def positives_mask(positives: list[list[int]], n_images: int) -> np.ndarray:
    """``[n_images, n_captions]`` bool: True where caption j is true of image i."""
    mask = np.zeros((n_images, len(positives)), dtype=bool)
    for j, images in enumerate(positives):
        if not images or min(images) < 0 or max(images) >= n_images:
            raise UserError(f"positives of caption {j} ({images!r}) must name 1+ of the {n_images} images")
        mask[images, j] = True
    return mask


def _order(block: np.ndarray, mask: np.ndarray, ties: str) -> np.ndarray:
    """Each row's items best first under the tie rule (pessimistic: tied negatives first, optimistic: last)."""
    if ties == "argsort":
        return np.argsort(block, axis=1)[:, ::-1]
    tiebreak = mask if ties == "pessimistic" else ~mask
    return np.lexsort((tiebreak, -block.astype(np.float64)), axis=1)


def _row_ranks(block: np.ndarray, mask: np.ndarray, ties: str) -> np.ndarray:
    """1-based rank of each row's best-placed positive."""
    if ties == "argsort":
        return np.where(mask, argsort_positions(block), np.iinfo(np.int64).max).min(axis=1) + 1
    best = np.where(mask, block, -np.inf).max(axis=1)
    beats = np.greater_equal if ties == "pessimistic" else np.greater
    return 1 + np.count_nonzero(beats(block, best[:, None]) & ~mask, axis=1)


def _row_map_at_r(block: np.ndarray, mask: np.ndarray, ties: str) -> np.ndarray:
    """mAP@R of each row (0..1): R = its number of positives."""
    hits = np.take_along_axis(mask, _order(block, mask, ties), axis=1)
    r = mask.sum(axis=1)
    precision = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    within_r = np.arange(hits.shape[1])[None, :] < r[:, None]
    return (precision * hits * within_r).sum(axis=1) / r


def _per_row(scores: np.ndarray, mask: np.ndarray, ties: str) -> tuple[np.ndarray, np.ndarray]:
    """(ranks, mAP@R) of every row, in chunks of rows."""
    ranks, maps = [], []
    for r0 in range(0, scores.shape[0], _ROWS_PER_CHUNK):
        block = np.ascontiguousarray(scores[r0:r0 + _ROWS_PER_CHUNK])
        part = mask[r0:r0 + _ROWS_PER_CHUNK]
        ranks.append(_row_ranks(block, part, ties))
        maps.append(_row_map_at_r(block, part, ties))
    return np.concatenate(ranks), np.concatenate(maps)


def positives_metrics(sim: np.ndarray, positives: list[list[int]], ties: str = "pessimistic") -> dict[str, Any]:
    """Recall (any true item counts) and mAP@R both ways over the exhaustive positives, plus how many there are."""
    _check_ties(ties)
    sim = np.asarray(sim)
    if sim.ndim != 2 or sim.shape[1] != len(positives):
        raise UserError(f"positives name {len(positives)} captions but the matrix has shape {sim.shape}")
    if np.isnan(sim).any():
        raise UserError("sim contains NaN similarity scores; fix the model/feature export")
    mask = positives_mask(positives, sim.shape[0])
    i2t, i2t_map = _per_row(sim, mask, ties)
    t2i, t2i_map = _per_row(sim.T, mask.T, ties)
    out = metrics_from_ranks(i2t, t2i)
    out["i2t"]["mAP@R"] = round(float(100.0 * i2t_map.mean()), _DECIMALS)
    out["t2i"]["mAP@R"] = round(float(100.0 * t2i_map.mean()), _DECIMALS)
    per_caption = mask.sum(axis=0)
    out.update(ties=ties, captions_with_several_images=int((per_caption > 1).sum()),
               images_per_caption=round(float(per_caption.mean()), _DECIMALS),
               captions_per_image=round(float(mask.sum(axis=1).mean()), _DECIMALS))
    return out


def split_positives(dataset_json: Path, split: str, image_ids: list[int]) -> list[list[int]] | None:
    """The exhaustive positives of a split's captions from its dataset.json scene graphs; None for a dataset
    without them (only the embedded synthetic dataset has them)."""
    from fga.data import split_images
    from fga.data.synthetic import caption_positives, has_scene_graphs
    from fga.io import read_json

    entries = split_images(read_json(dataset_json, "dataset.json"), split)
    if not has_scene_graphs(entries):
        return None
    if [int(e["id"]) for e in entries] != list(image_ids):
        raise UserError(f"{dataset_json}: the {split} images differ from the evaluated ones; "
                        "re-run `fga features extract`")
    return caption_positives(entries)


def mlflow_positives(metrics: dict[str, Any]) -> dict[str, float]:
    """``positives/<i2t|t2i>_<R1|R5|R10|medr|meanr|mAPR>`` and ``positives/rsum`` of a metrics.json (none
    without a `positives` block)."""
    block = metrics.get("positives")
    if not block:
        return {}
    flat = {f"positives/{d}_{k.replace('@', '')}": float(v) for d in ("i2t", "t2i") for k, v in block[d].items()}
    flat["positives/rsum"] = float(block["rsum"])
    flat["positives/captions_with_several_images"] = float(block["captions_with_several_images"])
    return flat
