"""GRM §1.3: Region Prompting — K learnable prompts gather patches into latent regions.

    P_hat   = L2-normalise(P)                              P in R^{K x d}, row-wise
    A_r     = sigmoid( s * f(V_hat) . P_hat^T )            in (0, 1)^{L x K}
    A_hat   = A_r[l, k] / sum_l' A_r[l', k]                (per region, over valid patches)
    mu_k    = sum_l A_hat[l, k] * V_hat[l]                 k = 1..K

Sigmoid (not softmax over prompts) lets one patch belong to several regions. The paper's
formula has s = 1 and f = identity; whether V_hat is L2-normalised first and whether a scale
sits inside the sigmoid are not known (docs/grm.md §1.3, risk 4), so both are options:
`logit_scale` (s) and `normalize_features` (f = L2-normalise). Padding patches get A_r = 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RegionPrompting(nn.Module):
    def __init__(self, dim: int, num_prompts: int = 5, logit_scale: float = 1.0, normalize_features: bool = False):
        super().__init__()
        if num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
        self.prompts = nn.Parameter(torch.randn(num_prompts, dim) / dim ** 0.5)
        self.logit_scale = logit_scale
        self.normalize_features = normalize_features

    def forward(self, v_hat: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """v_hat [B, L, d], mask [B, L] bool -> (mu [B, K, d], A_r [B, L, K], A_hat [B, L, K])."""
        p_hat = F.normalize(self.prompts, dim=-1)
        feats = F.normalize(v_hat, dim=-1) if self.normalize_features else v_hat
        attn = torch.sigmoid(self.logit_scale * feats @ p_hat.T.to(feats.dtype))
        attn = attn * mask.unsqueeze(-1).to(attn.dtype)
        attn_hat = attn / attn.sum(dim=1, keepdim=True).clamp(min=1e-8)
        mu = torch.einsum("blk,bld->bkd", attn_hat, v_hat)
        return mu, attn, attn_hat
