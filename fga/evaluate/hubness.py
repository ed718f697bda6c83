"""Hubness-corrected inference by query-bank normalisation (QB-Norm, Bogolin et al., CVPR 2022).

Setting: a test similarity ``sim_q [n_query, n_gallery]`` and a *query bank*
``sim_bank [n_bank, n_gallery]``: the similarities of TRAINING-split queries of the same
modality to the same test gallery. A "hub" is a gallery item that is close to many queries;
it is retrieved for queries it does not match. The bank measures how hub-like each gallery
item is, and the scores are renormalised per gallery column.

Inverted Softmax (IS, ``mode="is"``)::

    IS(q, g) = exp(beta * s(q, g)) / sum_{b in bank} exp(beta * s(b, g))

Dynamic Inverted Softmax (DIS, ``mode="dis"``, the QB-Norm default): the activation set is
``A_k = {g : g is in the top-k gallery items of at least one bank query}`` (the candidate
hubs seen from the bank). For each test query ``q``, if its top-1 gallery item under the raw
scores, ``argmax_g s(q, g)``, lies in ``A_k``, the whole row of ``q`` is replaced by the IS
scores; otherwise the row keeps its raw similarities. Gating is per query (not per gallery
item), so no row mixes raw and normalised scores and ranking within each row stays
meaningful. With ``k >= n_gallery`` every gallery item is in ``A_k`` and DIS equals IS.
Defaults follow the paper: ``beta = 20``, ``k = 1``.

Numerics: the returned normalised rows are ``log IS = beta * s(q, g) - logsumexp_b(beta *
s(b, g))``, computed with a max-shifted log-sum-exp in float64; ``log`` is monotone, so every
within-row ranking equals that of IS itself, without the overflow of ``exp(beta * s)``.
Outputs are float32 (float16 would create spurious ties).

Leakage: the bank must never contain test queries (that would use the test set to tune the
test scores). Build it from training-split captions/images against the test gallery;
:func:`qb_norm` rejects a bank that shares memory with the test queries.
"""
from __future__ import annotations

import numpy as np

from fga.errors import UserError
from fga.evaluate.recall import rank_metrics_qb  # noqa: F401  (re-exported convenience)

MODES = ("dis", "is")
_CHUNK_ELEMS = 4 * 1024 * 1024  # elements per processed chunk (~32 MB of float64 temporaries)


def _check_matrix(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise UserError(f"{name} must be a non-empty 2-D matrix, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise UserError(f"{name} must be a float matrix, got dtype {x.dtype}")
    return x


def _row_chunks(n_rows: int, n_cols: int):
    step = max(1, _CHUNK_ELEMS // n_cols)
    for r0 in range(0, n_rows, step):
        yield r0, min(n_rows, r0 + step)


def _bank_logsumexp(sim_bank: np.ndarray, beta: float) -> np.ndarray:
    """``logsumexp_b(beta * sim_bank[b, g])`` per gallery column, float64, chunked over the bank."""
    n_b, n_g = sim_bank.shape
    col_max = np.full(n_g, -np.inf)
    for r0, r1 in _row_chunks(n_b, n_g):
        block = sim_bank[r0:r1]
        if np.isnan(block).any():
            raise UserError("sim_bank contains NaN scores; fix the query-bank similarity export")
        np.maximum(col_max, block.max(axis=0).astype(np.float64), out=col_max)
    if not np.all(np.isfinite(col_max)):
        raise UserError("sim_bank contains infinite scores; fix the query-bank similarity export")
    shift = beta * col_max
    acc = np.zeros(n_g)
    for r0, r1 in _row_chunks(n_b, n_g):
        acc += np.exp(beta * sim_bank[r0:r1].astype(np.float64) - shift).sum(axis=0)
    return shift + np.log(acc)  # acc >= 1 (the max term), so the log is finite


def _activation_set(sim_bank: np.ndarray, k: int) -> np.ndarray:
    """Boolean ``[n_gallery]``: gallery items in the top-k of at least one bank query."""
    n_b, n_g = sim_bank.shape
    active = np.zeros(n_g, dtype=bool)
    if k >= n_g:
        active[:] = True
        return active
    for r0, r1 in _row_chunks(n_b, n_g):
        block = sim_bank[r0:r1]
        if k == 1:
            top = block.argmax(axis=1)
        else:
            top = np.argpartition(block, n_g - k, axis=1)[:, n_g - k:]
        active[top.ravel()] = True
    return active


def qb_norm(sim_q, sim_bank, beta: float = 20.0, k: int = 1, mode: str = "dis") -> np.ndarray:
    """Query-bank normalised scores, same shape as ``sim_q`` (float32).

    ``sim_q [n_query, n_gallery]``: test queries vs gallery; ``sim_bank [n_bank, n_gallery]``:
    TRAIN queries (same modality) vs the same gallery, never the test queries. ``mode="is"``:
    every row becomes log-IS scores; ``mode="dis"``: only rows whose raw top-1 gallery item is
    in the bank's top-``k`` activation set (ties in the raw argmax: first index). See the module
    docstring for the definitions.
    """
    if mode not in MODES:
        raise UserError(f"unknown QB-Norm mode {mode!r}; use one of {', '.join(MODES)}")
    if not (isinstance(beta, (int, float, np.integer, np.floating)) and np.isfinite(beta) and beta > 0):
        raise UserError(f"QB-Norm beta must be a positive finite number, got {beta!r}")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise UserError(f"QB-Norm k must be a positive integer, got {k!r}")
    sim_q = _check_matrix(sim_q, "sim_q")
    sim_bank = _check_matrix(sim_bank, "sim_bank")
    if sim_q.shape[1] != sim_bank.shape[1]:
        raise UserError(
            f"sim_q has {sim_q.shape[1]} gallery items but sim_bank has {sim_bank.shape[1]}; "
            "score the query bank against the same test gallery"
        )
    if np.shares_memory(sim_q, sim_bank):
        raise UserError("the QB-Norm query bank shares memory with the test queries; build it from training-split queries")
    beta = float(beta)
    lse = _bank_logsumexp(sim_bank, beta)
    active = _activation_set(sim_bank, int(k)) if mode == "dis" else None

    n_q, n_g = sim_q.shape
    out = np.empty((n_q, n_g), dtype=np.float32)
    for r0, r1 in _row_chunks(n_q, n_g):
        block = sim_q[r0:r1]
        if np.isnan(block).any():
            raise UserError("sim_q contains NaN scores; fix the model/feature export")
        normed = beta * block.astype(np.float64) - lse[None, :]
        if active is None:
            out[r0:r1] = normed
        else:
            gate = active[block.argmax(axis=1)]
            out[r0:r1] = np.where(gate[:, None], normed, block.astype(np.float64))
    return out


def qb_norm_both(sim, bank_t2i, bank_i2t, beta: float = 20.0, k: int = 1,
                 mode: str = "dis") -> tuple[np.ndarray, np.ndarray]:
    """QB-Norm for both retrieval directions of a test matrix ``sim [n_img, n_cap]``.

    * ``bank_i2t [n_bank_imgs, n_cap]``: TRAIN images (queries) vs the test captions.
    * ``bank_t2i [n_bank_caps, n_img]``: TRAIN captions (queries) vs the test images.

    Returns ``(sim_for_i2t, sim_for_t2i)``, both ``[n_img, n_cap]`` float32: the first
    normalised per caption column for image queries, the second (a transposed view)
    normalised per image for caption queries. Score them with
    ``rank_metrics_qb(sim_for_i2t, sim_for_t2i, caps_per_image)``.
    """
    sim = _check_matrix(sim, "sim")
    bank_t2i = _check_matrix(bank_t2i, "bank_t2i")
    bank_i2t = _check_matrix(bank_i2t, "bank_i2t")
    n_img, n_cap = sim.shape
    if bank_t2i.shape[1] != n_img:
        raise UserError(f"bank_t2i must be [n_bank_captions, {n_img}] (train captions vs test images), got {bank_t2i.shape}")
    if bank_i2t.shape[1] != n_cap:
        raise UserError(f"bank_i2t must be [n_bank_images, {n_cap}] (train images vs test captions), got {bank_i2t.shape}")
    sim_i2t = qb_norm(sim, bank_i2t, beta=beta, k=k, mode=mode)
    sim_t2i = qb_norm(sim.T, bank_t2i, beta=beta, k=k, mode=mode).T
    return sim_i2t, sim_t2i
