"""What GRM's modules do on real inputs, as one flat dict of floats (MLflow metrics, `grm/<name>`).

Computed for a trained GRM on a batch of encoded images and their captions:

    grm/prompt_entropy       mean over images and prompts of H(A_hat[:, k]) / log L_valid
                             (1 = a prompt attends uniformly to every patch)
    grm/usage_entropy        mean over images of H(q) / log K, q_k ~ sum_l A_r[l, k]
                             (1 = every prompt receives the same attention mass)
    grm/region_cos           mean off-diagonal cos(mu_k, mu_k') within an image (1 = K copies)
    grm/region_to_mean_cos   mean cos(mu_k, masked mean of V_hat) (1 = every region is the global mean)
    grm/keep_visual, grm/keep_text   mean adapter keep score A over valid tokens
    grm/sigma_mean, grm/sigma_std    of sigma over every valid region and dimension
    grm/noise_to_signal      mean ||sigma_k * sqrt(sum_l A_hat_lk^2)|| / ||mu_k||: the size of the
                             training noise on u_k relative to the region itself
    grm/{ori,key,unc}_{i2t,t2i}_R1_{eval,train}
                             each level's own R@1 (%), in eval mode and in train mode (Gumbel and
                             uncertainty noise on, drawn from `seed` without touching the caller's RNG)

The structural statistics are taken in eval mode. Keys of a module the model lacks (no region
prompting, no uncertainty, no adapter) are left out; the others are always present.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F

from fga.evaluate.recall import rank_metrics
from fga.losses import entropy, region_diversity
from fga.models.base import Encoded, cat_encoded
from fga.models.grm.model import GRM, LEVELS

PREFIX = "grm/"


@torch.no_grad()
def grm_diagnostics(model: GRM, regions: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor,
                    lengths: torch.Tensor, caps_per_image: int = 5, max_images: int = 200, seed: int = 0,
                    batch_size: int = 256) -> dict[str, float]:
    """The diagnostics of the first `max_images` images and their captions (caption j -> image j // caps_per_image)."""
    n = min(max_images, len(regions))
    inputs = (regions[:n], mask[:n], tokens[: n * caps_per_image], lengths[: n * caps_per_image])
    device = next(model.parameters()).device
    was_training = model.training
    try:
        model.eval()
        img, txt = _encode(model, *inputs, device, batch_size)
        out = {**_region_stats(model, img), **_adapter_stats(model, img, txt),
               **_level_recalls(model, img, txt, caps_per_image, "eval")}
        cuda = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            model.train()
            img, txt = _encode(model, *inputs, device, batch_size)
        out.update(_level_recalls(model, img, txt, caps_per_image, "train"))
    finally:
        model.train(was_training)
    return {PREFIX + k: float(v) for k, v in out.items()}


def _batches(n: int, size: int) -> Iterator[slice]:
    return (slice(i, i + size) for i in range(0, n, size))


def _encode(model: GRM, regions: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor,
            device: torch.device, batch_size: int) -> tuple[Encoded, Encoded]:
    """Images and captions encoded in the model's current mode, in batches."""
    img = cat_encoded([model.encode_image(regions[s].to(device).float(), mask[s].to(device))
                       for s in _batches(len(regions), batch_size)])
    txt = cat_encoded([model.encode_text(tokens[s].to(device), lengths[s].to(device))
                       for s in _batches(len(tokens), batch_size)])
    return img, txt


def _region_stats(model: GRM, img: Encoded) -> dict[str, float]:
    """Attention peakedness, prompt usage, region distinctness, sigma (eval-mode encodings)."""
    mask = img["mask"]
    mu, attn, spread, u_mask = model.region_means(img["v_hat"], mask)
    out: dict[str, float] = {}
    if attn is not None:
        n_valid = mask.sum(1)
        k = attn.shape[-1]
        attn_hat = attn / attn.sum(dim=1, keepdim=True).clamp(min=1e-8)
        several = n_valid >= 2  # the entropy over one patch is 0 / log 1
        if several.any():
            h = entropy(attn_hat, dim=1) / n_valid.clamp(min=2).to(attn.dtype).log().unsqueeze(-1)
            out["prompt_entropy"] = h[several].mean()
        if k >= 2:
            usage = attn.sum(dim=1)
            usage = usage / usage.sum(dim=-1, keepdim=True).clamp(min=1e-8)
            out["usage_entropy"] = (entropy(usage, dim=-1) / math.log(k)).mean()
            out["region_cos"] = region_diversity(mu, u_mask).mean()
        m = mask.to(mu.dtype).unsqueeze(-1)
        patch_mean = (img["v_hat"] * m).sum(1) / m.sum(1).clamp(min=1)
        out["region_to_mean_cos"] = F.cosine_similarity(mu, patch_mean.unsqueeze(1), dim=-1, eps=1e-8).mean()
    if model.um is not None:
        sigma = (0.5 * model.um.log_variance(mu)).exp()  # [B, K, d]
        valid = sigma[u_mask]
        out["sigma_mean"], out["sigma_std"] = valid.mean(), valid.std(correction=0)
        noise = (sigma * spread.unsqueeze(-1)).norm(dim=-1) / mu.norm(dim=-1).clamp(min=1e-8)
        out["noise_to_signal"] = noise[u_mask].mean()
    return out


def _adapter_stats(model: GRM, img: Encoded, txt: Encoded) -> dict[str, float]:
    out: dict[str, float] = {}
    if model.sa is not None:
        out["keep_visual"] = img["a_v"][img["mask"]].mean()
    if model.ga is not None:
        out["keep_text"] = txt["a_t"][txt["t_mask"]].mean()
    return out


def _level_recalls(model: GRM, img: Encoded, txt: Encoded, caps_per_image: int, mode: str) -> dict[str, float]:
    """R@1 (%) of each level's own similarity matrix, both directions."""
    out: dict[str, float] = {}
    for level, sim in model.level_similarities(img, txt, LEVELS).items():
        metrics = rank_metrics(sim.float().cpu().numpy(), caps_per_image)
        for direction in ("i2t", "t2i"):
            out[f"{level}_{direction}_R1_{mode}"] = metrics[direction]["R@1"]
    return out
