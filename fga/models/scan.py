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
[n_img, n_txt, R, L] tensors only, and blocks are capped at `sim_chunk_elems` entries.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fga.losses import hinge_triplet
from fga.models.base import Encoded, RetrievalModel
from fga.models.text_encoder import BiGRUTextEncoder, length_mask

_EPS = 1e-8


def _neg_fill(x: torch.Tensor) -> float:
    """A finite 'minus infinity' for masked softmax/logsumexp (no NaN when everything is masked)."""
    return torch.finfo(x.dtype).min / 4


class SCAN(RetrievalModel):
    def __init__(self, img_dim: int, vocab_size: int, embed_dim: int = 1024, word_dim: int = 300,
                 margin: float = 0.2, warmup_epochs: int = 1, direction: str = "t2i",
                 lambda_softmax: float | None = None, agg: str | None = None, lambda_lse: float = 6.0,
                 attn_norm: str = "clipped_l2norm", sim_chunk_elems: int = 2 ** 22, **_: object):
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
        self.txt = BiGRUTextEncoder(vocab_size, word_dim, embed_dim)
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
    def _attend(self, s: torch.Tensor, q_mask: torch.Tensor, c_mask: torch.Tensor, gram: torch.Tensor,
                q_dim: int) -> torch.Tensor:
        """Relevance R_q for a block. s [ci, ct, R, L]; q_dim = 3 (words query) or 2 (regions query).

        q_mask / c_mask broadcast against s; gram [.., c, c] is the context Gram matrix, laid out so
        that `gram @ alpha` (over the context axis) broadcasts. Returns R [ci, ct, n_queries].
        """
        c_dim = 2 if q_dim == 3 else 3
        a = s
        if self.attn_norm == "clipped_l2norm":
            a = F.leaky_relu(a, 0.1).masked_fill(~q_mask, 0)
            # clamp inside the sqrt: an all-zero column (a padded context) would give 0 * inf = NaN grads
            a = a / (a.pow(2).sum(dim=q_dim, keepdim=True).clamp(min=_EPS ** 3).sqrt() + _EPS)
        logits = (self.lambda_softmax * a).masked_fill(~c_mask, _neg_fill(a))
        alpha = torch.softmax(logits, dim=c_dim)  # zero at padded contexts
        dot = (alpha * s).sum(dim=c_dim)  # q . a_q (queries are unit vectors)
        if q_dim == 3:  # contexts = regions: |a_l|^2 = sum_rs alpha_rl G_rs alpha_sl
            g_alpha = torch.einsum("irs,itsl->itrl", gram, alpha)
        else:  # contexts = words: |a_r|^2 = sum_lm alpha_rl H_lm alpha_rm
            g_alpha = torch.einsum("tlm,itrm->itrl", gram, alpha)
        sq_norm = (alpha * g_alpha).sum(dim=c_dim)
        return dot / sq_norm.clamp(min=_EPS ** 2).sqrt().clamp(min=_EPS)

    def _aggregate(self, rel: torch.Tensor, q_valid: torch.Tensor) -> torch.Tensor:
        """rel [ci, ct, Q], q_valid broadcastable bool -> [ci, ct]."""
        if self.agg == "lse":
            z = (self.lambda_lse * rel).masked_fill(~q_valid, _neg_fill(rel))
            return torch.logsumexp(z, dim=-1) / self.lambda_lse
        w = q_valid.to(rel.dtype)
        return (rel * w).sum(-1) / w.sum(-1).clamp(min=1)

    def _block(self, v, vm, gv, w, wm, gw) -> torch.Tensor:
        ci, r, d = v.shape
        ct, l, _ = w.shape
        s = (v.reshape(ci * r, d) @ w.reshape(ct * l, d).T).view(ci, r, ct, l)
        s = s.permute(0, 2, 1, 3).contiguous()  # [ci, ct, R, L]
        vm4 = vm[:, None, :, None]
        wm4 = wm[None, :, None, :]
        if self.direction == "t2i":  # words attend to regions
            rel = self._attend(s, wm4, vm4, gv, q_dim=3)  # [ci, ct, L]
            return self._aggregate(rel, wm[None, :, :])
        rel = self._attend(s, vm4, wm4, gw, q_dim=2)  # [ci, ct, R]
        return self._aggregate(rel, vm[:, None, :])

    def similarity(self, img: Encoded, txt: Encoded) -> torch.Tensor:
        v, vm = img["regions"], img["mask"]
        w, wm = txt["words"], txt["w_mask"]
        gv = v @ v.transpose(1, 2) if self.direction == "t2i" else None
        gw = w @ w.transpose(1, 2) if self.direction == "i2t" else None
        ni, r = v.shape[:2]
        nt, l = w.shape[:2]
        per_pair = max(1, r * l)
        ci = min(ni, max(1, self.sim_chunk_elems // per_pair))
        ct = min(nt, max(1, self.sim_chunk_elems // (ci * per_pair)))
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
