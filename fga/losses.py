"""Ranking losses shared by every method, and the regularisers GRM adds on top.

Conventions: `hinge_triplet` returns the batch *sum* (the VSE++ convention every method's
training loss uses). The regularisers return one value per item, shape [B], so a caller
chooses the reduction; GRM sums them over the batch so that their lambdas weigh them on the
same per-sample scale as the summed hinge loss.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def hinge_triplet(sim: torch.Tensor, positives: torch.Tensor, margin: float, hardest: bool) -> torch.Tensor:
    """VSE++ bidirectional hinge loss on a [B, B] image-row x caption-column similarity of B pairs.

    The diagonal holds each pair's score; `positives` masks every same-image pair so captions of
    the same image are never negatives. With `hardest` only the hardest negative per query
    counts (VSE++ max violation), otherwise all violations are summed (the warm-up epoch).
    """
    diag = sim.diagonal()
    cost_caption = (margin + sim - diag[:, None]).clamp(min=0).masked_fill(positives, 0)  # image anchors
    cost_image = (margin + sim - diag[None, :]).clamp(min=0).masked_fill(positives, 0)  # caption anchors
    if hardest:
        return cost_caption.max(dim=1).values.sum() + cost_image.max(dim=0).values.sum()
    return cost_caption.sum() + cost_image.sum()


def _masked_item_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of [B, N] over its valid entries (mask [B, N] bool or None) -> [B]."""
    if mask is None:
        return x.mean(dim=1)
    m = mask.to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1)


def kl_gaussian(mu: torch.Tensor, logvar: torch.Tensor, mask: torch.Tensor | None = None,
                form: str = "full", reduction: str = "mean") -> torch.Tensor:
    """KL( N(mu, diag(exp(logvar))) || N(0, I) ) per item, over its valid regions and dimensions.

    mu, logvar: [B, K, d]; mask: [B, K] bool (valid regions) or None. Per dimension:
      form="full":     0.5 * (mu^2 + sigma^2 - log sigma^2 - 1)   (the standard VAE term)
      form="var_only": 0.5 * (sigma^2 - log sigma^2 - 1)          (only the variance is pulled to 1;
                                                                   the means are left free)
    reduction="mean" averages over regions and d, which keeps the value independent of the embedding
    size; reduction="sum" adds them up, the 0.5 * sum over K x d of docs/grm.md §1.7 (K * d times larger).
    Returns [B].
    """
    var_term = logvar.exp() - logvar - 1
    if form == "full":
        per_dim = 0.5 * (mu.pow(2) + var_term)
    elif form == "var_only":
        per_dim = 0.5 * var_term
    else:
        raise ValueError(f"kl form must be 'full' or 'var_only', got {form!r}")
    if reduction == "mean":
        return _masked_item_mean(per_dim.mean(dim=-1), mask)
    if reduction == "sum":
        per_region = per_dim.sum(dim=-1)
        return (per_region if mask is None else per_region * mask.to(per_region.dtype)).sum(dim=1)
    raise ValueError(f"kl reduction must be 'mean' or 'sum', got {reduction!r}")


def attention_entropy(attn: torch.Tensor, mask: torch.Tensor | None = None, form: str = "usage",
                      eps: float = 1e-8) -> torch.Tensor:
    """Anti-collapse penalty on a patch-to-region attention, 1 - (normalised entropy), per item.

    attn: [B, L, K] non-negative scores (GRM's sigmoid A_r, before any normalisation);
    mask: [B, L] bool (valid patches) or None. The result lies in [0, 1]; 0 is the most diverse.
      form="usage":  q_k = sum_l A_lk / sum_{l,k} A_lk is the share of attention mass region k
                     receives; loss = 1 - H(q) / log K. Penalises all patches going to one prompt.
      form="region": p_{l|k} = A_lk / sum_l A_lk is region k's distribution over patches;
                     loss = 1 - mean_k H(p_{.|k}) / log L_valid. Penalises regions that collapse
                     onto a few patches.
      form="mi":     the mutual information of soft clustering between patches and (equally
                     weighted) prompts, I = H(mean_k p_{.|k}) - mean_k H(p_{.|k});
                     loss = 1 - I / log min(K, L_valid). Its minimum needs every prompt peaked
                     AND the prompts on different patches: uniform attention and "every prompt
                     on the same patches" both give I = 0, the worst value.
    Returns [B].
    """
    if mask is not None:
        attn = attn * mask.unsqueeze(-1).to(attn.dtype)
    k = attn.shape[-1]
    if form == "usage":
        if k < 2:
            return attn.new_zeros(attn.shape[0])
        q = attn.sum(dim=1)
        q = q / q.sum(dim=-1, keepdim=True).clamp(min=eps)
        h = -(q * (q + eps).log()).sum(-1)
        return 1 - h / math.log(k)
    if form not in ("region", "mi"):
        raise ValueError(f"entropy form must be 'usage', 'region' or 'mi', got {form!r}")
    n_valid = attn.new_full((attn.shape[0],), attn.shape[1]) if mask is None else mask.sum(1).to(attn.dtype)
    p = attn / attn.sum(dim=1, keepdim=True).clamp(min=eps)  # [B, L, K]: each region's distribution over patches
    h = entropy(p, dim=1, eps=eps).mean(dim=-1)
    if form == "region":
        return (1 - h / n_valid.clamp(min=2).log()).clamp(min=0)
    info = entropy(p.mean(dim=-1), dim=1, eps=eps) - h
    log_n = torch.minimum(n_valid, n_valid.new_tensor(float(k))).clamp(min=2).log()
    return (1 - info / log_n).clamp(0, 1)


def entropy(p: torch.Tensor, dim: int, eps: float = 1e-8) -> torch.Tensor:
    """Shannon entropy (nats) of distributions laid along `dim`."""
    return -(p * (p + eps).log()).sum(dim=dim)


def region_diversity(mu: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean off-diagonal cosine between an item's region vectors, per item (0 for fewer than 2 regions).

    mu: [B, K, d]; mask: [B, K] bool (valid regions) or None. In [-1, 1]; 1 = all regions parallel,
    so a positive weight on it pushes the regions of one image apart. Returns [B].
    """
    unit = F.normalize(mu, dim=-1, eps=1e-8)
    cos = unit @ unit.transpose(1, 2)  # [B, K, K]
    valid = torch.ones(mu.shape[:2], dtype=torch.bool, device=mu.device) if mask is None else mask
    pair = (valid[:, :, None] & valid[:, None, :]) & ~torch.eye(mu.shape[1], dtype=torch.bool, device=mu.device)
    w = pair.to(cos.dtype)
    return (cos * w).sum(dim=(1, 2)) / w.sum(dim=(1, 2)).clamp(min=1)


def recon_loss(pred: torch.Tensor, target: torch.Tensor, form: str = "mse") -> torch.Tensor:
    """Semantic-consistency (reconstruction) term between two [B, d] vectors, per item.

      form="mse": mean over d of (pred - target)^2
      form="cos": 1 - cos(pred, target)
    Returns [B].
    """
    if form == "mse":
        return (pred - target).pow(2).mean(dim=-1)
    if form == "cos":
        return 1 - F.cosine_similarity(pred, target, dim=-1, eps=1e-8)
    raise ValueError(f"recon form must be 'mse' or 'cos', got {form!r}")
