"""GRM §1.5: token-level, bidirectional max-pooled cosine similarity, batched over images x captions.

For an image token set X = {x_i} (valid i only) and a caption token set Y = {y_j}, with
s_ij = cos(x_i, y_j):

    S_t2i = sum_j w_j * max_i s_ij / sum_j w_j        (each word finds its best visual token)
    S_i2t = sum_i w_i * max_j s_ij / sum_i w_i        (each visual token finds its best word)
    S     = combine(S_t2i, S_i2t),  combine in {"mean": (a+b)/2, "sum": a+b, "t2i": a, "i2t": b}

With all pooling weights w = 1 these are the plain means of docs/grm.md §1.5. The optional weights
carry the adapters' saliency scores into the pooling (GRM model option `saliency_pooling`);
padded tokens always get weight 0 and are excluded from every max.

One function serves the three levels: ori (T, V), key (T_hat, V_hat) and unc (T_hat, U).
The [n_img, n_txt, L_x, L_y] score tensor is built from one GEMM per block; blocks are sized
so that no block exceeds `chunk_elems` scores, which bounds memory for any n_img x n_txt.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

COMBINES = ("mean", "sum", "t2i", "i2t")
_EPS = 1e-8


def _check_combine(combine: str) -> None:
    if combine not in COMBINES:
        raise ValueError(f"sim_combine must be one of {COMBINES}, got {combine!r}")


def _combine(t2i: torch.Tensor | None, i2t: torch.Tensor | None, combine: str) -> torch.Tensor:
    if combine == "t2i":
        return t2i
    if combine == "i2t":
        return i2t
    total = t2i + i2t
    return total / 2 if combine == "mean" else total


def _max(s: torch.Tensor, dim: int) -> torch.Tensor:
    """Max over `dim`; under autograd via max(dim), whose indices make the backward a cheap scatter (amax's is
    not), else amax (no index tensor to write). Both give the same values."""
    return s.max(dim=dim).values if s.requires_grad else s.amax(dim=dim)


def _exclude_padding(s: torch.Tensor, x_mask: torch.Tensor, y_mask: torch.Tensor) -> torch.Tensor:
    """s [ci, Lx, ct, Ly] with -inf at every padded token's scores, in place; only padded entries are written.

    Every max then sees real tokens only: a padded row or column is all -inf and clamps to -1 below, where
    its pooling weight 0 removes it (bias-adding the masks would cost two passes over the whole tensor).
    """
    ci, lx, ct, ly = s.shape
    rows = (~x_mask).reshape(-1).nonzero().squeeze(1)  # padded (image, token) rows of [ci * Lx, ct * Ly]
    cols = (~y_mask).reshape(-1).nonzero().squeeze(1)
    flat = s.view(ci * lx, ct * ly)
    if rows.numel():
        flat.index_fill_(0, rows, float("-inf"))
    if cols.numel():
        flat.index_fill_(1, cols, float("-inf"))
    return s


def _block(xn, x_mask, yn, y_mask, weights, combine):
    """Scores of a block: xn [ci, Lx, d], yn [ct, Ly, d] unit vectors -> one [ci, ct] per (wx, wy) pair."""
    ci, lx, d = xn.shape
    ct, ly, _ = yn.shape
    s = _exclude_padding((xn.reshape(ci * lx, d) @ yn.reshape(ct * ly, d).T).view(ci, lx, ct, ly), x_mask, y_mask)
    best_t2i = best_i2t = None
    if combine != "i2t":  # best visual token per word; an image with no valid token scores -1, not -inf
        best_t2i = _max(s, 1).clamp(min=-1.0)  # [ci, ct, Ly]
    if combine != "t2i":
        best_i2t = _max(s, 3).clamp(min=-1.0)  # [ci, Lx, ct]
    out = []
    for wx, wy in weights:
        t2i = i2t = None
        if best_t2i is not None:
            t2i = (best_t2i * wy[None]).sum(-1) / wy.sum(-1).clamp(min=_EPS)[None]
        if best_i2t is not None:
            i2t = (best_i2t * wx[:, :, None]).sum(1) / wx.sum(1).clamp(min=_EPS)[:, None]
        out.append(_combine(t2i, i2t, combine))
    return out


def token_similarity(x: torch.Tensor, x_mask: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor,
                     combine: str = "mean", x_weight: torch.Tensor | None = None,
                     y_weight: torch.Tensor | None = None, chunk_elems: int = 2 ** 24) -> torch.Tensor:
    """Image-side tokens x [Ni, Lx, d] (mask [Ni, Lx] bool) vs caption tokens y [Nt, Ly, d] -> [Ni, Nt].

    x_weight [Ni, Lx] / y_weight [Nt, Ly]: optional non-negative pooling weights of the query
    tokens in S_i2t / S_t2i (None = uniform). Cosine similarity: features are L2-normalised here.
    """
    return token_similarity_multi(x, x_mask, y, y_mask, [(x_weight, y_weight)], combine, chunk_elems)[0]


def token_similarity_multi(x: torch.Tensor, x_mask: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor,
                           weight_pairs: list[tuple[torch.Tensor | None, torch.Tensor | None]],
                           combine: str = "mean", chunk_elems: int = 2 ** 24) -> list[torch.Tensor]:
    """`token_similarity` for several (x_weight, y_weight) pairs that share one cosine score tensor.

    Cosine is invariant to a positive rescaling of tokens, so two levels whose tokens differ only
    by positive per-token factors (GRM's ori and soft-saliency key levels) need one GEMM, not two.
    """
    _check_combine(combine)
    x_mask, y_mask = x_mask.bool(), y_mask.bool()
    xn = F.normalize(x, dim=-1, eps=_EPS)
    yn = F.normalize(y, dim=-1, eps=_EPS)
    weights = [
        (x_mask.to(xn.dtype) if wx is None else wx.to(xn.dtype) * x_mask,
         y_mask.to(yn.dtype) if wy is None else wy.to(yn.dtype) * y_mask)
        for wx, wy in weight_pairs
    ]
    ni, lx = x.shape[:2]
    nt, ly = y.shape[:2]
    per_pair = max(1, lx * ly)
    ci = min(ni, max(1, chunk_elems // per_pair))
    ct = min(nt, max(1, chunk_elems // (ci * per_pair)))
    rows: list[list[torch.Tensor]] = [[] for _ in weights]
    for i0 in range(0, ni, ci):
        si = slice(i0, i0 + ci)
        cols: list[list[torch.Tensor]] = [[] for _ in weights]
        for t0 in range(0, nt, ct):
            st = slice(t0, t0 + ct)
            blocks = _block(xn[si], x_mask[si], yn[st], y_mask[st],
                            [(wx[si], wy[st]) for wx, wy in weights], combine)
            for k, b in enumerate(blocks):
                cols[k].append(b)
        for k in range(len(weights)):
            rows[k].append(torch.cat(cols[k], dim=1))
    return [torch.cat(r, dim=0) for r in rows]


def pair_token_similarity(x: torch.Tensor, y: torch.Tensor, combine: str = "mean",
                          x_weight: torch.Tensor | None = None, y_weight: torch.Tensor | None = None) -> float:
    """Reference for one pair, written plainly: x [Lx, d] and y [Ly, d] hold only valid tokens."""
    _check_combine(combine)
    x, y = x.double(), y.double()
    s = (x / x.norm(dim=1, keepdim=True).clamp(min=_EPS)) @ (y / y.norm(dim=1, keepdim=True).clamp(min=_EPS)).T
    wx = torch.ones(len(x), dtype=s.dtype) if x_weight is None else x_weight.double()
    wy = torch.ones(len(y), dtype=s.dtype) if y_weight is None else y_weight.double()
    t2i = sum(float(wy[j]) * float(s[:, j].max()) for j in range(len(y))) / max(float(wy.sum()), _EPS)
    i2t = sum(float(wx[i]) * float(s[i, :].max()) for i in range(len(x))) / max(float(wx.sum()), _EPS)
    return float(_combine(torch.tensor(t2i), torch.tensor(i2t), combine))
