"""GRM §1.4: region-level uncertainty — each region is a diagonal Gaussian N(mu_k, sigma_k^2).

    log sigma_k^2 = phi(mu_k)                                   (phi: Linear, or a 2-layer MLP)
    z_lk = mu_k + eps_lk (.) sigma_k,   eps_lk ~ N(0, I)        (one draw per patch l and region k)
    u_k  = sum_l A_hat[l, k] * z_lk

Because sum_l A_hat[l, k] = 1, u_k = mu_k + sigma_k (.) sum_l A_hat[l, k] eps_lk, and the last sum
is N(0, sum_l A_hat[l, k]^2 I). So u_k is drawn exactly in distribution as

    u_k = mu_k + sigma_k (.) sqrt(sum_l A_hat[l, k]^2) (.) eps_k,   eps_k ~ N(0, I)

with one eps per region and no L x K x d tensor. `n_samples` independent draws are kept
(u has shape [B, K, S, d]); the similarity averages over them. At evaluation u_k = mu_k
(eval_mode "mean"), or fresh draws (eval_mode "sample").
"""
from __future__ import annotations

import torch
from torch import nn


class RegionUncertainty(nn.Module):
    def __init__(self, dim: int, head: str = "linear", n_samples: int = 1, eval_mode: str = "mean"):
        super().__init__()
        if head == "linear":
            self.phi = nn.Linear(dim, dim)
        elif head == "mlp":
            self.phi = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        else:
            raise ValueError(f"var_head must be 'linear' or 'mlp', got {head!r}")
        if eval_mode not in ("mean", "sample"):
            raise ValueError(f"eval_mode must be 'mean' or 'sample', got {eval_mode!r}")
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        self.n_samples, self.eval_mode = n_samples, eval_mode

    def forward(self, mu: torch.Tensor, spread: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu [B, K, d], spread [B, K] = sqrt(sum_l A_hat_lk^2) -> (u [B, K, S, d], logvar [B, K, d])."""
        logvar = self.phi(mu)
        if self.training or self.eval_mode == "sample":
            std = (0.5 * logvar).exp() * spread.unsqueeze(-1).to(logvar.dtype)
            eps = torch.randn(mu.shape[0], mu.shape[1], self.n_samples, mu.shape[2], dtype=mu.dtype, device=mu.device)
            u = mu.unsqueeze(2) + std.unsqueeze(2) * eps
        else:
            u = mu.unsqueeze(2)
        return u, logvar
