"""One training loop for every method and both modes: seeded, exactly resumable, CPU or CUDA (+AMP), DDP.

Batches. Each epoch visits every training caption once with its image, in an order drawn from
(seed, epoch). Everything random about a global batch that the loop itself adds (token
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
the loop, the loss, checkpointing and DDP are shared. `train.token_perturb` (per mode: 0.2 in
finetune, the LAPS setting; 0.0 in frozen_features, the CPU default's setting) replaces each word token of
a training caption, with that probability, by <unk> (id 1), a random word id, or drops it, with
equal chance.

Checkpoints and exact resume. After every epoch (rank 0, after validation) `last.pt` is written
atomically (temp file, fsync, rename) with the model, region source (backbone), optimizer,
scheduler, AMP GradScaler, the RNG states of every rank (torch CPU, CUDA, numpy, python
`random`), the epoch, the best validation rSum and the history. A killed run restarts the
interrupted epoch from its beginning with the state of the end of the previous epoch, which
reproduces an uninterrupted run bit for bit on the CPU (tests/test_train.py kills one mid-epoch).
Every load uses `torch.load(weights_only=True)`; a truncated or foreign `last.pt` is a one-line
UserError and is left in place. A `last.pt` of other params (another run hash) is replaced.
The best-val-rSum weights end up in `checkpoint.pt` (with the region source's weights under
`region_source` in finetune mode; empty otherwise).

Determinism and tolerance. On the CPU the same params and seed give identical metrics (tests
check bit equality of two runs). On CUDA cuDNN is put in deterministic mode; measured on an H200
(benchmarks/bench_device.py, embedded default, lite0_roi, seed 0) two bf16 runs gave identical
metrics, and GPU runs (fp32, bf16, fp16) differed from the CPU run by 0.2-1.4 test rSum for GRM and
VSE-infinity and by 1-9 rSum for SCAN (inside SCAN's seed-to-seed spread). fp16 uses a GradScaler
starting at `train.fp16_init_scale` (8): the losses are sums over the batch, so at PyTorch's
default 2**16 the first 6-15 steps overflow and are skipped (each skip is counted in the epoch's
`skipped_steps`), which cost 13-21 rSum.

DDP (torchrun). With WORLD_SIZE > 1 the process group is initialised from the environment (gloo
on the CPU, nccl on CUDA) and the step module (model + region source) is wrapped in
DistributedDataParallel. Each global batch (`train.batch_size`, same order as one process) is
split into equal contiguous slices, one per rank; every rank encodes its slice, the encoded image
and text dicts are all-gathered with the autograd-preserving
`torch.distributed.nn.functional.all_gather`, and every rank computes the loss on the full global
similarity. That gather's backward sums the W identical losses' gradients (W x the one-process
gradient of the rank's own slice) and DDP averages over the W ranks, so the parameter gradients
equal the one-process gradients on the whole batch (tests/test_train.py checks loss, grad norm
and update with 2 gloo processes). Only model-internal noise (drawn per rank) and BatchNorm
statistics on the CPU (SyncBatchNorm is used on CUDA only) differ from one process. Rank 0
validates and writes checkpoints; every rank returns the same history.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from fga.config import params_hash
from fga.errors import UserError
from fga.features.extract import feature_hash
from fga.evaluate.encode import SplitInputs, caps_per_image, encode_split, load_split
from fga.evaluate.similarity import similarity_matrix
from fga.io import atomic_path
from fga.models.base import Encoded, RetrievalModel
from fga.models.registry import build_model, method_section

MODES = ("frozen_features", "finetune")
UNK_ID = 1  # fga.features.text: 0 = <pad>, 1 = <unk>, words from 2


def pick_device(name: str, local_rank: int | None = None) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device = cuda but no CUDA device is visible; use device: auto or cpu")
    if name in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda") if local_rank is None else torch.device("cuda", local_rank)
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_hash(cfg: dict[str, Any], dataset: str, backbone: str, method: str, seed: int) -> str:
    """What a trained model depends on; a checkpoint with another hash is never resumed or reused."""
    return params_hash({"train": {k: v for k, v in cfg["train"].items() if k not in ("device", "num_workers")},
                        "method": cfg["methods"].get(method, {}), "features": feature_hash(cfg, dataset, backbone),
                        "text": cfg["features"]["text"], "data": cfg["data"].get(dataset, {}),
                        "key": [dataset, backbone, method, seed]})


def load_checkpoint(path: Path) -> dict[str, Any]:
    """torch.load(weights_only=True) with a one-line error for truncated or foreign files."""
    if not path.exists():
        raise UserError(f"{path}: checkpoint not found; run `fga train` for this run first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, random bytes, pickle of unknown objects, ...
        raise UserError(f"{path}: unreadable checkpoint ({exc.__class__.__name__}); delete it and re-run `fga train`") from None
    if not isinstance(state, dict) or "model" not in state or not isinstance(state.get("meta"), dict):
        raise UserError(f"{path}: not an fga checkpoint; delete it and re-run `fga train`")
    return state


# ----------------------------------------------------------------------------------------- RNG state


def capture_rng() -> dict[str, Any]:
    """This process's RNG states, as types `torch.load(weights_only=True)` reads back."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(cached)},
            "python": {"version": version, "state": list(py_state), "gauss": gauss}}


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "python" in state:
        p = state["python"]
        random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def token_perturb_rate(tc: dict[str, Any], mode: str) -> float:
    """`train.token_perturb` for this mode: one rate for both, or a {mode: rate} mapping."""
    value = tc.get("token_perturb", 0.0)
    return float(value.get(mode, 0.0) if isinstance(value, dict) else value)


def step_generator(seed: int, epoch: int, step: int, what: str) -> torch.Generator:
    """A generator for one global batch's `what` (tokens, augment): a function of (seed, epoch, step) only."""
    digest = hashlib.sha256(f"fga/{what}/{seed}/{epoch}/{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:7], "little"))


# --------------------------------------------------------------------------------- token perturbation


def perturb_tokens(tokens: torch.Tensor, lengths: torch.Tensor, p: float, vocab_size: int,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style caption noise: each real token, with probability p, becomes <unk>, a random word, or is dropped.

    tokens [B, L] (0 = padding), lengths [B] -> new (tokens [B, L], lengths [B]); kept tokens keep
    their order, the rest is padding; a caption never loses all its tokens.
    """
    b, n = tokens.shape
    pos = torch.arange(n)[None, :]
    real = pos < lengths[:, None]
    hit = (torch.rand(b, n, generator=generator) < p) & real
    action = torch.randint(0, 3, (b, n), generator=generator)
    random_ids = torch.randint(2, max(vocab_size, 3), (b, n), generator=generator) if vocab_size > 2 else \
        torch.full((b, n), UNK_ID)
    out = torch.where(hit & (action == 0), torch.full_like(tokens, UNK_ID), tokens)
    out = torch.where(hit & (action == 1), random_ids, out)
    keep = real & ~(hit & (action == 2))
    keep[:, 0] |= keep.sum(1) == 0  # all dropped: keep the first (unchanged) token
    new_lengths = keep.sum(1)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept tokens first, in order
    out = out.gather(1, order).masked_fill(pos >= new_lengths[:, None], 0)
    return out, new_lengths


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


# ------------------------------------------------------------------------------------------------ DDP


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int | None = None
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_name: str) -> tuple["DistContext", torch.device]:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(), pick_device(device_name)
        import torch.distributed as dist

        local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
        device = pick_device(device_name, local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        owns = False
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=2))
            owns = True
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, owns), device

    def all_gather_object(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def gather_encoded(enc: Encoded) -> Encoded:
    """All-gather every tensor of an encoded dict along the item dim (rank order = global batch order).

    Tensors that need a gradient go through the autograd-preserving gather; the rest (masks,
    ids) through a plain one (bool as uint8). Every rank must hold tensors of equal shapes.
    """
    import torch.distributed as dist
    import torch.distributed.nn.functional as dist_fn

    out: Encoded = {}
    for key, t in enc.items():
        if t.requires_grad:
            with warnings.catch_warnings():  # deprecated in favour of a private API; still the documented one
                warnings.simplefilter("ignore", FutureWarning)
                parts = dist_fn.all_gather(t)
        else:
            src = t.to(torch.uint8) if t.dtype == torch.bool else t
            parts = [torch.empty_like(src) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, src.contiguous())
            if t.dtype == torch.bool:
                parts = [p.bool() for p in parts]
        out[key] = torch.cat(list(parts))
    return out


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


# ------------------------------------------------------------------------------------------ building


def validation_rsum(model: RetrievalModel, data: SplitInputs, device: torch.device, cfg: dict[str, Any]) -> dict[str, Any]:
    from fga.evaluate.recall import rank_metrics

    img, txt = encode_split(model, data, device)
    ec = cfg["evaluate"]
    sim = similarity_matrix(model, img, txt, ec.get("block_images"), ec.get("block_captions"),
                            memory_budget_mb=ec.get("memory_budget_mb"))
    return rank_metrics(sim, caps_per_image(data))


def _vocab_size(dataset: str, backbone: str) -> int:
    from fga.evaluate.encode import paths
    from fga.features.text import load_vocab

    return len(load_vocab(paths(dataset, backbone)["vocab"]))


def build_for(cfg: dict[str, Any], method: str, dataset: str, backbone: str, img_dim: int) -> RetrievalModel:
    return build_model(method, method_section(cfg, method, backbone), img_dim=img_dim,
                       vocab_size=_vocab_size(dataset, backbone))


def build(cfg: dict[str, Any], method: str, data: SplitInputs) -> RetrievalModel:
    return build_for(cfg, method, data.attrs["dataset"], data.attrs["backbone"], data.regions.shape[-1])


def caption_inputs(cfg: dict[str, Any], dataset: str, backbone: str, split: str, regions: torch.Tensor,
                   mask: torch.Tensor, attrs: dict[str, Any]) -> SplitInputs:
    """A split's captions (as `load_split` reads them) around regions computed elsewhere (finetune mode)."""
    from fga.evaluate.encode import paths
    from fga.features.text import encode_captions, load_vocab, split_captions
    from fga.io import read_json

    p = paths(dataset, backbone)
    image_ids, captions = split_captions(read_json(p["dataset_json"], "dataset.json"), split)
    if not image_ids:
        raise UserError(f"{p['dataset_json']}: no {split!r} images")
    tokens, lengths = encode_captions(captions, load_vocab(p["vocab"]), cfg["features"]["text"]["max_words"])
    return SplitInputs(regions, mask, torch.from_numpy(tokens), torch.from_numpy(lengths), image_ids,
                       {"dataset": dataset, "backbone": backbone, **attrs})


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
    from fga.finetune import finetune_sources

    net, sources = finetune_sources(cfg, dataset, backbone)
    attrs = {"weights_source": net.weights_source, "region_source": net.regions, "mode": "finetune"}
    empty = torch.zeros(0, net.n_regions, net.feature_dim)
    train_data = caption_inputs(cfg, dataset, backbone, "train", empty, empty[..., 0].bool(), attrs)
    train_data.image_ids = [im["id"] for im in sources["train"].split.images]

    def val(device: torch.device) -> SplitInputs:
        regions, mask = sources["val"].all_regions(device)
        return caption_inputs(cfg, dataset, backbone, "val", regions, mask, attrs)

    return Inputs(train_data, sources["train"], val, net.feature_dim)


# ----------------------------------------------------------------------------------------- the loop


def _save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())


class _PlannedLoads(torch.utils.data.Dataset):
    """Step i's CPU-side batch (for DataLoader workers): `loader.load(img_idx, aug)` of plan i."""

    def __init__(self, loader: Any, plans: list[dict[str, Any]]):
        self.loader, self.plans = loader, plans

    def __len__(self) -> int:
        return len(self.plans)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.loader.load(self.plans[i]["img_idx"], self.plans[i]["aug"])


def _loads(source: nn.Module, plans: list[dict[str, Any]], workers: int) -> Iterable[dict[str, Any]]:
    """The CPU side of each step's batch, in order; in loader worker processes when asked."""
    if workers <= 0:
        return (source.load(p["img_idx"], p["aug"]) for p in plans)
    # workers get only the CPU loader (never the device-side backbone); the loader's own generator
    # keeps its base seed from being drawn from (and shifting) the global RNG
    return torch.utils.data.DataLoader(_PlannedLoads(getattr(source, "loader", source), plans), batch_size=None,
                                       num_workers=workers, shuffle=False, generator=torch.Generator().manual_seed(0),
                                       persistent_workers=False)


def train(cfg: dict[str, Any], dataset: str, backbone: str, method: str, seed: int, run_dir: Path,
          quiet: bool = False) -> dict[str, Any]:
    """Train one (dataset, backbone, method, seed) run; returns the history logged to MLflow."""
    tc = cfg["train"]
    mode = tc.get("mode", "frozen_features")
    if mode not in MODES:
        raise UserError(f"train.mode = {mode!r}; allowed: {', '.join(MODES)}")
    torch.set_num_threads(tc.get("threads", 1))
    ctx, device = DistContext.from_env(tc.get("device", "auto"))
    try:
        return _train(cfg, dataset, backbone, method, seed, Path(run_dir), quiet, mode, ctx, device)
    finally:
        ctx.close()


def _train(cfg: dict[str, Any], dataset: str, backbone: str, method: str, seed: int, run_dir: Path, quiet: bool,
           mode: str, ctx: DistContext, device: torch.device) -> dict[str, Any]:
    tc = cfg["train"]
    quiet = quiet or not ctx.main
    key_hash = run_hash(cfg, dataset, backbone, method, seed)
    last_path, best_path = run_dir / "last.pt", run_dir / "checkpoint.pt"
    resume_state = load_checkpoint(last_path) if last_path.exists() else None  # corrupt/foreign: error, untouched
    if resume_state is not None and resume_state["meta"].get("run_hash") != key_hash:
        if not quiet:
            print(f"{last_path}: trained with other params; starting over")
        resume_state = None

    use_amp = bool(tc.get("amp", True)) and device.type == "cuda"
    amp_dtype = torch.float16 if tc.get("amp_dtype", "bf16") == "fp16" else torch.bfloat16
    if use_amp and amp_dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise UserError("train.amp_dtype = bf16 but this GPU has no bf16; set train.amp_dtype: fp16 or train.amp: false")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True

    seed_everything(seed)
    inputs = (finetune_inputs if mode == "finetune" else frozen_inputs)(cfg, dataset, backbone)
    train_data, source = inputs.train, inputs.source
    model = build_for(cfg, method, dataset, backbone, inputs.img_dim)
    step_module = TrainStep(model, source, ctx.world).to(device)
    if ctx.world > 1 and device.type == "cuda":
        from timm.layers import convert_sync_batchnorm

        step_module = convert_sync_batchnorm(step_module)
        model, source = step_module.model, step_module.source
    if ctx.world > 1 and not ctx.main:  # decorrelate model-internal noise across ranks (rank 0 = one process)
        torch.manual_seed(seed * 1_000_003 + ctx.rank)

    groups = [{"params": list(model.parameters())}]
    source_params = list(source.parameters())
    if source_params:
        groups.append({"params": source_params, "lr": tc["lr"] * tc.get("backbone_lr_scale", 0.1)})
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=tc["lr"], weight_decay=tc["weight_decay"])
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=tc.get("lr_milestones", []), gamma=tc["lr_gamma"])
    # the losses are sums over the batch, so their gradients overflow fp16 at GradScaler's default scale
    # (2**16): every overflow skips a step while the scale halves; start where it would settle
    scaler = torch.amp.GradScaler(device.type, init_scale=float(tc.get("fp16_init_scale", 8.0)),
                                  enabled=use_amp and amp_dtype == torch.float16)

    start_epoch, best, history = 0, {"rsum": -1.0, "epoch": -1}, []
    best_state: dict[str, torch.Tensor] | None = None
    best_source: dict[str, torch.Tensor] = {}
    if resume_state is not None:
        st = resume_state
        missing = [k for k in ("optimizer", "scheduler", "meta") if k not in st]
        missing += [] if st.get("rng") or "torch_rng" in st else ["rng"]
        if missing or "epoch" not in st["meta"]:
            raise UserError(f"{last_path}: not a resumable fga checkpoint (no {', '.join(missing) or 'epoch'}); "
                            "delete it and re-run `fga train`")
        try:
            model.load_state_dict(st["model"])
            source.load_state_dict(st.get("region_source", {}))
            opt.load_state_dict(st["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise UserError(f"{last_path}: does not fit this model ({str(exc).splitlines()[0][:120]}); "
                            "delete it and re-run `fga train`") from None
        sched.load_state_dict(st["scheduler"])
        if st.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(st["scaler"])
        rngs = st.get("rng") or [{"torch": st["torch_rng"]}]
        if len(rngs) != ctx.world and ctx.main and not quiet:
            print(f"{last_path}: saved by {len(rngs)} rank(s), resuming on {ctx.world}: model noise will differ")
        restore_rng(rngs[ctx.rank] if ctx.rank < len(rngs) else rngs[0])
        start_epoch, best, history = st["meta"]["epoch"] + 1, st["meta"]["best"], list(st["meta"]["history"])
        best_state, best_source = st.get("best_model"), st.get("best_region_source") or {}
        if not quiet:
            print(f"resuming {run_dir} at epoch {start_epoch}", flush=True)
    del resume_state

    runner: Any = step_module
    if ctx.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        runner = DistributedDataParallel(step_module, device_ids=[device.index] if device.type == "cuda" else None,
                                         find_unused_parameters=True)
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if use_amp else contextlib.nullcontext
    if ctx.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in list(run_dir.glob(".last.pt.*")) + list(run_dir.glob(".checkpoint.pt.*")):
            stale.unlink(missing_ok=True)  # temp files of a killed save

    caps = caps_per_image(train_data)
    n_pairs = len(train_data.tokens)
    bs = min(tc["batch_size"], n_pairs)  # tiny configs: one batch of everything
    if bs % ctx.world:
        raise UserError(f"train.batch_size {bs} does not split into {ctx.world} equal per-rank slices; "
                        f"use a multiple of {ctx.world}")
    per_rank = bs // ctx.world
    mine = slice(ctx.rank * per_rank, (ctx.rank + 1) * per_rank)
    p_tok = token_perturb_rate(tc, mode)
    vocab_size = _vocab_size(dataset, backbone) if p_tok > 0 else 0
    grad_clip = float(tc.get("grad_clip", 0) or 0)
    workers = int(tc.get("num_workers", 0)) if mode == "finetune" else 0

    for epoch in range(start_epoch, tc["epochs"]):
        step_module.train()
        order = torch.randperm(n_pairs, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        plans = []  # what the loader needs of each step ahead of time (it may run in worker processes)
        for step_no, i in enumerate(range(0, n_pairs - bs + 1, bs)):
            cap_idx = order[i : i + bs]
            aug = None
            if getattr(source, "augments", False):
                aug = torch.randint(0, 2 ** 62, (bs,), generator=step_generator(seed, epoch, step_no, "augment"))[mine]
            plans.append({"step": step_no, "cap_idx": cap_idx, "img_idx": (cap_idx // caps)[mine], "aug": aug})
        sums: dict[str, float] = {}
        norm_sum, skipped = 0.0, 0
        t0 = time.time()
        bar = tqdm(total=len(plans), desc=f"{method} epoch {epoch}", unit="batch", disable=quiet)
        for plan, batch in zip(plans, _loads(source, plans, workers)):
            cap_idx = plan["cap_idx"]
            tokens, lengths = train_data.tokens[cap_idx], train_data.lengths[cap_idx]
            if p_tok > 0:
                tokens, lengths = perturb_tokens(tokens, lengths, p_tok, vocab_size,
                                                 step_generator(seed, epoch, plan["step"], "tokens"))
            tokens = tokens[:, : int(lengths.max())]  # the global batch's longest: equal shapes on every rank
            img_idx = cap_idx // caps
            positives = img_idx[:, None] == img_idx[None, :]  # over the global batch
            loss, parts, grad_norm = optimizer_step(
                runner, opt, scaler, params, grad_clip, autocast, batch, tokens[mine].to(device),
                lengths[mine].to(device), positives.to(device), epoch)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            if math.isfinite(grad_norm):
                norm_sum += grad_norm
            else:
                skipped += 1  # fp16 overflow: GradScaler skipped this step and lowered its scale
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
        bar.close()
        sched.step()
        n_batches = max(1, len(plans))
        seconds = time.time() - t0
        row = None
        if ctx.main:
            val = validation_rsum(model, inputs.val(device), device, cfg)
            row = {"epoch": epoch, "val_rsum": val["rsum"], "seconds": time.time() - t0,
                   "samples_per_s": n_batches * bs / max(seconds, 1e-9),
                   "grad_norm": norm_sum / max(1, n_batches - skipped),
                   **({"skipped_steps": skipped} if scaler.is_enabled() else {}),
                   **{f"loss_{k}": v / n_batches for k, v in sums.items()}}
            print(f"epoch {epoch}: " + " ".join(f"{k}={v:.3f}" for k, v in row.items() if k != "epoch"), flush=True)
        rngs = ctx.all_gather_object(capture_rng())  # after validation: what the next epoch starts from
        row = ctx.broadcast_object(row)
        history.append(row)
        if row["val_rsum"] > best["rsum"]:
            best = {"rsum": row["val_rsum"], "epoch": epoch}
            if ctx.main:
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                best_source = {k: v.detach().cpu().clone() for k, v in source.state_dict().items()}
        if ctx.main:
            _save({"model": model.state_dict(), "region_source": source.state_dict(), "optimizer": opt.state_dict(),
                   "scheduler": sched.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                   "rng": rngs, "best_model": best_state, "best_region_source": best_source,
                   "meta": {"run_hash": key_hash, "epoch": epoch, "best": best, "history": history,
                            "mode": mode, "world_size": ctx.world}}, last_path)

    meta = {"run_hash": key_hash, "dataset": dataset, "backbone": backbone, "method": method, "seed": seed,
            "best": best, "history": history, "img_dim": inputs.img_dim, "mode": mode, "world_size": ctx.world,
            "rank": ctx.rank}
    if ctx.main:
        _save({"model": best_state, "region_source": best_source, "meta": meta}, best_path)
    if ctx.world > 1:
        import torch.distributed as dist

        dist.barrier()  # no rank returns (and e.g. reads checkpoint.pt) before rank 0 wrote it
    return meta
