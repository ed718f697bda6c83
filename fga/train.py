"""One training loop for every method: seeded, resumable per epoch, CPU or CUDA (+AMP).

Each epoch visits every training caption once with its image, in an order drawn from
(seed, epoch), so a resumed run replays exactly the batches an uninterrupted one would.
After every epoch the model is scored on the validation split and the state is saved
atomically to `last.pt`; the best-val-rSum weights end up in `checkpoint.pt`.
"""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from fga.config import params_hash
from fga.errors import UserError
from fga.evaluate.encode import SplitInputs, caps_per_image, encode_split, load_split
from fga.evaluate.similarity import similarity_matrix
from fga.io import atomic_path
from fga.models.base import RetrievalModel
from fga.models.registry import build_model


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device = cuda but no CUDA device is visible; use device: auto or cpu")
    return torch.device("cuda" if name in ("cuda", "auto") and torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_hash(cfg: dict[str, Any], dataset: str, backbone: str, method: str, seed: int) -> str:
    """What a trained model depends on; a checkpoint with another hash is never resumed or reused."""
    return params_hash({"train": {k: v for k, v in cfg["train"].items() if k != "device"},
                        "method": cfg["methods"].get(method, {}), "features": cfg["features"]["backbones"][backbone],
                        "text": cfg["features"]["text"], "data": cfg["data"].get(dataset, {}),
                        "key": [dataset, backbone, method, seed]})


def load_checkpoint(path: Path) -> dict[str, Any]:
    """torch.load(weights_only=True) with a one-line error for truncated or foreign files."""
    if not path.exists():
        raise UserError(f"{path}: checkpoint not found; run `fga train` for this run first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle of unknown objects, ...
        raise UserError(f"{path}: unreadable checkpoint ({exc.__class__.__name__}); delete it and re-run `fga train`") from None
    if not isinstance(state, dict) or "model" not in state or "meta" not in state:
        raise UserError(f"{path}: not an fga checkpoint; delete it and re-run `fga train`")
    return state


def validation_rsum(model: RetrievalModel, data: SplitInputs, device: torch.device, cfg: dict[str, Any]) -> dict[str, Any]:
    from fga.evaluate.recall import rank_metrics

    img, txt = encode_split(model, data, device)
    sim = similarity_matrix(model, img, txt, cfg["evaluate"]["block_images"], cfg["evaluate"]["block_captions"])
    return rank_metrics(sim, caps_per_image(data))


def build(cfg: dict[str, Any], method: str, data: SplitInputs) -> RetrievalModel:
    from fga.features.text import load_vocab
    from fga.evaluate.encode import paths

    vocab_size = len(load_vocab(paths(data.attrs["dataset"], data.attrs["backbone"])["vocab"]))
    return build_model(method, cfg["methods"].get(method, {}), img_dim=data.regions.shape[-1], vocab_size=vocab_size)


def train(cfg: dict[str, Any], dataset: str, backbone: str, method: str, seed: int, run_dir: Path,
          quiet: bool = False) -> dict[str, Any]:
    """Train one (dataset, backbone, method, seed) run; returns the history logged to MLflow."""
    tc = cfg["train"]
    torch.set_num_threads(tc.get("threads", 1))
    device = pick_device(tc.get("device", "auto"))
    use_amp = tc.get("amp", True) and device.type == "cuda"
    seed_everything(seed)
    train_data = load_split(cfg, dataset, backbone, "train")
    val_data = load_split(cfg, dataset, backbone, "val")
    model = build(cfg, method, train_data).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tc["lr"], weight_decay=tc["weight_decay"])
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=tc.get("lr_milestones", []), gamma=tc["lr_gamma"])
    key_hash = run_hash(cfg, dataset, backbone, method, seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = run_dir / "last.pt", run_dir / "checkpoint.pt"

    start_epoch, best, history = 0, {"rsum": -1.0, "epoch": -1}, []
    best_state = None
    if last_path.exists():
        state = load_checkpoint(last_path)
        if state["meta"].get("run_hash") == key_hash:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            start_epoch, best, history = state["meta"]["epoch"] + 1, state["meta"]["best"], state["meta"]["history"]
            best_state = state["best_model"]
            if not quiet:
                print(f"resuming {run_dir} at epoch {start_epoch}")

    caps = caps_per_image(train_data)
    n_pairs = len(train_data.tokens)
    bs = min(tc["batch_size"], n_pairs)  # tiny configs: one batch of everything
    for epoch in range(start_epoch, tc["epochs"]):
        model.train()
        order = torch.randperm(n_pairs, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        sums: dict[str, float] = {}
        t0 = time.time()
        bar = tqdm(range(0, n_pairs - bs + 1, bs), desc=f"{method} epoch {epoch}", unit="batch", disable=quiet)
        for i in bar:
            cap_idx = order[i : i + bs]
            img_idx = cap_idx // caps
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                img = model.encode_image(train_data.regions[img_idx].to(device).float(), train_data.mask[img_idx].to(device))
                lengths = train_data.lengths[cap_idx]
                txt = model.encode_text(train_data.tokens[cap_idx, : int(lengths.max())].to(device), lengths.to(device))
                positives = (img_idx[:, None] == img_idx[None, :]).to(device)
                loss, parts = model.training_loss(img, txt, positives, epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tc.get("grad_clip", 0) > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc["grad_clip"])
            opt.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{loss.item():.3f}")
        sched.step()
        n_batches = max(1, n_pairs // bs)
        val = validation_rsum(model, val_data, device, cfg)
        row = {"epoch": epoch, "val_rsum": val["rsum"], "seconds": time.time() - t0,
               "samples_per_s": n_batches * bs / max(time.time() - t0, 1e-9),
               **{f"loss_{k}": v / n_batches for k, v in sums.items()}}
        history.append(row)
        print(f"epoch {epoch}: " + " ".join(f"{k}={v:.3f}" for k, v in row.items() if k != "epoch"), flush=True)
        if val["rsum"] > best["rsum"]:
            best = {"rsum": val["rsum"], "epoch": epoch}
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        with atomic_path(last_path) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "torch_rng": torch.get_rng_state(), "best_model": best_state,
                        "meta": {"run_hash": key_hash, "epoch": epoch, "best": best, "history": history}}, tmp)

    meta = {"run_hash": key_hash, "dataset": dataset, "backbone": backbone, "method": method, "seed": seed,
            "best": best, "history": history, "img_dim": int(train_data.regions.shape[-1])}
    with atomic_path(best_path) as tmp:
        torch.save({"model": best_state, "meta": meta}, tmp)
    return meta
