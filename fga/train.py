"""The training stage: one loop for every method and both modes, seeded, exactly resumable, CPU or CUDA (+AMP), DDP.

    set up: inputs, model, optimizer, scheduler, GradScaler; resume from last.pt if it is this run's
    for each epoch: train steps, validate (rank 0), save last.pt
    finally: the best-val-rSum weights -> checkpoint.safetensors

Batches (fga.batches). Each epoch visits every training caption once with its image, in an order
drawn from (seed, epoch). Everything random about a global batch that the loop itself adds (token
perturbation, image augmentation seeds in finetune mode) is drawn from a generator seeded by
(seed, epoch, step), so it does not depend on the RNG state, the number of DDP ranks or loader
workers. Randomness *inside* a model (GRM's Gumbel and uncertainty samples, VSE-infinity's size
augmentation) uses the global torch RNG.

Modes (`train.mode`). `frozen_features` (default) reads region features from the HDF5 store;
`finetune` (the papers' setting) reads images and captions and runs the timm backbone of
`features.backbones.<backbone>` inside the training graph, in its own AdamW param group at
`train.backbone_lr_scale` x lr, with RandomResizedCrop + flip for training images
(fga/finetune.py). The only difference between the modes is the *region source* that turns a
batch's image indices into regions + mask (`StoreRegions` here, `fga.finetune.BackboneRegions`);
the loop, the loss, checkpointing and DDP are shared. The caption side follows `train.text_encoder`
(fga.models.text_encoder): the BiGRU over vocabulary ids (default), a transformer's cached word-piece
features (frozen_features), or a transformer trained in the model (finetune; its parameters join the
backbone's AdamW group). `train.token_perturb` (per mode: 0.2 in finetune, the LAPS setting; 0.0 in
frozen_features, the CPU default's setting) replaces each token of a training caption, with that
probability, by <unk> (id 1; [MASK] for word pieces), a random word (piece), or drops it, with equal
chance (fga.batches.perturb_tokens); cached transformer features have no ids to perturb (rate 0 there).

Checkpoints and exact resume (fga.checkpoint). After every epoch (rank 0, after validation)
`last.pt` is written atomically with the model, region source (backbone), optimizer, scheduler,
AMP GradScaler, the RNG states of every rank (torch CPU, CUDA, numpy, python `random`), the epoch,
the best validation rSum and weights so far and the history. A killed run restarts the interrupted
epoch from its beginning with the state of the end of the previous epoch, which reproduces an
uninterrupted run bit for bit on the CPU (tests/test_train.py kills one mid-epoch). A truncated or
foreign `last.pt` is a one-line UserError and is left in place; a `last.pt` of other params
(another run hash) is replaced. The best-val-rSum weights end up in `checkpoint.safetensors` (with
the region source's weights in finetune mode), its metadata the run's params, hash and history
without wall-clock times: the same params and seed give the same bytes. `train` returns the full
history, per-epoch seconds and samples/s included, for MLflow.

Determinism and tolerance. On the CPU the same params and seed give identical metrics (tests
check bit equality of two runs). On CUDA cuDNN is put in deterministic mode; measured on an H200
(benchmarks/bench_device.py, embedded default, lite0_roi, seed 0) two bf16 runs gave identical
metrics, and GPU runs (fp32, bf16, fp16) differed from the CPU run by 0.2-1.4 test rSum for GRM and
VSE-infinity and by 1-9 rSum for SCAN (inside SCAN's seed-to-seed spread). fp16 uses a GradScaler
starting at `train.fp16_init_scale` (8): the losses are sums over the batch, so at PyTorch's
default 2**16 the first 6-15 steps overflow and are skipped (each skip is counted in the epoch's
`skipped_steps`), which cost 13-21 rSum.

DDP (torchrun, fga.distributed). With WORLD_SIZE > 1 the step module (model + region source) is
wrapped in DistributedDataParallel. Each global batch (`train.batch_size`, same order as one
process) is split into equal contiguous slices, one per rank; every rank encodes its slice, the
encoded image and text dicts are all-gathered with an autograd-preserving gather, and every rank
computes the loss on the full global similarity. That gather's backward sums the W identical
losses' gradients (W x the one-process gradient of the rank's own slice) and DDP averages over the
W ranks, so the parameter gradients equal the one-process gradients on the whole batch
(tests/test_train.py checks loss, grad norm and update with 2 gloo processes). Only model-internal
noise (drawn per rank) and BatchNorm statistics on the CPU (SyncBatchNorm is used on CUDA only)
differ from one process. Rank 0 validates and writes checkpoints; every rank returns the same history.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from fga.batches import Batching, TokenNoise, load_batches, token_perturb_rate
from fga.checkpoint import (CHECKPOINT_FILE, RESUME_FILE, load_resume_state, remove_partial_saves, save_checkpoint,
                            save_resume_state)
from fga.device import Precision, make_deterministic
from fga.distributed import DistContext, gather_encoded
from fga.encoding import encode_split
from fga.errors import UserError
from fga.evaluate.recall import rank_metrics
from fga.evaluate.similarity import similarity_matrix
from fga.finetune import finetune_sources
from fga.features.text import load_tokenizer
from fga.grid import run_text_encoder
from fga.inputs import SplitInputs, caption_inputs, caps_per_image, load_split, text_encoder_spec, vocab_size
from fga.models.base import RetrievalModel
from fga.models.text_encoder import backbone_parameters
from fga.rng import capture_rng, restore_rng, seed_everything
from fga.runs import build_for, run_hash, run_params

MODES = ("frozen_features", "finetune")
WALL_CLOCK = ("seconds", "samples_per_s")  # history columns kept out of checkpoint.safetensors


def train(cfg: dict[str, Any], dataset: str, backbone: str, method: str, seed: int, run_dir: Path,
          quiet: bool = False) -> dict[str, Any]:
    """Train one (dataset, backbone, method, seed) run; returns the history logged to MLflow."""
    tc = cfg["train"]
    mode = tc.get("mode", "frozen_features")
    if mode not in MODES:
        raise UserError(f"train.mode = {mode!r}; allowed: {', '.join(MODES)}")
    text_encoder_spec(cfg)  # a bad train.text_encoder / model_dir fails before anything is loaded
    torch.set_num_threads(tc.get("threads", 1))
    ctx, device = DistContext.from_env(tc.get("device", "auto"))
    try:
        return _train(cfg, dataset, backbone, method, seed, Path(run_dir), quiet or not ctx.main, mode, ctx, device)
    finally:
        ctx.close()


def _train(cfg: dict[str, Any], dataset: str, backbone: str, method: str, seed: int, run_dir: Path, quiet: bool,
           mode: str, ctx: DistContext, device: torch.device) -> dict[str, Any]:
    tc = cfg["train"]
    key = run_hash(cfg, dataset, backbone, method, seed)
    precision = Precision.from_config(tc, device)
    make_deterministic(device)
    seed_everything(seed)
    inputs = (finetune_inputs if mode == "finetune" else frozen_inputs)(cfg, dataset, backbone)
    learner = build_learner(cfg, method, dataset, backbone, inputs, precision, ctx, device, seed)
    progress = resume(learner, run_dir / RESUME_FILE, key, ctx, quiet)
    runner = ctx.wrap(learner.step, device)
    batching = batching_for(cfg, dataset, backbone, mode, inputs, seed, ctx)
    workers = int(tc.get("num_workers", 0)) if mode == "finetune" else 0
    if ctx.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_partial_saves(run_dir)

    for epoch in range(progress.next_epoch, tc["epochs"]):
        stats = train_epoch(runner, learner, batching, epoch, workers, f"{method} epoch {epoch}", quiet)
        learner.scheduler.step()
        row = validate_epoch(learner, inputs, cfg, epoch, stats, batching.batch_size) if ctx.main else None
        rngs = ctx.all_gather_object(capture_rng())  # after validation: what the next epoch starts from
        progress.record(ctx.broadcast_object(row), learner, keep_weights=ctx.main)
        if ctx.main:
            save_resume_state(run_dir / RESUME_FILE, resume_state(learner, progress, rngs, key, mode, ctx.world))

    meta = {"run_hash": key, "dataset": dataset, "backbone": backbone, "method": method, "seed": seed,
            "best": progress.best, "history": progress.history, "img_dim": inputs.img_dim, "mode": mode,
            "text_encoder": run_text_encoder(cfg), "world_size": ctx.world, "rank": ctx.rank}
    if ctx.main:
        save_checkpoint(run_dir / CHECKPOINT_FILE, progress.best_model or {}, progress.best_source,
                        checkpoint_meta(meta, run_params(cfg, dataset, backbone, method, seed)))
    ctx.barrier()  # no rank returns (and e.g. reads the checkpoint) before rank 0 wrote it
    return meta


# ------------------------------------------------------------------------------------- region sources


class StoreRegions(nn.Module):
    """Region source of the frozen_features mode: rows of the feature store (no parameters)."""

    augments = False

    def __init__(self, regions: torch.Tensor, mask: torch.Tensor):
        super().__init__()
        self.store_regions, self.store_mask = regions, mask  # plain attributes: never in a state_dict

    @property
    def n_regions(self) -> int:
        return self.store_regions.shape[1]

    def load(self, img_idx: torch.Tensor, aug_seeds: torch.Tensor | None) -> dict[str, Any]:
        return {"regions": self.store_regions[img_idx], "mask": self.store_mask[img_idx]}

    def forward(self, batch: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return batch["regions"].to(device, non_blocking=True).float(), batch["mask"].to(device, non_blocking=True)


@dataclass
class Inputs:
    """What the loop needs of the data, whichever the mode."""

    train: SplitInputs  # captions of the train split (regions: the store's, or empty in finetune mode)
    source: nn.Module  # train region source
    val: Callable[[torch.device], SplitInputs]  # the val split with its current regions
    img_dim: int


def frozen_inputs(cfg: dict[str, Any], dataset: str, backbone: str) -> Inputs:
    train_data = load_split(cfg, dataset, backbone, "train")
    val_data = load_split(cfg, dataset, backbone, "val")
    return Inputs(train_data, StoreRegions(train_data.regions, train_data.mask), lambda device: val_data,
                  int(train_data.regions.shape[-1]))


def finetune_inputs(cfg: dict[str, Any], dataset: str, backbone: str) -> Inputs:
    net, sources = finetune_sources(cfg, dataset, backbone)
    attrs = {"weights_source": net.weights_source, "region_source": net.regions, "mode": "finetune"}
    empty = torch.zeros(0, net.n_regions, net.feature_dim)
    train_data = caption_inputs(cfg, dataset, backbone, "train", empty, empty[..., 0].bool(), attrs)
    train_data.image_ids = [im["id"] for im in sources["train"].split.images]

    def val(device: torch.device) -> SplitInputs:
        regions, mask = sources["val"].all_regions(device)
        return caption_inputs(cfg, dataset, backbone, "val", regions, mask, attrs)

    return Inputs(train_data, sources["train"], val, net.feature_dim)


def token_noise(cfg: dict[str, Any], dataset: str, backbone: str) -> TokenNoise:
    """What caption perturbation writes for the run's text encoder: vocabulary words or the tokenizer's word pieces."""
    spec = text_encoder_spec(cfg)
    if spec.runs_transformer:
        return TokenNoise.word_pieces(load_tokenizer(spec.model_dir))
    return TokenNoise.words(vocab_size(dataset, backbone))


def batching_for(cfg: dict[str, Any], dataset: str, backbone: str, mode: str, inputs: Inputs, seed: int,
                 ctx: DistContext) -> Batching:
    p_tok = token_perturb_rate(cfg["train"], mode)
    noise = token_noise(cfg, dataset, backbone) if p_tok > 0 and inputs.train.tokens.dim() == 2 else 0
    return Batching.for_run(inputs.train, cfg["train"], seed, ctx.rank, ctx.world, getattr(inputs.source, "augments", False),
                            p_tok, noise)


# ----------------------------------------------------------------------------------------- one step


class TrainStep(nn.Module):
    """One step's loss: regions from the source, both encoders, (gather across ranks), the method's loss.

    This is the module DDP wraps, so the backbone (finetune) and the model share one gradient sync.
    """

    def __init__(self, model: RetrievalModel, source: nn.Module, world: int = 1):
        super().__init__()
        self.model, self.source, self.world = model, source, world

    def forward(self, batch: dict[str, Any], tokens: torch.Tensor, lengths: torch.Tensor, positives: torch.Tensor,
                epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        regions, mask = self.source(batch, tokens.device)
        img = self.model.encode_image(regions, mask)
        txt = self.model.encode_text(tokens, lengths)
        if self.world > 1:
            img, txt = gather_encoded(img), gather_encoded(txt)
        return self.model.training_loss(img, txt, positives, epoch)


def optimizer_step(runner: Callable[..., tuple[torch.Tensor, dict[str, float]]], opt: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, params: list[torch.Tensor], grad_clip: float, autocast: Any,
                   batch: dict[str, Any], tokens: torch.Tensor, lengths: torch.Tensor, positives: torch.Tensor,
                   epoch: int) -> tuple[float, dict[str, float], float]:
    """Forward, backward, clip, step -> (loss, its named parts, gradient norm before clipping)."""
    with autocast():
        loss, parts = runner(batch, tokens, lengths, positives, epoch)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    scaler.step(opt)
    scaler.update()
    return float(loss.detach()), parts, float(grad_norm)


@dataclass
class Learner:
    """The model and its region source, the module one step runs, and everything that updates them."""

    model: RetrievalModel
    source: nn.Module
    step: TrainStep
    params: list[torch.Tensor]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    precision: Precision
    grad_clip: float
    device: torch.device

    def update(self, runner: nn.Module, batch: dict[str, Any], tokens: torch.Tensor, lengths: torch.Tensor,
               positives: torch.Tensor, epoch: int) -> tuple[float, dict[str, float], float]:
        """One optimizer step on a global batch (this rank's slice) -> (loss, its parts, grad norm)."""
        return optimizer_step(runner, self.optimizer, self.scaler, self.params, self.grad_clip, self.precision.autocast,
                              batch, tokens.to(self.device), lengths.to(self.device), positives.to(self.device), epoch)


def build_learner(cfg: dict[str, Any], method: str, dataset: str, backbone: str, inputs: Inputs, precision: Precision,
                  ctx: DistContext, device: torch.device, seed: int) -> Learner:
    """A fresh model of `method` with AdamW (the backbone in its own group), MultiStepLR and a GradScaler."""
    tc = cfg["train"]
    step = TrainStep(build_for(cfg, method, dataset, backbone, inputs.img_dim), inputs.source, ctx.world).to(device)
    step = ctx.sync_batchnorm(step, device)
    if ctx.world > 1 and not ctx.main:  # decorrelate model-internal noise across ranks (rank 0 = one process)
        torch.manual_seed(seed * 1_000_003 + ctx.rank)
    model, source = step.model, step.source
    # the backbones (the visual one of the region source, a text transformer trained in the model) share one group
    text_backbone = dict(backbone_parameters(model))
    in_text_backbone = {id(p) for p in text_backbone.values()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in in_text_backbone]}]
    backbone_params = list(source.parameters()) + list(text_backbone.values())
    if backbone_params:
        groups.append({"params": backbone_params, "lr": tc["lr"] * tc.get("backbone_lr_scale", 0.1)})
    opt = torch.optim.AdamW(groups, lr=tc["lr"], weight_decay=tc["weight_decay"])
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=tc.get("lr_milestones", []), gamma=tc["lr_gamma"])
    # the losses are sums over the batch, so their gradients overflow fp16 at GradScaler's default scale
    # (2**16): every overflow skips a step while the scale halves; start where it would settle
    scaler = precision.grad_scaler(tc.get("fp16_init_scale", 8.0))
    return Learner(model, source, step, [p for g in groups for p in g["params"]], opt, sched, scaler, precision,
                   float(tc.get("grad_clip", 0) or 0), device)


# ---------------------------------------------------------------------------------------- an epoch


@dataclass
class EpochStats:
    """Sums over an epoch's steps, for its history row."""

    steps: int
    started: float  # time.time() at the epoch's first batch
    loss_sums: dict[str, float] = field(default_factory=dict)
    grad_norm_sum: float = 0.0
    skipped: int = 0  # fp16 overflows: GradScaler skipped the step and lowered its scale
    train_seconds: float = 0.0

    def add(self, parts: dict[str, float], grad_norm: float) -> None:
        for k, v in parts.items():
            self.loss_sums[k] = self.loss_sums.get(k, 0.0) + float(v)
        if math.isfinite(grad_norm):
            self.grad_norm_sum += grad_norm
        else:
            self.skipped += 1


def train_epoch(runner: nn.Module, learner: Learner, batching: Batching, epoch: int, workers: int, desc: str,
                quiet: bool) -> EpochStats:
    """Every full global batch of the epoch, one optimizer step each."""
    learner.step.train()
    plans = batching.plan_epoch(epoch)
    stats = EpochStats(len(plans), time.time())
    bar = tqdm(total=len(plans), desc=desc, unit="batch", disable=quiet)
    for plan, batch in zip(plans, load_batches(learner.source, plans, workers)):
        tokens, lengths, positives = batching.captions(plan, epoch)
        loss, parts, grad_norm = learner.update(runner, batch, tokens, lengths, positives, epoch)
        stats.add(parts, grad_norm)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
    bar.close()
    stats.train_seconds = time.time() - stats.started
    return stats


def validation_rsum(model: RetrievalModel, data: SplitInputs, device: torch.device, cfg: dict[str, Any]) -> dict[str, Any]:
    """Recall metrics (rSum included) of `model` on a split, with the evaluate stage's similarity blocks."""
    img, txt = encode_split(model, data, device)
    ec = cfg["evaluate"]
    sim = similarity_matrix(model, img, txt, ec.get("block_images"), ec.get("block_captions"),
                            memory_budget_mb=ec.get("memory_budget_mb"))
    return rank_metrics(sim, caps_per_image(data))


def validate_epoch(learner: Learner, inputs: Inputs, cfg: dict[str, Any], epoch: int, stats: EpochStats,
                   batch_size: int) -> dict[str, Any]:
    """The epoch's history row (val rSum, wall time, throughput, mean grad norm and losses), printed."""
    val = validation_rsum(learner.model, inputs.val(learner.device), learner.device, cfg)
    n_batches = max(1, stats.steps)
    row = {"epoch": epoch, "val_rsum": val["rsum"], "seconds": time.time() - stats.started,
           "samples_per_s": n_batches * batch_size / max(stats.train_seconds, 1e-9),
           "grad_norm": stats.grad_norm_sum / max(1, n_batches - stats.skipped),
           **({"skipped_steps": stats.skipped} if learner.scaler.is_enabled() else {}),
           **{f"loss_{k}": v / n_batches for k, v in stats.loss_sums.items()}}
    print(f"epoch {epoch}: " + " ".join(f"{k}={v:.3f}" for k, v in row.items() if k != "epoch"), flush=True)
    return row


# --------------------------------------------------------------------------------- progress, resume


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


@dataclass
class Progress:
    """Where a run stands: the next epoch, the history, the best val rSum and (rank 0) its weights."""

    next_epoch: int = 0
    best: dict[str, Any] = field(default_factory=lambda: {"rsum": -1.0, "epoch": -1})
    history: list[dict[str, Any]] = field(default_factory=list)
    best_model: dict[str, torch.Tensor] | None = None
    best_source: dict[str, torch.Tensor] = field(default_factory=dict)

    def record(self, row: dict[str, Any], learner: Learner, keep_weights: bool) -> None:
        """Append a finished epoch's row; keep the weights when its val rSum is the best so far."""
        self.history.append(row)
        self.next_epoch = row["epoch"] + 1
        if row["val_rsum"] > self.best["rsum"]:
            self.best = {"rsum": row["val_rsum"], "epoch": row["epoch"]}
            if keep_weights:
                self.best_model, self.best_source = _cpu_copy(learner.model.state_dict()), _cpu_copy(learner.source.state_dict())


def resume_state(learner: Learner, progress: Progress, rngs: list[dict[str, Any]], key: str, mode: str,
                 world: int) -> dict[str, Any]:
    """What last.pt holds after an epoch (`rngs`: every rank's RNG states, rank order)."""
    return {"model": learner.model.state_dict(), "region_source": learner.source.state_dict(),
            "optimizer": learner.optimizer.state_dict(), "scheduler": learner.scheduler.state_dict(),
            "scaler": learner.scaler.state_dict() if learner.scaler.is_enabled() else None,
            "rng": rngs, "best_model": progress.best_model, "best_region_source": progress.best_source,
            "meta": {"run_hash": key, "epoch": progress.next_epoch - 1, "best": progress.best,
                     "history": progress.history, "mode": mode, "world_size": world}}


def resume(learner: Learner, path: Path, key: str, ctx: DistContext, quiet: bool) -> Progress:
    """Restore the learner and RNG states from last.pt when it is this run's; else a fresh start."""
    state = load_resume_state(path, key)
    if state is None:
        if path.exists() and not quiet:
            print(f"{path}: trained with other params; starting over")
        return Progress()
    try:
        learner.model.load_state_dict(state["model"])
        learner.source.load_state_dict(state.get("region_source", {}))
        learner.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise UserError(f"{path}: does not fit this model ({str(exc).splitlines()[0][:120]}); "
                        "delete it and re-run `fga train`") from None
    learner.scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler") and learner.scaler.is_enabled():
        learner.scaler.load_state_dict(state["scaler"])
    rngs = state.get("rng") or [{"torch": state["torch_rng"]}]
    if len(rngs) != ctx.world and ctx.main and not quiet:
        print(f"{path}: saved by {len(rngs)} rank(s), resuming on {ctx.world}: model noise will differ")
    restore_rng(rngs[ctx.rank] if ctx.rank < len(rngs) else rngs[0])
    meta = state["meta"]
    progress = Progress(meta["epoch"] + 1, meta["best"], list(meta["history"]), state.get("best_model"),
                        state.get("best_region_source") or {})
    if not quiet:
        print(f"resuming {path.parent} at epoch {progress.next_epoch}", flush=True)
    return progress


def checkpoint_meta(meta: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """What checkpoint.safetensors records: the run's meta and params, without wall-clock times or the writer's rank."""
    history = [{k: v for k, v in row.items() if k not in WALL_CLOCK} for row in meta["history"]]
    return {**{k: v for k, v in meta.items() if k != "rank"}, "history": history, "params": params}
