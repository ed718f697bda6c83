"""GRM (AAAI 2026): granularity-aware and region-uncertain modelling, on this pipeline's inputs.

docs/grm.md §1 module by module, on frozen region/grid features and a BiGRU caption encoder:

    V     = W_v regions                        [B, L_v, d]   (§1.1; the paper fine-tunes ViT/Swin)
    T     = TextEncoder(words)                 [B, L_t, d]   (§1.1; train.text_encoder: BiGRU by default; the paper
                                                             fine-tunes BERT: bert_base in finetune mode)
    V_hat, A_V = SA(V);  T_hat, A_T = GA(T)                  (§1.2, saliency.py)
    mu, A_r, A_hat = RP(V_hat)                               (§1.3, region_prompt.py)
    U, log sigma^2 = UM(mu, A_hat)                           (§1.4, uncertainty.py)
    S_ori = S(V, T),  S_key = S(V_hat, T_hat),  S_unc = S(U, T_hat)   (§1.5, similarity.py)
    L = a L_tri(S_ori) + b L_tri(S_key) + c L_tri(S_unc)
        + lambda_recon L_recon + lambda_kl L_KL + lambda_ent L_ent     (§1.6-1.7, fga/losses.py)
        (+ lambda_div L_div, an optional region-diversity term, off by default)

diagnostics.py measures what each module does on real inputs (attention peakedness, region
distinctness, keep ratios, sigma, each level's own R@1 with and without training noise).

Every choice the paper leaves open is a constructor option; `FAITHFULNESS` lists them with
their defaults, what the paper says and why the default was picked.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from fga.losses import attention_entropy, hinge_triplet, kl_gaussian, recon_loss, region_diversity
from fga.models.base import Encoded, RetrievalModel
from fga.models.grm.region_prompt import RegionPrompting
from fga.models.grm.saliency import TokenSaliencyAdapter
from fga.models.grm.similarity import COMBINES, pair_token_similarity, token_similarity, token_similarity_multi
from fga.models.grm.uncertainty import RegionUncertainty
from fga.models.text_encoder import TextEncoderSpec, build_text_encoder, length_mask

LEVELS = ("ori", "key", "unc")

# (option, default, what docs/grm.md says, why this default). docs/methods.md's Faithfulness table is built from it.
FAITHFULNESS: list[dict[str, str]] = [
    {"option": "encoders (not an option)", "default": "frozen CNN region/grid features -> Linear",
     "paper": "[PAPER] fine-tuned ViT-B/Swin-B patch tokens and BERT-base word tokens, projected to embed_size",
     "why": "the pipeline's frozen_features mode on a CPU; every method gets the same inputs"},
    {"option": "grid.text_encoders", "default": "[bigru]",
     "paper": "[PAPER] BERT-base word tokens (fine-tuned [INFERRED])",
     "why": "measured: frozen MiniLM word pieces (minilm) cost GRM 23-73 rSum against the BiGRU here; no BERT "
            "weights ship offline; configs/paper.yaml sets [bert_base] in finetune mode"},
    {"option": "train.mode / train.backbone_lr_scale", "default": "frozen_features / 0.1",
     "paper": "[INFERRED] the backbones are fine-tuned; LAPS/AVSE train them at 0.1x the base LR",
     "why": "frozen features fit a 2-core CPU and give every method the same inputs; 'finetune' (GPU) is the "
            "paper's setting, with the backbone's AdamW group at 0.1x"},
    {"option": "backbone checkpoints (not an option)", "default": "a local timm checkpoint per backbone "
                                                                   "(vit_base_384 -> vit_base_patch16_384 weights)",
     "paper": "[INFERRED] the 384 variants use the matching 384-px checkpoints",
     "why": "features.backbones.<name>.checkpoint; nothing is fetched from a model hub"},
    {"option": "embed_dim", "default": "512",
     "paper": "[NOT FOUND]; LAPS/AVSE default 512",
     "why": "LAPS-BASE value; params.yaml may lower it for CPU runs"},
    {"option": "margin / warmup_epochs", "default": "0.2 / 1",
     "paper": "[PAPER] hinge triplet with hard negatives; margin and warm-up [NOT FOUND]",
     "why": "LAPS-BASE: margin 0.2, negatives summed in epoch 0, hardest negative afterwards"},
    {"option": "num_prompts", "default": "5",
     "paper": "[PAPER] K = 5 best for ViT, K = 50 for Swin (sweep 5..55); CNN backbones not studied",
     "why": "the ViT value; the caller sets K per backbone in params.yaml"},
    {"option": "use_saliency / use_visual_adapter / use_text_adapter", "default": "True / True / True",
     "paper": "[PAPER] SA and GA adapters, ablated one at a time (Table 2); SA->visual, GA->text is [INFERRED]",
     "why": "full model; use_saliency=False removes both (V_hat = V, T_hat = T), the other two remove one"},
    {"option": "adapter input M (not an option)", "default": "the token features, padding masked (A = 0 there)",
     "paper": "[INFERRED] M is V itself, or V with the padding mask applied",
     "why": "padding is not content: it must be neither kept nor pooled"},
    {"option": "keep-ratio target (not an option)", "default": "none",
     "paper": "[NOT FOUND] a keep-ratio / sparsity target (LAPS had ratio constraints)",
     "why": "GRM's notes mention none; the Gumbel mask is learned freely from the contrastive loss"},
    {"option": "adapter_hidden", "default": "embed_dim // 2",
     "paper": "[NOT FOUND] width of the first of the two linear layers",
     "why": "a bottleneck between d and 2 logits; any value gives the same function class when linear"},
    {"option": "adapter_activation", "default": "none",
     "paper": "[PAPER] two linear layers; a nonlinearity between them is [NOT FOUND]",
     "why": "the note writes Linear_2(Linear_1(X)) with nothing in between; 'relu'/'gelu' available"},
    {"option": "gumbel_tau", "default": "1.0",
     "paper": "[NOT FOUND]",
     "why": "the PyTorch gumbel_softmax default; no annealing since none is mentioned"},
    {"option": "gumbel_hard", "default": "False",
     "paper": "[NOT FOUND] soft vs straight-through hard samples",
     "why": "soft samples: A is called a soft selection mask in [0, 1]"},
    {"option": "saliency_eval", "default": "soft",
     "paper": "[INFERRED] no noise at test time",
     "why": "softmax(logits / tau) without noise is the expectation-free analogue of training; 'hard' = argmax"},
    {"option": "saliency_pooling", "default": "weighted",
     "paper": "[PAPER] X_hat = X (.) A, then cosine max-pooled similarity; nothing more",
     "why": "read literally ('none'), a soft A > 0 only rescales tokens, which cosine ignores: the text "
            "adapter then has no effect and no gradient. 'weighted' also weighs each query token's "
            "max-pooled score by its A in the key/unc means (our addition, flip to 'none' for the literal form). "
            "Measured (bench_grm_modules.py, previous defaults, seeds 0-2, AMD EPYC 2 cores): 'none' costs "
            "9.7 +- 3.3 rSum on lite0_grid (every seed) and 2.0 +- 3.1 on lite0_roi; its text keep score stays "
            "at 0.49 (no gradient). The main table uses 'weighted'; sweeps.modules' grm_literal runs 'none'"},
    {"option": "prompt_logit_scale", "default": "1.0",
     "paper": "[NOT FOUND] a scale/temperature inside sigmoid(V_hat P_hat^T); the formula shows none",
     "why": "literal formula; docs/grm.md risk 4 warns of saturation, so it is exposed"},
    {"option": "prompt_normalize_features", "default": "False",
     "paper": "[NOT FOUND] whether V_hat is L2-normalised before the dot product (only P_hat is)",
     "why": "literal formula (only the prompts are normalised)"},
    {"option": "attention normaliser (not an option)", "default": "A_hat[l,k] = A_r[l,k] / sum_l A_r[l,k]",
     "paper": "[PAPER] column normalisation over patches; exact normaliser [INFERRED]",
     "why": "sum-to-1 per region makes mu_k a weighted mean, which the closed-form UM relies on"},
    {"option": "use_region_prompt / no_rp_regions", "default": "True / tokens",
     "paper": "[PAPER] '-RP' ablation (Table 2, -12.9 rSum); what replaces the regions is [NOT FOUND]",
     "why": "without RP every key token V_hat_l is its own region ('tokens', A_hat = identity); "
            "'mean' uses one region, the masked mean of V_hat"},
    {"option": "use_uncertainty", "default": "True",
     "paper": "[PAPER] '-UM' ablation (Table 2)",
     "why": "False: u_k = mu_k (no sampling) and no KL term"},
    {"option": "var_head", "default": "linear",
     "paper": "[NOT FOUND] architecture of phi in log sigma^2 = phi(mu)",
     "why": "the smallest learnable map; 'mlp' = Linear-ReLU-Linear"},
    {"option": "sigma_max / logvar_init", "default": "0.25 / None",
     "paper": "[NOT FOUND] any bound or initialisation of sigma; the spec writes log sigma^2 = phi(mu), unbounded",
     "why": "measured (benchmarks/bench_grm_modules.py, seeds 0-2, both lite0 backbones, AMD EPYC 2 cores): "
            "unbounded, sigma sits at ~1.03 and the training noise on u_k is 44-52% of norm(mu_k), so the unc level "
            "trains on scores it never sees at test (its t2i R@1 16.1 train vs 18.8 eval on grid, 16.6 vs 23.3 "
            "on roi). sigma = sigma_max * sigmoid(phi(mu)) with 0.25 gives sigma 0.15, noise 5-7% of norm(mu_k), "
            "the gap 0.8 / 2.4 points, and rSum +3.0 +- 1.7 (grid) / +8.9 +- 1.1 (roi) together with ent_form mi "
            "(sigma_max alone: +3.3 / +2.8), better at every seed. None = the literal unbounded form; "
            "logvar_init starts phi's last layer at weight 0 and log sigma^2 = logvar_init"},
    {"option": "sampling (not an option)",
     "default": "closed form: one eps per region, std sigma_k*sqrt(sum_l A_hat_lk^2)",
     "paper": "[PAPER] per-(patch, region) eps_lk aggregated by A_hat",
     "why": "identical in distribution (docs/grm.md §1.4) without an L x K x d tensor"},
    {"option": "mixture weights (not an option)", "default": "none (implicit, equal)",
     "paper": "[NOT FOUND] no explicit pi_k; the mixture is implicit",
     "why": "each region's sample u_k enters the max-pooled similarity on its own"},
    {"option": "n_samples", "default": "1",
     "paper": "[NOT FOUND] samples per step, presumably 1",
     "why": "one draw per step; with more, S_unc is averaged over draws"},
    {"option": "eval_mode", "default": "mean",
     "paper": "[INFERRED] u_k = mu_k (eps = 0) or the mean over samples at inference",
     "why": "deterministic evaluation; 'sample' draws n_samples and averages S_unc"},
    {"option": "sim_combine", "default": "mean",
     "paper": "[INFERRED] S_t2i and S_i2t are combined; mean vs sum unknown",
     "why": "mean keeps every level in [-1, 1] so one margin suits all; sum only doubles the scale"},
    {"option": "token masking in pooling (not an option)",
     "default": "padding masked in both the max and the mean; ViT's CLS token kept as a visual token",
     "paper": "[NOT FOUND] masking of padded / CLS tokens; mean vs sum over query tokens",
     "why": "padding is not content; CLS is one more token the max-pooling may pick; the mean keeps "
            "captions of any length comparable"},
    {"option": "level_weights", "default": "(0.4, 0.4, 0.2)",
     "paper": "[PAPER] a = b = 0.4, c = 0.2 for ori/key/unc (Fig. 4b)",
     "why": "paper value; a zero weight removes that level (Table 3's -L_ori/-L_key/-L_unc)"},
    {"option": "test_similarity", "default": "weighted",
     "paper": "[NOT FOUND] which matrix ranks at test time",
     "why": "the same a/b/c combination as training ('key', 'ori', 'unc' pick one level)"},
    {"option": "loss temperature (not an option)", "default": "none (hinge)",
     "paper": "[INFERRED] no temperature: a hinge triplet loss, not InfoNCE",
     "why": "the LAPS-base loss"},
    {"option": "recon_form", "default": "mse",
     "paper": "[INFERRED] L_recon aligns mean_k mu_k with mean_l V_hat_l; form unknown",
     "why": "squared error (averaged over d) is docs/grm.md's first candidate; 'cos' = 1 - cosine"},
    {"option": "kl_form", "default": "full",
     "paper": "[INFERRED] KL(N(mu, sigma^2) || N(0, I)); some implementations regularise only the variance",
     "why": "the standard full KL; 'var_only' leaves the means free (averaged over regions and d)"},
    {"option": "kl_reduction", "default": "mean",
     "paper": "[INFERRED] 0.5 * sum(mu^2 + sigma^2 - log sigma^2 - 1), summed over K x d",
     "why": "'mean' (over regions and d) keeps lambda_kl independent of K and embed_dim; 'sum' is the "
            "spec's sum form, K*d times larger (640x at K=5, d=128)"},
    {"option": "ent_form", "default": "mi",
     "paper": "[INFERRED] entropy regulariser against attention collapse (all patches to one prompt, or all "
              "prompts on the same patches); direction/form unknown",
     "why": "'mi' = 1 - I(patch; prompt)/log min(K, L) (low entropy of each prompt's attention, high entropy of "
            "the mean usage): its minimum needs peaked prompts on distinct patches. 'usage' (1 - H(usage)/log K, "
            "the previous default) and 'region' score uniform attention as perfect, and with 'usage' the K = 5 "
            "regions of an image collapsed to the patch mean (mean pairwise cosine 0.970 grid / 0.955 roi, "
            "seeds 0-2). Measured with lambda_ent 0.1 and sigma_max 0.25 (bench_grm_modules.py, seeds 0-2, AMD "
            "EPYC 2 cores): region cosine 0.918 / 0.861, attention entropy 0.961 / 0.870 (was 0.988 / 0.963), "
            "rSum +3.0 +- 1.7 / +8.9 +- 1.1 (mi alone: -0.1 +- 2.2 / +6.2 +- 2.0)"},
    {"option": "lambda_div", "default": "0.0",
     "paper": "[INFERRED] the regularisers keep the regions 'diverse'; no diversity term is named",
     "why": "off: not in the paper. > 0 adds lambda_div x the mean off-diagonal cosine between an image's "
            "region means (part of L_reg: use_reg=False zeroes it)"},
    {"option": "lambda_recon / lambda_kl / lambda_ent", "default": "1.0 / 0.01 / 0.1",
     "paper": "[NOT FOUND]",
     "why": "per-sample terms of order 0.01-1, summed over the batch like the hinge; small enough not to "
            "dominate the hinge at initialisation. Untuned"},
    {"option": "use_reg", "default": "True",
     "paper": "[PAPER] Table 3 ablates 'L_reg' as one term; L_reg = L_KL + L_ent is [INFERRED]",
     "why": "False sets lambda_kl = lambda_ent = 0"},
    {"option": "train.lr / train.weight_decay / train.grad_clip / train.lr_gamma",
     "default": "0.0002 / 0.0001 / 2.0 / 0.3",
     "paper": "[NOT FOUND] for GRM; LAPS-BASE: AdamW, lr 2e-4, weight decay 1e-4, clip 2, step decay x0.3",
     "why": "the LAPS-base values (AdamW)"},
    {"option": "train.epochs / train.lr_milestones / train.batch_size", "default": "2 / [1] / 64",
     "paper": "[NOT FOUND] for GRM; LAPS-BASE: 30 epochs, x0.3 at epochs 9/15/20/25, batch 128",
     "why": "the CPU budget of the embedded default, the same for every method; 30 / [9, 15, 20, 25] / 128 "
            "is the paper-scale schedule"},
    {"option": "features.text.max_words", "default": "90",
     "paper": "[NOT FOUND] for GRM; LAPS-BASE 90",
     "why": "the LAPS-base value"},
    {"option": "train.crop_scale / train.token_perturb",
     "default": "[0.6, 1.0] / {frozen_features: 0.0, finetune: 0.2}",
     "paper": "[NOT FOUND] for GRM; LAPS-BASE: RandomResizedCrop 0.6-1 + flip, 20% of words perturbed",
     "why": "the LAPS values in finetune mode; frozen features have no image augmentation, and no word "
            "perturbation so the CPU default trains every method on the same captions"},
    {"option": "grid.seeds", "default": "[0, 1, 2]",
     "paper": "[NOT FOUND]",
     "why": "three seeds, reported as mean +- std with bootstrap CIs and paired tests"},
]


def faithfulness_markdown() -> str:
    """FAITHFULNESS as docs/methods.md's markdown table (tests/test_readme.py keeps that page in sync)."""
    rows = ["| option | default | what the paper says | why this default |", "|---|---|---|---|"]
    rows += ["| " + " | ".join(r[k].replace("|", "/") for k in ("option", "default", "paper", "why")) + " |"
             for r in FAITHFULNESS]
    return "\n".join(rows) + "\n"


class GRM(RetrievalModel):
    def __init__(self, img_dim: int, vocab_size: int, embed_dim: int = 512, word_dim: int = 300,
                 margin: float = 0.2, warmup_epochs: int = 1,
                 num_prompts: int = 5,
                 use_saliency: bool = True, use_visual_adapter: bool = True, use_text_adapter: bool = True,
                 adapter_hidden: int | None = None, adapter_activation: str = "none",
                 gumbel_tau: float = 1.0, gumbel_hard: bool = False, saliency_eval: str = "soft",
                 saliency_pooling: str = "weighted",
                 use_region_prompt: bool = True, no_rp_regions: str = "tokens",
                 prompt_logit_scale: float = 1.0, prompt_normalize_features: bool = False,
                 use_uncertainty: bool = True, var_head: str = "linear", n_samples: int = 1,
                 eval_mode: str = "mean",
                 sim_combine: str = "mean", level_weights: Sequence[float] = (0.4, 0.4, 0.2),
                 test_similarity: str = "weighted",
                 recon_form: str = "mse", kl_form: str = "full", ent_form: str = "mi",
                 kl_reduction: str = "mean", sigma_max: float | None = 0.25, logvar_init: float | None = None,
                 lambda_recon: float = 1.0, lambda_kl: float = 0.01, lambda_ent: float = 0.1,
                 lambda_div: float = 0.0, use_reg: bool = True, sim_chunk_elems: int = 2 ** 24,
                 text_encoder: TextEncoderSpec | None = None, **_: object):
        super().__init__()
        if sim_combine not in COMBINES:
            raise ValueError(f"sim_combine must be one of {COMBINES}, got {sim_combine!r}")
        if saliency_pooling not in ("weighted", "none"):
            raise ValueError(f"saliency_pooling must be 'weighted' or 'none', got {saliency_pooling!r}")
        if no_rp_regions not in ("tokens", "mean"):
            raise ValueError(f"no_rp_regions must be 'tokens' or 'mean', got {no_rp_regions!r}")
        if test_similarity not in ("weighted",) + LEVELS:
            raise ValueError(f"test_similarity must be 'weighted', 'ori', 'key' or 'unc', got {test_similarity!r}")
        if len(level_weights) != 3 or any(w < 0 for w in level_weights) or sum(level_weights) <= 0:
            raise ValueError(f"level_weights must be 3 non-negative numbers, not all 0, got {level_weights!r}")
        for name, form, ok in (("recon_form", recon_form, ("mse", "cos")), ("kl_form", kl_form, ("full", "var_only")),
                               ("ent_form", ent_form, ("usage", "region", "mi")),
                               ("kl_reduction", kl_reduction, ("mean", "sum"))):
            if form not in ok:
                raise ValueError(f"{name} must be one of {ok}, got {form!r}")

        self.img_proj = nn.Linear(img_dim, embed_dim)
        self.txt = build_text_encoder(text_encoder, vocab_size=vocab_size, word_dim=word_dim, embed_dim=embed_dim)
        adapter = dict(hidden=adapter_hidden or embed_dim // 2, activation=adapter_activation, tau=gumbel_tau,
                       hard=gumbel_hard, eval_mode=saliency_eval)
        self.sa = TokenSaliencyAdapter(embed_dim, **adapter) if use_saliency and use_visual_adapter else None
        self.ga = TokenSaliencyAdapter(embed_dim, **adapter) if use_saliency and use_text_adapter else None
        self.rp = (RegionPrompting(embed_dim, num_prompts, prompt_logit_scale, prompt_normalize_features)
                   if use_region_prompt else None)
        self.um = (RegionUncertainty(embed_dim, var_head, n_samples, eval_mode, sigma_max, logvar_init)
                   if use_uncertainty else None)

        self.margin, self.warmup_epochs = margin, warmup_epochs
        self.no_rp_regions = no_rp_regions
        self.sim_combine, self.saliency_pooling = sim_combine, saliency_pooling
        self.level_weights = dict(zip(LEVELS, (float(w) for w in level_weights)))
        self.test_similarity = test_similarity
        self.recon_form, self.kl_form, self.ent_form = recon_form, kl_form, ent_form
        self.kl_reduction = kl_reduction
        self.lambda_recon = float(lambda_recon)
        self.lambda_kl = float(lambda_kl) if use_reg else 0.0
        self.lambda_ent = float(lambda_ent) if use_reg else 0.0
        self.lambda_div = float(lambda_div) if use_reg else 0.0
        self.sim_chunk_elems = sim_chunk_elems

    # ----------------------------------------------------------------------------------------- encoders
    def encode_image(self, regions: torch.Tensor, mask: torch.Tensor) -> Encoded:
        mask = mask.bool()
        v = self.img_proj(regions.float())
        if self.sa is not None:
            v_hat, a_v = self.sa(v, mask)
        else:
            v_hat, a_v = v, mask.to(v.dtype)
        mu, attn, spread, u_mask = self.region_means(v_hat, mask)
        if self.um is not None:
            u, logvar = self.um(mu, spread)
        else:
            u, logvar = mu.unsqueeze(2), None
        out = {"v": v, "mask": mask, "v_hat": v_hat, "a_v": a_v, "u": u, "u_mask": u_mask}
        if self.training:  # only the loss needs these
            out["mu"] = mu
            if logvar is not None:
                out["logvar"] = logvar
            if attn is not None:
                out["attn"] = attn
        return out

    def region_means(self, v_hat: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Region means of the key tokens -> (mu [B, K, d], A_r [B, L, K] or None without RP,
        spread [B, K] = sqrt(sum_l A_hat_lk^2), valid-region mask [B, K])."""
        if self.rp is not None:
            mu, attn, attn_hat = self.rp(v_hat, mask)
            spread = attn_hat.pow(2).sum(dim=1).clamp(min=1e-12).sqrt()  # [B, K]; clamp: finite grad
            return mu, attn, spread, torch.ones(mu.shape[:2], dtype=torch.bool, device=mu.device)
        if self.no_rp_regions == "tokens":  # every key token is its own region (A_hat = identity)
            return v_hat, None, mask.to(v_hat.dtype), mask
        # one region: the masked mean of the key tokens
        w = mask.to(v_hat.dtype).unsqueeze(-1)
        w = w / w.sum(dim=1, keepdim=True).clamp(min=1)
        spread = w.pow(2).sum(dim=1).clamp(min=1e-12).sqrt()  # [B, 1] = 1/sqrt(n_valid)
        return (w * v_hat).sum(dim=1, keepdim=True), None, spread, mask.any(dim=1, keepdim=True)

    def encode_text(self, tokens: torch.Tensor, lengths: torch.Tensor) -> Encoded:
        t = self.txt(tokens, lengths)
        t_mask = length_mask(lengths.clamp(min=1).to(t.device), tokens.shape[1])
        if self.ga is not None:
            t_hat, a_t = self.ga(t, t_mask)
        else:
            t_hat, a_t = t, t_mask.to(t.dtype)
        return {"t": t, "t_mask": t_mask, "t_hat": t_hat, "a_t": a_t}

    # --------------------------------------------------------------------------------------- similarity
    def _weights(self, img: Encoded, txt: Encoded) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.saliency_pooling == "weighted":
            return img["a_v"], txt["a_t"]
        return None, None

    # A token whose keep score is below this is not treated as a positive rescaling of its original
    # (F.normalize's eps would matter), so the key level is then computed from V_hat / T_hat directly.
    _RESCALE_MIN = 1e-4

    def _key_is_rescaled(self, img: Encoded, txt: Encoded) -> bool:
        """True when V_hat, T_hat are V, T times positive factors on every valid token (soft saliency)."""
        return bool((img["a_v"][img["mask"]] > self._RESCALE_MIN).all()
                    and (txt["a_t"][txt["t_mask"]] > self._RESCALE_MIN).all())

    def level_similarities(self, img: Encoded, txt: Encoded, levels: Sequence[str] = LEVELS) -> dict[str, torch.Tensor]:
        """[n_img, n_txt] matrices of the requested levels: 'ori' (V, T), 'key' (V_hat, T_hat), 'unc' (U, T_hat).

        When both ori and key are asked for and the saliency only rescales tokens (soft masks),
        cos(V_hat, T_hat) = cos(V, T), so both levels share one score tensor (same values, one GEMM).
        """
        kw = dict(combine=self.sim_combine, chunk_elems=self.sim_chunk_elems)
        wx, wy = self._weights(img, txt)
        out: dict[str, torch.Tensor] = {}
        if "ori" in levels and "key" in levels and self._key_is_rescaled(img, txt):
            out["ori"], out["key"] = token_similarity_multi(img["v"], img["mask"], txt["t"], txt["t_mask"],
                                                            [(None, None), (wx, wy)], **kw)
        else:
            if "ori" in levels:
                out["ori"] = token_similarity(img["v"], img["mask"], txt["t"], txt["t_mask"], **kw)
            if "key" in levels:
                out["key"] = token_similarity(img["v_hat"], img["mask"], txt["t_hat"], txt["t_mask"],
                                              x_weight=wx, y_weight=wy, **kw)
        if "unc" in levels:
            u = img["u"]  # [n, K, S, d]: average the matrix over the S draws
            sims = [token_similarity(u[:, :, s], img["u_mask"], txt["t_hat"], txt["t_mask"], y_weight=wy, **kw)
                    for s in range(u.shape[2])]
            out["unc"] = torch.stack(sims).mean(0) if len(sims) > 1 else sims[0]
        unknown = set(levels) - set(LEVELS)
        if unknown:
            raise ValueError(f"unknown level(s) {sorted(unknown)}")
        return out

    def level_similarity(self, img: Encoded, txt: Encoded, level: str) -> torch.Tensor:
        """One level's [n_img, n_txt] matrix."""
        return self.level_similarities(img, txt, (level,))[level]

    def similarity(self, img: Encoded, txt: Encoded) -> torch.Tensor:
        if self.test_similarity != "weighted":
            return self.level_similarity(img, txt, self.test_similarity)
        active = {lv: w for lv, w in self.level_weights.items() if w > 0}
        sims = self.level_similarities(img, txt, tuple(active))
        return sum(w * sims[lv] for lv, w in active.items())

    def pair_similarity(self, img_one: Encoded, txt_one: Encoded, level: str | None = None) -> float:
        """Reference score of one image and one caption (dicts of batch size 1), written per pair.

        level=None gives the same combination as `similarity`; a level name gives that level.
        """
        if level is None:
            if self.test_similarity != "weighted":
                return self.pair_similarity(img_one, txt_one, self.test_similarity)
            return sum(w * self.pair_similarity(img_one, txt_one, lv) for lv, w in self.level_weights.items() if w > 0)
        m, tm, um = img_one["mask"][0], txt_one["t_mask"][0], img_one["u_mask"][0]
        weighted = self.saliency_pooling == "weighted"
        if level == "ori":
            return pair_token_similarity(img_one["v"][0][m], txt_one["t"][0][tm], self.sim_combine)
        wy = txt_one["a_t"][0][tm] if weighted else None
        if level == "key":
            wx = img_one["a_v"][0][m] if weighted else None
            return pair_token_similarity(img_one["v_hat"][0][m], txt_one["t_hat"][0][tm], self.sim_combine, wx, wy)
        if level == "unc":
            u = img_one["u"][0]
            scores = [pair_token_similarity(u[:, s][um], txt_one["t_hat"][0][tm], self.sim_combine, None, wy)
                      for s in range(u.shape[1])]
            return sum(scores) / len(scores)
        raise ValueError(f"unknown level {level!r}")

    # -------------------------------------------------------------------------------------------- loss
    def training_loss(self, img: Encoded, txt: Encoded, positives: torch.Tensor, epoch: int):
        hardest = epoch >= self.warmup_epochs
        parts: dict[str, torch.Tensor] = {}
        total = None
        active = {lv: w for lv, w in self.level_weights.items() if w > 0}
        sims = self.level_similarities(img, txt, tuple(active))
        for level, w in active.items():
            parts[level] = hinge_triplet(sims[level], positives, self.margin, hardest)
            total = w * parts[level] if total is None else total + w * parts[level]
        if self.lambda_recon > 0 and "mu" in img:
            um = img["u_mask"].to(img["mu"].dtype).unsqueeze(-1)
            region_mean = (img["mu"] * um).sum(1) / um.sum(1).clamp(min=1)
            m = img["mask"].to(img["v_hat"].dtype).unsqueeze(-1)
            patch_mean = (img["v_hat"] * m).sum(1) / m.sum(1).clamp(min=1)
            parts["recon"] = recon_loss(region_mean, patch_mean, self.recon_form).sum()
            total = total + self.lambda_recon * parts["recon"]
        if self.lambda_kl > 0 and "logvar" in img:
            parts["kl"] = kl_gaussian(img["mu"], img["logvar"], img["u_mask"], self.kl_form, self.kl_reduction).sum()
            total = total + self.lambda_kl * parts["kl"]
        if self.lambda_ent > 0 and "attn" in img:
            parts["ent"] = attention_entropy(img["attn"], img["mask"], self.ent_form).sum()
            total = total + self.lambda_ent * parts["ent"]
        if self.lambda_div > 0 and "attn" in img:  # only prompt regions: token regions need not differ
            parts["div"] = region_diversity(img["mu"], img["u_mask"]).sum()
            total = total + self.lambda_div * parts["div"]
        # "div" is logged only when on, so the default run's history keeps its columns
        logs = {name: float(parts[name].detach()) if name in parts else 0.0
                for name in ("ori", "key", "unc", "recon", "kl", "ent") + (("div",) if self.lambda_div > 0 else ())}
        logs["total"] = float(total.detach())
        return total, logs
