"""A COCO-5K-sized evaluation on the CPU: time and peak memory of fga's blocked similarity matrix
(fga.evaluate.similarity) for 5,000 test images x 25,000 captions, next to the matmul bound for the same FLOPs.

Settings (token counts of the images; captions of 8-16 words, mean 12, as COCO's ~11):
  lite0_grid  36 tokens (the default grid backbone), embed_dim 128 (params.yaml)
  lite0_roi   12 regions (the default ROI backbone), embed_dim 128
  paper       197 tokens (ViT-B/16 at 224 px: 196 patches + CLS), embed_dim 512 (the papers' size)
for GRM and SCAN (t2i), each with params.yaml's other options, random weights and inputs (speed does not depend
on them). The encodings are real (the model's encoders over random features and word ids), the whole matrix is
streamed in blocks planned from evaluate.memory_budget_mb (default 4096 MB) and written into the
[5,000, 25,000] float32 result, as `fga evaluate` does.

On a shared 2-core machine the full size takes hours for the paper setting, so by default each run scores all
25,000 captions against a measured share of the images (--gflop sets how much work that is) and extrapolates
linearly in the images (every image row costs the same); the output says "projected" for those figures. Peak RSS is
each run's own process (ru_maxrss); the projection adds the encodings and result rows of the images not measured.
The matmul bound is the time a plain GEMM of the block's shape ([b_img*R, d] @ [d, b_cap*mean(L)]) needs for the
same FLOPs on the same threads.

    python benchmarks/bench_coco5k.py [--threads 2] [--gflop 300] [--settings lite0_grid paper] [--methods grm scan]
    python benchmarks/bench_coco5k.py --full        # all 5,000 images, no extrapolation
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_similarity import cpu_model, flops_per_pair  # noqa: E402  (the same FLOP count as the kernel bench)

ROOT = Path(__file__).resolve().parent.parent
N_IMAGES, N_CAPTIONS, VOCAB = 5000, 25000, 10000
MIN_WORDS, MAX_WORDS = 8, 16
MEMORY_LIMIT_GIB = 24
SETTINGS = {"lite0_grid": {"tokens": 36, "img_dim": 320, "embed_dim": 128},
            "lite0_roi": {"tokens": 12, "img_dim": 320, "embed_dim": 128},
            "paper": {"tokens": 197, "img_dim": 768, "embed_dim": 512}}
KERNEL_NAME = {"grm": "GRM", "scan": "SCAN t2i"}  # bench_similarity's FLOP formulas
ENCODE_CHUNK = 500


def build(method: str, setting: dict, options: dict | None = None):
    """`method` with params.yaml's options, the setting's embed_dim and `options` on top, in eval mode."""
    from fga.config import load_params
    from fga.models.registry import build_model, method_section

    cfg = load_params(str(ROOT / "params.yaml"), [])
    options = {**method_section(cfg, method), "embed_dim": setting["embed_dim"], **(options or {})}
    return build_model(method, options, img_dim=setting["img_dim"], vocab_size=VOCAB).eval()


def _cat(parts: list[dict]) -> dict:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


@torch.no_grad()
def encode_captions(model, seed: int = 0, n: int = N_CAPTIONS,
                    words_range: tuple[int, int] = (MIN_WORDS, MAX_WORDS)) -> tuple[dict, float]:
    """The encodings of n (default 25,000) random captions of 8-16 words (or `words_range`), and the seconds they took."""
    lo, hi = words_range
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi + 1, (n,), generator=g)
    t0 = time.perf_counter()
    parts = []
    for i in range(0, n, ENCODE_CHUNK):
        ln = lengths[i:i + ENCODE_CHUNK]
        words = torch.randint(2, VOCAB, (len(ln), hi), generator=g)
        words[torch.arange(hi)[None] >= ln[:, None]] = 0
        parts.append(model.encode_text(words, ln))
    return _cat(parts), time.perf_counter() - t0


@torch.no_grad()
def encode_images(model, n_img: int, tokens: int, img_dim: int, seed: int = 1) -> tuple[dict, float]:
    """The encodings of n_img images of random region features, and the seconds they took."""
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    parts = []
    for i in range(0, n_img, ENCODE_CHUNK):
        b = min(ENCODE_CHUNK, n_img - i)
        regions = torch.randn(b, tokens, img_dim, generator=g)
        parts.append(model.encode_image(regions, torch.ones(b, tokens, dtype=torch.bool)))
    return _cat(parts), time.perf_counter() - t0


def full_size_block_images(model, one_img: dict, txt: dict, budget_mb: float) -> int:
    """Images per block of the 5,000-image plan (a shapes-only plan: meta tensors hold no memory)."""
    from fga.evaluate.similarity import plan_blocks

    meta = {k: torch.empty((N_IMAGES, *v.shape[1:]), dtype=v.dtype, device="meta") for k, v in one_img.items()}
    return plan_blocks(model, meta, txt, budget_mb, device=torch.device("cpu")).block_images


def encoded_bytes(enc: dict) -> int:
    return sum(v.numel() * v.element_size() for v in enc.values())


def matmul_gflops(bi: int, bc: int, r: int, mean_words: float, d: int, seconds: float = 2.0) -> float:
    """GFLOP/s of the block's plain score GEMM, repeated for about `seconds` (best of three rounds)."""
    a, b = torch.randn(bi * r, d), torch.randn(d, max(1, round(bc * mean_words)))
    flops = 2.0 * a.shape[0] * d * b.shape[1]
    torch.mm(a, b)
    t0 = time.perf_counter()
    torch.mm(a, b)
    reps = max(1, int(seconds / 3 / max(time.perf_counter() - t0, 1e-6)))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        best = min(best, (time.perf_counter() - t0) / reps)
    return flops / best / 1e9


def measure(setting_name: str, method: str, n_img: int, budget_mb: float, *, setting: dict | None = None,
            options: dict | None = None, n_captions: int = N_CAPTIONS) -> dict:
    """One run in this process: encode, score n_img x n_captions (default 25,000), and the figures to project it
    to 5,000 images. `setting` (default SETTINGS[setting_name]) may give `words` = (min, max) words per caption;
    `options` override the method's constructor options."""
    from fga.evaluate.similarity import plan_blocks, similarity_matrix

    setting = setting or SETTINGS[setting_name]
    torch.manual_seed(0)
    model = build(method, setting, options)
    txt, t_txt = encode_captions(model, n=n_captions, words_range=tuple(setting.get("words", (MIN_WORDS, MAX_WORDS))))
    one, _ = encode_images(model, 1, setting["tokens"], setting["img_dim"])
    # at least one full block of the full-size plan: fewer images would also mean smaller, slower blocks
    n_img = min(N_IMAGES, max(n_img, full_size_block_images(model, one, txt, budget_mb)))
    img, t_img = encode_images(model, n_img, setting["tokens"], setting["img_dim"])
    plan = plan_blocks(model, img, txt, budget_mb)
    t0 = time.perf_counter()
    sim = similarity_matrix(model, img, txt, memory_budget_mb=budget_mb)
    t_sim = time.perf_counter() - t0
    mask = txt["t_mask"] if "t_mask" in txt else txt["w_mask"]
    words = mask.sum(dim=1).tolist()
    r, d = setting["tokens"], setting["embed_dim"]
    flops_per_image = float(sum(flops_per_pair(KERNEL_NAME[method], r, int(w), d) for w in words))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"setting": setting_name, "method": method, "images": n_img, "tokens": r, "embed_dim": d,
            "mean_words": sum(words) / len(words), "block": [plan.block_images, plan.block_captions],
            "sim_s": t_sim, "encode_images_s": t_img, "encode_captions_s": t_txt, "flops_per_image": flops_per_image,
            "matmul_gflops": matmul_gflops(plan.block_images, plan.block_captions, r, sum(words) / len(words), d),
            "peak_rss": peak, "image_bytes_per_image": encoded_bytes(img) / n_img, "result_bytes": sim.nbytes,
            "captions": n_captions, "caption_bytes_per_caption": encoded_bytes(txt) / n_captions,
            "finite": bool(torch.isfinite(torch.from_numpy(sim)).all())}


def project(m: dict) -> dict:
    """The full 5,000-image figures from a run over m['images'] of them (identity when it was the full size)."""
    scale = N_IMAGES / m["images"]
    missing = N_IMAGES - m["images"]
    flops = m["flops_per_image"] * N_IMAGES
    return {"sim_s": m["sim_s"] * scale, "encode_s": m["encode_images_s"] * scale + m["encode_captions_s"],
            "flops": flops, "bound_s": flops / (m["matmul_gflops"] * 1e9),
            "peak_rss": m["peak_rss"] + missing * (m["image_bytes_per_image"] + N_CAPTIONS * 4),
            "projected": missing > 0}


def child(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    print(json.dumps(measure(args.one[0], args.one[1], int(args.one[2]), args.memory_budget_mb)))
    return 0


def images_for(setting: str, method: str, gflop: float, full: bool) -> int:
    """How many image rows to score: all of them with --full, else about `gflop` GFLOP of kernel work."""
    if full:
        return N_IMAGES
    s = SETTINGS[setting]
    mean_words = (MIN_WORDS + MAX_WORDS) / 2
    per_image = N_CAPTIONS * flops_per_pair(KERNEL_NAME[method], s["tokens"], round(mean_words), s["embed_dim"])
    return max(1, min(N_IMAGES, int(gflop * 1e9 / per_image)))


def run_one(setting: str, method: str, n_img: int, a: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--one", setting, method, str(n_img), "--threads", str(a.threads),
           "--memory-budget-mb", str(a.memory_budget_mb)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"{setting} {method} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(m: dict) -> str:
    p = project(m)
    tag = f"projected from {m['images']} of {N_IMAGES} images" if p["projected"] else "measured, full size"
    gib = p["peak_rss"] / 2 ** 30
    return (f"{m['setting']:<10} {m['method']:<4} R={m['tokens']:<3} d={m['embed_dim']:<3} "
            f"blocks {m['block'][0]}x{m['block'][1]}: similarity {p['sim_s']:8.0f} s "
            f"(matmul bound {p['bound_s']:6.0f} s for {p['flops'] / 1e12:.1f} TFLOP at {m['matmul_gflops']:.1f} GFLOP/s "
            f"-> {p['bound_s'] / p['sim_s']:.0%} of it), encoding {p['encode_s']:5.0f} s, peak RSS {gib:5.1f} GiB "
            f"({'within' if gib <= MEMORY_LIMIT_GIB else 'OVER'} {MEMORY_LIMIT_GIB} GiB) [{tag}; "
            f"measured {m['sim_s']:.1f} s, {m['peak_rss'] / 2 ** 30:.2f} GiB]")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--methods", nargs="+", default=["grm", "scan"], choices=list(KERNEL_NAME))
    ap.add_argument("--gflop", type=float, default=300.0, help="kernel work measured per run (default 300 GFLOP)")
    ap.add_argument("--full", action="store_true", help="score all 5,000 images (hours for the paper setting)")
    ap.add_argument("--memory-budget-mb", type=float, default=4096)
    ap.add_argument("--one", nargs=3, metavar=("SETTING", "METHOD", "IMAGES"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:
        return child(a)
    print(f"COCO-5K size ({N_IMAGES:,} images x {N_CAPTIONS:,} captions) on {cpu_model()}, {a.threads} thread(s), "
          f"torch {torch.__version__}, block budget {a.memory_budget_mb:.0f} MB; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    for setting in a.settings:
        for method in a.methods:
            m = run_one(setting, method, images_for(setting, method, a.gflop, a.full), a)
            print(report(m), flush=True)
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
