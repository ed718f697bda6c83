"""SCAN: Stacked Cross Attention (Lee et al., ECCV 2018) on region features and BiGRU words.

Regions v_r = l2norm(W v_r_in) and words w_l = l2norm(BiGRU) give cosine scores s_rl. With
queries q (words for t2i, regions for i2t) attending over the other modality's items c:

    s_bar   = l2norm_over_queries( LeakyReLU_0.1(s) )          ("clipped_l2norm", padded queries = 0)
    alpha   = softmax_over_contexts( lambda_softmax * s_bar )   (padded contexts excluded)
    a_q     = sum_c alpha_qc c                                  (attended vector)
    R_q     = cos(q, a_q)
    S       = (1/lambda_lse) log sum_q exp(lambda_lse R_q)   (agg "lse")   or   mean_q R_q   (agg "mean")

Published defaults: t2i uses lambda_softmax 9 with LSE (lambda_lse 6); i2t uses lambda_softmax 4
with AVG. Batched without materialising attended vectors: q . a_q = sum_c alpha_qc s_qc and
|a_q|^2 = alpha_q^T G alpha_q with G the Gram matrix of the context items, so every block holds
[n_context_items, C, n_query_items, Q] tensors only (the score GEMM's own layout). The logits are
bounded by lambda_softmax (unit vectors), so for |lambda_softmax| up to ~16 the softmax is one in-place
exp of the logits shifted by that bound, and its normaliser divides the two small [.., Q] sums
(q . a_q and |a_q|^2) instead of the weights. Padded tokens are zeroed once (their scores are 0) and
padded contexts get a -inf-like bias on the small [Bc, C] side, so no mask pass touches the score
tensor. Blocks are capped at `sim_chunk_elems` scores, and on a CPU also at cache-sized tiles of
`_CPU_TILE_SCORES`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fga.losses import hinge_triplet
from fga.models.base import Encoded, RetrievalModel
from fga.models.text_encoder import TextEncoderSpec, build_text_encoder, length_mask

_EPS = 1e-8
# On a CPU a block is scored in tiles of at most this many scores (~4 MB per float32 temporary): the
# ~10 elementwise passes over each tile then run in the caches (measured ~20 % faster per score at
# 1 thread than untiled 4M-score blocks), while the tile's score GEMM stays a few hundred wide each way.
_CPU_TILE_SCORES = 2 ** 20
_EXP_HEADROOM = 20.0  # nats kept between the smallest product of two attention weights and underflow


def _neg_fill(x: torch.Tensor) -> float:
    """A finite 'minus infinity' for masked softmax/logsumexp (no NaN when everything is masked)."""
    return torch.finfo(x.dtype).min / 4


class SCAN(RetrievalModel):
    def __init__(self, img_dim: int, vocab_size: int, embed_dim: int = 1024, word_dim: int = 300,
                 margin: float = 0.2, warmup_epochs: int = 1, direction: str = "t2i",
                 lambda_softmax: float | None = None, agg: str | None = None, lambda_lse: float = 6.0,
                 attn_norm: str = "clipped_l2norm", sim_chunk_elems: int = 2 ** 22,
                 text_encoder: TextEncoderSpec | None = None, **_: object):
        super().__init__()
        if direction not in ("t2i", "i2t"):
            raise ValueError(f"direction must be 't2i' or 'i2t', got {direction!r}")
        agg = agg or ("lse" if direction == "t2i" else "mean")
        if agg not in ("lse", "mean"):
            raise ValueError(f"agg must be 'lse' or 'mean', got {agg!r}")
        if attn_norm not in ("clipped_l2norm", "none"):
            raise ValueError(f"attn_norm must be 'clipped_l2norm' or 'none', got {attn_norm!r}")
        self.fc = nn.Linear(img_dim, embed_dim)
        nn.init.xavier_uniform_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)
        self.txt = build_text_encoder(text_encoder, vocab_size=vocab_size, word_dim=word_dim, embed_dim=embed_dim)
        self.direction, self.agg, self.lambda_lse, self.attn_norm = direction, agg, float(lambda_lse), attn_norm
        if lambda_softmax is None:
            lambda_softmax = 9.0 if direction == "t2i" else 4.0
        self.lambda_softmax = float(lambda_softmax)
        self.margin, self.warmup_epochs, self.sim_chunk_elems = margin, warmup_epochs, sim_chunk_elems

    def encode_image(self, regions: torch.Tensor, mask: torch.Tensor) -> Encoded:
        return {"regions": F.normalize(self.fc(regions.float()), dim=-1, eps=_EPS), "mask": mask.bool()}

    def encode_text(self, tokens: torch.Tensor, lengths: torch.Tensor) -> Encoded:
        words = F.normalize(self.txt(tokens, lengths), dim=-1, eps=_EPS)
        return {"words": words, "w_mask": length_mask(lengths.clamp(min=1).to(words.device), tokens.shape[1])}

    # ------------------------------------------------------------------------------------- similarity
    def _attend(self, s: torch.Tensor, c_mask: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
        """Relevance R_q of every query for a block laid out [Bc, C, Bq, Q] -> [Bc, Bq, Q].

        Bc items own the C contexts (gram [Bc, C, C] is their Gram matrix), Bq items own the Q queries
        (padded queries are zero vectors, so their scores are 0); c_mask [Bc, C]. This layout is the score
        GEMM's own output, so nothing is permuted, and |a_q|^2 = alpha_q^T G alpha_q is one batched
        matmul over the context owners.
        """
        bc, c, bq, q = s.shape
        lam = self.lambda_softmax
        # |logit| <= |lambda| (|s| <= 1, and the clipped l2norm keeps |s_bar| <= 1), so exp(logit - |lambda|)
        # needs no per-row max: a row's largest weight is >= exp(-2|lambda|), and |a_q|^2 sums products of two
        # weights, so exp(-4|lambda|) must stay a normal float with room to spare (|lambda| <= ~16 in float32)
        shift = abs(lam) if 4 * abs(lam) + _EXP_HEADROOM < -math.log(torch.finfo(s.dtype).tiny) else 0.0
        bias = torch.full(c_mask.shape, -shift, dtype=s.dtype, device=s.device)
        bias = bias.masked_fill_(~c_mask, _neg_fill(s))[:, :, None, None]  # padded contexts get weight 0
        if self.attn_norm == "clipped_l2norm":
            a = F.leaky_relu(s, 0.1)
            # [Bc, C, Bq, 1] normaliser over the queries; clamp inside the sqrt: an all-zero row (a padded
            # context) would give 0 * inf = NaN grads. lambda rides on it instead of a pass over the block
            scale = lam / (a.pow(2).sum(dim=3, keepdim=True).clamp(min=_EPS ** 3).sqrt() + _EPS)
            logits = torch.addcmul(bias, a, scale)
        else:
            logits = torch.add(bias, s, alpha=lam)
        # unnormalised softmax weights over the contexts (in place: addcmul/add do not keep their output)
        e = logits.exp_() if shift else torch.softmax(logits, dim=1)
        z = e.sum(dim=1).clamp(min=torch.finfo(e.dtype).tiny)  # the softmax normaliser, [Bc, Bq, Q]
        dot = (e * s).sum(dim=1) / z  # q . a_q (queries are unit vectors)
        g_e = torch.bmm(gram, e.view(bc, c, bq * q)).view(bc, c, bq, q)
        sq_norm = (e * g_e).sum(dim=1) / z / z  # two divisions: z * z may underflow
        return dot / sq_norm.clamp(min=_EPS ** 2).sqrt().clamp(min=_EPS)

    def _aggregate(self, rel: torch.Tensor, q_valid: torch.Tensor) -> torch.Tensor:
        """rel [Bc, Bq, Q], q_valid broadcastable bool -> [Bc, Bq]."""
        if self.agg == "lse":
            z = (self.lambda_lse * rel).masked_fill(~q_valid, _neg_fill(rel))
            return torch.logsumexp(z, dim=-1) / self.lambda_lse
        w = q_valid.to(rel.dtype)
        return (rel * w).sum(-1) / w.sum(-1).clamp(min=1)

    def _block(self, v, vm, gv, w, wm, gw) -> torch.Tensor:
        """Scores [n_img, n_txt] of one block: t2i = words attend to regions, i2t = regions attend to words."""
        if self.direction == "t2i":  # contexts = regions (owned by images), queries = words
            ctx, c_mask, gram, qry, q_mask = v, vm, gv, w, wm
        else:  # contexts = words (owned by captions), queries = regions
            ctx, c_mask, gram, qry, q_mask = w, wm, gw, v, vm
        bc, c, d = ctx.shape
        bq, q, _ = qry.shape
        s = (ctx.reshape(bc * c, d) @ qry.reshape(bq * q, d).T).view(bc, c, bq, q)
        rel = self._attend(s, c_mask, gram)
        scores = self._aggregate(rel, q_mask[None])  # [Bc, Bq]
        return scores if self.direction == "t2i" else scores.T

    def similarity(self, img: Encoded, txt: Encoded) -> torch.Tensor:
        vm, wm = img["mask"], txt["w_mask"]
        # padded tokens as zero vectors: their scores are exactly 0, masked once here on the small tensors
        v = img["regions"] * vm[..., None].to(img["regions"].dtype)
        w = txt["words"] * wm[..., None].to(txt["words"].dtype)
        gv = v @ v.transpose(1, 2) if self.direction == "t2i" else None
        gw = w @ w.transpose(1, 2) if self.direction == "i2t" else None
        ni, r = v.shape[:2]
        nt, l = w.shape[:2]
        per_pair = max(1, r * l)
        chunk = self.sim_chunk_elems if v.device.type != "cpu" else min(self.sim_chunk_elems, _CPU_TILE_SCORES)
        ci = min(ni, max(1, chunk // per_pair))
        ct = min(nt, max(1, chunk // (ci * per_pair)))
        rows = []
        for i0 in range(0, ni, ci):
            si = slice(i0, i0 + ci)
            cols = []
            for t0 in range(0, nt, ct):
                st = slice(t0, t0 + ct)
                cols.append(self._block(v[si], vm[si], None if gv is None else gv[si],
                                        w[st], wm[st], None if gw is None else gw[st]))
            rows.append(torch.cat(cols, dim=1))
        return torch.cat(rows, dim=0)

    def pair_similarity(self, img_one: Encoded, txt_one: Encoded) -> float:
        """Reference score of one image and one caption (batch-size-1 dicts), with explicit attended vectors."""
        v = img_one["regions"][0][img_one["mask"][0]].double()
        w = txt_one["words"][0][txt_one["w_mask"][0]].double()
        q, c = (w, v) if self.direction == "t2i" else (v, w)
        s = c @ q.T  # [n_context, n_query]
        if self.attn_norm == "clipped_l2norm":
            s = F.leaky_relu(s, 0.1)
            s = s / (s.norm(dim=1, keepdim=True) + _EPS)  # over the queries
        alpha = torch.softmax(self.lambda_softmax * s, dim=0)  # over the contexts
        attended = alpha.T @ c  # [n_query, d]
        rel = torch.stack([
            (q[i] @ attended[i]) / (q[i].norm() * attended[i].norm()).clamp(min=_EPS) for i in range(len(q))
        ])
        if self.agg == "lse":
            return float(torch.log(torch.exp(self.lambda_lse * rel).sum()) / self.lambda_lse)
        return float(rel.mean())

    def training_loss(self, img: Encoded, txt: Encoded, positives: torch.Tensor, epoch: int):
        loss = hinge_triplet(self.similarity(img, txt), positives, self.margin, hardest=epoch >= self.warmup_epochs)
        return loss, {"triplet": loss.item()}
