"""Speed of the blocked similarity matrix (fga.evaluate.similarity) for GRM and SCAN.

Two ratios, both measured in the same run on the same inputs, at the embedded default's shapes
(49 grid tokens per image, captions of ~12 words, embed_dim 256; GRM with K = 5 prompts):

1. speed-up: pairs/s of the batched kernel (one call per block, blocks from the memory budget)
   over pairs/s of the per-pair reference loop (`reference_similarity_matrix`, each model's
   `pair_similarity`). Target >= 50x.
2. efficiency: achieved GFLOP/s of the kernel as a share of a plain matmul of the same size.
   The kernel's FLOPs are its matrix products: GRM 2*d*L*(R + K) per pair (the ori/key token
   scores share one product under soft saliency, plus the K uncertain regions); SCAN t2i
   2*d*R*L + 2*R*R*L (scores + the Gram-weighted attention norms), i2t 2*d*R*L + 2*L*L*R.
   FLOPs are counted on the real words of each caption (padding is not useful work). The plain
   matmul is the block's score GEMM, [b_img*R, d] @ [d, b_cap*mean(L)], over the same pairs.
   Target >= 30%.

Run: `python benchmarks/bench_similarity.py [--images 128 --captions 640 --threads 1]`.
Times are the best of --repeats runs (the machine may be shared).
"""
from __future__ import annotations

import argparse
import time

import torch

from fga.evaluate.similarity import plan_blocks, reference_similarity_matrix, similarity_matrix
from fga.models.base import slice_encoded
from fga.models.grm import GRM
from fga.models.scan import SCAN

R_TOKENS, WORDS, EMBED, IMG_DIM, VOCAB, PROMPTS = 49, 12, 256, 320, 1000, 5


def inputs(model, n_img: int, n_cap: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    regions = torch.randn(n_img, R_TOKENS, IMG_DIM, generator=g)
    mask = torch.ones(n_img, R_TOKENS, dtype=torch.bool)
    lengths = torch.randint(WORDS - 4, WORDS + 5, (n_cap,), generator=g)  # 8..16 words, mean 12
    tokens = torch.randint(2, VOCAB, (n_cap, int(lengths.max())), generator=g)
    tokens[torch.arange(tokens.shape[1])[None] >= lengths[:, None]] = 0
    with torch.no_grad():
        return model.encode_image(regions, mask), model.encode_text(tokens, lengths)


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def flops_per_pair(name: str, r: int, l: int, d: int) -> float:
    if name == "GRM":
        return 2.0 * d * l * (r + PROMPTS)
    if name == "SCAN t2i":
        return 2.0 * d * r * l + 2.0 * r * r * l
    return 2.0 * d * r * l + 2.0 * l * l * r


def bench(name: str, model, n_img: int, n_cap: int, ref_pairs: tuple[int, int], repeats: int,
          budget_mb: float) -> dict:
    model.eval()
    img, txt = inputs(model, n_img, n_cap)
    r = img["v"].shape[1] if "v" in img else img["regions"].shape[1]
    words = (txt["t_mask"] if "t_mask" in txt else txt["w_mask"]).sum(dim=1).double()  # real words per caption
    plan = plan_blocks(model, img, txt, budget_mb)
    pairs = n_img * n_cap
    t_kernel = best_time(lambda: similarity_matrix(model, img, txt, plan.block_images, plan.block_captions,
                                                   memory_budget_mb=budget_mb), repeats)

    ri, rc = ref_pairs
    sub_img, sub_txt = slice_encoded(img, slice(0, ri)), slice_encoded(txt, slice(0, rc))
    t_ref = best_time(lambda: reference_similarity_matrix(model, sub_img, sub_txt), repeats)

    # FLOPs on the real words only (padding is not useful work)
    kernel_flops = n_img * float(sum(flops_per_pair(name, r, int(l), EMBED) for l in words.tolist()))
    # the same pairs as plain score GEMMs of the block's size: [bi*R, d] @ [d, bc*mean words]
    bi, bc = plan.block_images, plan.block_captions
    cols = max(1, round(bc * float(words.mean())))
    a = torch.randn(bi * r, EMBED)
    b = torch.randn(EMBED, cols)
    n_calls = -(-n_img // bi) * -(-n_cap // bc)

    def matmuls():
        for _ in range(n_calls):
            torch.mm(a, b)

    t_mm = best_time(matmuls, repeats)
    mm_gflops = 2.0 * EMBED * bi * r * cols * n_calls / t_mm / 1e9
    kernel_gflops = kernel_flops / t_kernel / 1e9
    return {"name": name, "pairs": pairs, "block": (bi, bc), "kernel_pairs_s": pairs / t_kernel,
            "ref_pairs_s": ri * rc / t_ref, "speedup": (pairs / t_kernel) / (ri * rc / t_ref),
            "kernel_gflops": kernel_gflops, "matmul_gflops": mm_gflops, "share": kernel_gflops / mm_gflops,
            "r": r, "l": float(words.mean()), "l_max": int(words.max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--captions", type=int, default=640)
    ap.add_argument("--ref-images", type=int, default=8)
    ap.add_argument("--ref-captions", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-budget-mb", type=float, default=4096)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    models = [("GRM", GRM(IMG_DIM, VOCAB, embed_dim=EMBED, num_prompts=PROMPTS)),
              ("SCAN t2i", SCAN(IMG_DIM, VOCAB, embed_dim=EMBED, direction="t2i")),
              ("SCAN i2t", SCAN(IMG_DIM, VOCAB, embed_dim=EMBED, direction="i2t"))]
    print(f"torch {torch.__version__}, {a.threads} thread(s), {a.images} images x {a.captions} captions "
          f"(reference loop: {a.ref_images} x {a.ref_captions}), best of {a.repeats}")
    ok = True
    for name, model in models:
        res = bench(name, model, a.images, a.captions, (a.ref_images, a.ref_captions), a.repeats, a.memory_budget_mb)
        fast, eff = res["speedup"] >= 50, res["share"] >= 0.30
        ok &= fast and eff
        print(f"{name:9s} R={res['r']} L={res['l']:.1f} (max {res['l_max']}) blocks {res['block'][0]}x{res['block'][1]}: "
              f"batched {res['kernel_pairs_s']:.3g} pairs/s vs per-pair {res['ref_pairs_s']:.3g} pairs/s "
              f"-> speed-up {res['speedup']:.0f}x (target >= 50x: {'ok' if fast else 'MISSED'}); "
              f"{res['kernel_gflops']:.1f} GFLOP/s vs plain matmul {res['matmul_gflops']:.1f} GFLOP/s "
              f"-> {100 * res['share']:.0f}% (target >= 30%: {'ok' if eff else 'MISSED'})")
    print("all targets met" if ok else "some targets missed")


if __name__ == "__main__":
    main()
