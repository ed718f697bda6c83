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

Two options keep the noise from swamping the features (both off by default = phi's output is
log sigma^2, phi initialised like any Linear): `sigma_max` bounds sigma to (0, sigma_max) via
sigma = sigma_max * sigmoid(phi(mu)); `logvar_init` starts phi's last layer at weight 0 and the
bias that gives log sigma^2 = logvar_init for every region.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RegionUncertainty(nn.Module):
    def __init__(self, dim: int, head: str = "linear", n_samples: int = 1, eval_mode: str = "mean",
                 sigma_max: float | None = None, logvar_init: float | None = None):
        super().__init__()
        if sigma_max is not None and sigma_max <= 0:
            raise ValueError(f"sigma_max must be > 0 or null, got {sigma_max}")
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
        self.n_samples, self.eval_mode, self.sigma_max = n_samples, eval_mode, sigma_max
        if logvar_init is not None:
            self._start_at(logvar_init)

    def _start_at(self, logvar_init: float) -> None:
        """phi's last layer -> weight 0 and the bias that makes log sigma^2 = logvar_init everywhere."""
        last = self.phi[-1] if isinstance(self.phi, nn.Sequential) else self.phi
        bias = logvar_init
        if self.sigma_max is not None:
            share = math.exp(0.5 * logvar_init) / self.sigma_max  # sigmoid(bias) = sigma_init / sigma_max
            if not 0 < share < 1:
                raise ValueError(f"logvar_init {logvar_init} needs sigma = {math.exp(0.5 * logvar_init):.3g} "
                                 f"below sigma_max {self.sigma_max}")
            bias = math.log(share / (1 - share))
        with torch.no_grad():
            last.weight.zero_()
            last.bias.fill_(bias)

    def log_variance(self, mu: torch.Tensor) -> torch.Tensor:
        """log sigma^2 of each region, [B, K, d]."""
        h = self.phi(mu)
        if self.sigma_max is None:
            return h
        return 2 * (math.log(self.sigma_max) + F.logsigmoid(h))

    def forward(self, mu: torch.Tensor, spread: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu [B, K, d], spread [B, K] = sqrt(sum_l A_hat_lk^2) -> (u [B, K, S, d], logvar [B, K, d])."""
        logvar = self.log_variance(mu)
        if self.training or self.eval_mode == "sample":
            std = (0.5 * logvar).exp() * spread.unsqueeze(-1).to(logvar.dtype)
            eps = torch.randn(mu.shape[0], mu.shape[1], self.n_samples, mu.shape[2], dtype=mu.dtype, device=mu.device)
            u = mu.unsqueeze(2) + std.unsqueeze(2) * eps
        else:
            u = mu.unsqueeze(2)
        return u, logvar
