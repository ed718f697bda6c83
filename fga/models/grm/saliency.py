"""GRM §1.2: the significance-aware (visual, SA) and granularity-aware (text, GA) adapters.

Both adapters share this structure and have separate parameters (docs/grm.md §1.2):

    logits = Linear_2( act( Linear_1(X) ) )          in R^{L x 2}   (index 0 = keep, 1 = drop)
    A      = GumbelSoftmax(logits, tau)[:, keep]      in [0, 1]^L    (training)
    X_hat  = X (.) (A (x) 1_d)                        (padding tokens get A = 0)

`act` is the identity by default (the note writes two linear maps and no nonlinearity).
At evaluation no noise is drawn: A = softmax(logits / tau)[:, keep] ("soft") or
A = 1[logit_keep >= logit_drop] ("hard"), so two evaluation passes are identical.
With `hard=True` training uses straight-through hard Gumbel samples (values in {0, 1}).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"none": nn.Identity, "relu": nn.ReLU, "gelu": nn.GELU}


class TokenSaliencyAdapter(nn.Module):
    def __init__(self, dim: int, hidden: int | None = None, activation: str = "none", tau: float = 1.0,
                 hard: bool = False, eval_mode: str = "soft"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"adapter_activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if eval_mode not in ("soft", "hard"):
            raise ValueError(f"saliency_eval must be 'soft' or 'hard', got {eval_mode!r}")
        if tau <= 0:
            raise ValueError(f"gumbel_tau must be > 0, got {tau}")
        hidden = hidden or max(1, dim // 2)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = ACTIVATIONS[activation]()
        self.fc2 = nn.Linear(hidden, 2)
        self.tau, self.hard, self.eval_mode = tau, hard, eval_mode

    def keep_scores(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, L, d], mask [B, L] bool -> A [B, L] in [0, 1], 0 at padding."""
        logits = self.fc2(self.act(self.fc1(x))).float()
        if self.training:
            a = F.gumbel_softmax(logits, tau=self.tau, hard=self.hard, dim=-1)[..., 0]
        elif self.eval_mode == "soft":
            a = torch.softmax(logits / self.tau, dim=-1)[..., 0]
        else:
            a = (logits[..., 0] >= logits[..., 1]).float()
        return a * mask.to(a.dtype)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (X_hat [B, L, d], A [B, L])."""
        a = self.keep_scores(x, mask)
        return x * a.unsqueeze(-1).to(x.dtype), a
