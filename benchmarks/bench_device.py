"""Training and evaluation on a CUDA GPU against the CPU: wall time and metric agreement.

Each method is trained and evaluated with the same params and seed on the CPU (the reference) and on
the GPU in fp32, bf16 autocast and fp16 autocast + GradScaler; bf16 runs twice to show the GPU's
run-to-run spread (CUDA's index/scatter backward kernels are not bitwise deterministic). Prints the
wall time of every train and evaluate call, the test rSum and its difference from the CPU run: the
GPU tolerance docs/reproducibility.md documents. `--finetune-epochs N` adds finetune mode (images in, the timm
backbone trained at 0.1x lr) for the first method on the GPU.

    python benchmarks/bench_device.py [--dataset synthetic] [--backbone lite0_roi] \
        [--methods grm scan vse_inf] [--seed 0] [--finetune-epochs 1]

Needs the dataset and the backbone's feature store, e.g. `snakemake features/synthetic/lite0_roi/test.h5`.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fga.config import apply_overrides, load_params
from fga.evaluate.run import evaluate
from fga.train import train

ROOT = Path(__file__).resolve().parent.parent
VARIANTS: dict[str, list[str]] = {
    "cpu": ["train.device=cpu"],
    "cuda fp32": ["train.device=cuda", "train.amp=false"],
    "cuda bf16": ["train.device=cuda", "train.amp=true", "train.amp_dtype=bf16"],
    "cuda bf16 (again)": ["train.device=cuda", "train.amp=true", "train.amp_dtype=bf16"],
    "cuda fp16": ["train.device=cuda", "train.amp=true", "train.amp_dtype=fp16"],
}


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def train_and_evaluate(cfg: dict[str, Any], dataset: str, backbone: str, method: str, seed: int,
                       run_dir: Path) -> dict[str, float]:
    """One fresh training run and its test evaluation; wall seconds of each and the test rSum."""
    t0 = time.perf_counter()
    meta = train(cfg, dataset, backbone, method, seed, run_dir, quiet=True)
    _synchronize()
    t1 = time.perf_counter()
    metrics = evaluate(cfg, dataset, backbone, method, seed, run_dir / "checkpoint.safetensors", quiet=True)
    _synchronize()
    t2 = time.perf_counter()
    return {"train_s": t1 - t0, "eval_s": t2 - t1, "rsum": metrics["rsum"], "val_rsum": meta["best"]["rsum"],
            "skipped": sum(row.get("skipped_steps", 0) for row in meta["history"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--backbone", default="lite0_roi")
    ap.add_argument("--methods", nargs="+", default=["grm", "scan", "vse_inf"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--finetune-epochs", type=int, default=0, help="also run finetune mode on the GPU (0: skip)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="params override for every run")
    args = ap.parse_args()
    if (args.finetune_epochs or any("cuda" in v for v in args.variants)) and not torch.cuda.is_available():
        raise SystemExit("bench_device: no CUDA device visible; run it where there is one, or with --variants cpu")
    cfg = load_params(args.params, args.set)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    print(f"device: {gpu}, torch {torch.__version__}, CUDA {torch.version.cuda}; "
          f"{args.dataset}/{args.backbone}, seed {args.seed}, {cfg['train']['epochs']} epochs, "
          f"batch {cfg['train']['batch_size']}, CPU threads {cfg['train'].get('threads', 1)}", flush=True)
    rows: list[tuple[str, str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="fga-bench-device-") as tmp:
        jobs = [(m, v, VARIANTS[v]) for m in args.methods for v in args.variants]
        if args.finetune_epochs:
            jobs.append((args.methods[0], "cuda bf16 finetune",
                         [*VARIANTS["cuda bf16"], "train.mode=finetune", f"train.epochs={args.finetune_epochs}"]))
        for i, (method, variant, overrides) in enumerate(jobs):
            run_cfg = apply_overrides(cfg, overrides)
            result = train_and_evaluate(run_cfg, args.dataset, args.backbone, method, args.seed,
                                        Path(tmp) / f"run{i}")
            rows.append((method, variant, result))
            print(f"{method:<8} {variant:<20} train {result['train_s']:7.1f} s  evaluate {result['eval_s']:6.1f} s  "
                  f"test rSum {result['rsum']:6.1f}  fp16 steps skipped {result['skipped']}", flush=True)

    print(f"\n{'method':<8} {'variant':<20} {'train s':>8} {'eval s':>7} {'train vs cpu':>12} "
          f"{'val rSum':>8} {'test rSum':>9} {'Δ vs cpu':>8}")
    for method, variant, r in rows:
        cpu = next((c for m, v, c in rows if m == method and v == "cpu"), None)
        speed = f"{cpu['train_s'] / r['train_s']:.1f}x" if cpu else "-"
        delta = f"{r['rsum'] - cpu['rsum']:+.1f}" if cpu and "finetune" not in variant else "-"
        print(f"{method:<8} {variant:<20} {r['train_s']:8.1f} {r['eval_s']:7.1f} {speed:>12} "
              f"{r['val_rsum']:8.1f} {r['rsum']:9.1f} {delta:>8}")


if __name__ == "__main__":
    main()
