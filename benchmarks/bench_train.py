"""Training throughput per method, through the real step of fga.train (CPU with 1 thread, or CUDA).

Inputs have the embedded default's shapes: 49 grid tokens of 432-d features (lite0_grid), captions
of about 12 words, batch 128, hardest-negative loss (epoch >= warm-up). Embedding sizes come from
params.yaml's `methods.<name>` sections where present, else embed_dim 256. Prints samples/s per
method and the ratio to vse_mean measured in the same run. `--device cuda` runs the same steps on
the GPU under bf16 autocast (train.amp's default there).

    python benchmarks/bench_train.py [--methods vse_mean grm] [--seconds 6] [--rounds 3] [--batch 128] [--device cuda]

`--quality` instead prints the quality side: test rSum mean +- std over seeds per backbone x method,
read from the metrics.json files of a finished grid run (`make run`: same features, same epoch
budget for every method), and GRM's margin over each baseline.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch
import yaml

from fga.models.registry import build_model, method_section
from fga.train import StoreRegions, TrainStep, optimizer_step

ROOT = Path(__file__).resolve().parent.parent
R, D, VOCAB = 49, 432, 64


def method_cfg(name: str) -> dict:
    cfg = method_section(yaml.safe_load((ROOT / "params.yaml").read_text()), name, backbone="lite0_grid")
    cfg.setdefault("embed_dim", 256)
    return cfg


class Bench:
    """One method's model, optimizer and random inputs; `run(seconds)` times real training steps."""

    def __init__(self, method: str, batch: int, device: torch.device, n_images: int = 512):
        torch.manual_seed(0)
        self.method, self.batch, self.device = method, batch, device
        self.gen = torch.Generator().manual_seed(0)
        regions = torch.randn(n_images, R, D, generator=self.gen).half()
        mask = torch.ones(n_images, R, dtype=torch.bool)
        self.embed_dim = method_cfg(method)["embed_dim"]
        model = build_model(method, method_cfg(method), img_dim=D, vocab_size=VOCAB)
        self.step = TrainStep(model, StoreRegions(regions, mask)).to(device).train()
        self.params = list(model.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=2e-4, weight_decay=1e-4)
        self.scaler = torch.amp.GradScaler(device.type, enabled=False)
        self.autocast = ((lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda"
                         else contextlib.nullcontext)
        self.n_images = n_images
        self.one()  # warm-up (allocations, lazy init)

    def one(self) -> None:
        img_idx = torch.randint(0, self.n_images, (self.batch,), generator=self.gen)
        lengths = torch.randint(8, 17, (self.batch,), generator=self.gen)  # mean 12 words
        tokens = torch.randint(2, VOCAB, (self.batch, int(lengths.max())), generator=self.gen)
        tokens *= torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
        positives = img_idx[:, None] == img_idx[None, :]
        optimizer_step(self.step, self.opt, self.scaler, self.params, 2.0, self.autocast,
                       self.step.source.load(img_idx, None), tokens.to(self.device), lengths.to(self.device),
                       positives.to(self.device), epoch=1)

    def run(self, seconds: float) -> tuple[int, float]:
        n, t0 = 0, time.perf_counter()
        while n < 1 or time.perf_counter() - t0 < seconds:
            self.one()  # optimizer_step reads the loss back, so every step ends synchronised
            n += 1
        return n, time.perf_counter() - t0


def quality_table(results: Path, dataset: str) -> None:
    """Test rSum mean +- std over seeds per (backbone, method) from results/<dataset>/.../metrics.json."""
    runs: dict[tuple[str, str], list[float]] = {}
    for path in sorted(results.glob(f"{dataset}/*/*/seed*/metrics.json")):
        backbone, method = path.parts[-4], path.parts[-3]
        runs.setdefault((backbone, method), []).append(float(json.loads(path.read_text())["rsum"]))
    if not runs:
        raise SystemExit(f"bench_train: no {results}/{dataset}/*/*/seed*/metrics.json; run the grid first (make run)")
    print(f"test rSum on {dataset} (mean +- sample std over seeds), from {results}")
    print(f"{'backbone':<12} {'method':<12} {'seeds':>5} {'rSum':>15} {'GRM - method':>12}")
    for (backbone, method), values in sorted(runs.items()):
        grm = runs.get((backbone, "grm"))
        margin = f"{statistics.mean(grm) - statistics.mean(values):+.1f}" if grm and method != "grm" else ""
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{backbone:<12} {method:<12} {len(values):>5} {statistics.mean(values):>8.1f} +- {std:<4.1f} {margin:>12}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["vse_mean", "vse_inf", "scan", "grm"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=6.0, help="timed seconds per method, over all rounds")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--quality", action="store_true", help="print the grid's rSum table instead of timing")
    ap.add_argument("--results", type=Path, default=ROOT / "results")
    ap.add_argument("--dataset", default="synthetic")
    args = ap.parse_args()
    if args.quality:
        quality_table(args.results, args.dataset)
        return
    torch.set_num_threads(1)
    device = torch.device(args.device)
    methods = args.methods if "vse_mean" in args.methods else ["vse_mean", *args.methods]
    benches = [Bench(m, args.batch, device) for m in methods]
    # rounds interleave the methods, and the best round counts: other load on a shared CPU slows
    # some rounds, never speeds one up
    best: dict[str, float] = {}
    steps: dict[str, int] = {}
    for _ in range(args.rounds):
        for b in benches:
            n, dt = b.run(args.seconds / args.rounds)
            best[b.method] = max(best.get(b.method, 0.0), n * args.batch / dt)
            steps[b.method] = steps.get(b.method, 0) + n
    base = best["vse_mean"]
    where = f"CUDA ({torch.cuda.get_device_name(device)}), bf16 autocast" if device.type == "cuda" else "CPU, 1 thread"
    print(f"training throughput, {where}, batch {args.batch}, R={R} regions x D={D}, ~12 words, "
          f"best of {args.rounds} interleaved rounds (torch {torch.__version__})")
    print(f"{'method':<10} {'embed':>5} {'params(M)':>9} {'steps':>5} {'s/step':>8} {'samples/s':>10} {'vs vse_mean':>11}")
    for b in benches:
        sps = best[b.method]
        print(f"{b.method:<10} {b.embed_dim:>5} {sum(p.numel() for p in b.params) / 1e6:>9.2f} {steps[b.method]:>5} "
              f"{args.batch / sps:>8.3f} {sps:>10.1f} {sps / base:>10.3f}x")


if __name__ == "__main__":
    main()
