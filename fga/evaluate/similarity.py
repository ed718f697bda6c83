"""The full image x caption similarity matrix, block by block through the model's batched kernel.

Every image and caption is encoded once (fga.encoding); this module then scores the
``[n_img, n_cap]`` matrix in rectangular blocks. Each block is ONE call of the model's batched
``similarity`` (vectorised over all pairs of the block, no Python loop over pairs).

Block sizes come from a memory budget (``evaluate.memory_budget_mb``): a fine-grained kernel
holds a few ``[b_img, b_cap, R, L]`` score tensors for a block (R image tokens, L words), so

    pairs per block = budget / (R * L * bytes per score * live temporaries + output bytes)

and the model's own inner chunking (``sim_chunk_elems`` of GRM and SCAN) is raised to the block
for the duration of the pass, so that one block is one kernel call. On CUDA the budget is also
capped by the free GPU memory; on a CPU blocks stop growing at ~4M scores per call (measured:
larger blocks leave the caches and get slower). ``block_images`` / ``block_captions`` override
the plan. For GRM and SCAN, images and captions are visited sorted by length and every block
drops the token columns that are padding for all of its items (exact: kernels mask padding).

The matrix can be written to ``results/.../sim_<split>.npy`` (float16 or float32, atomically)
and read back by the robustness stage or by later statistics.

``reference_similarity_matrix`` scores one pair at a time through the models' per-pair
reference (``pair_similarity``): slow, plain, and only for tests and benchmarks.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm import tqdm

from fga.errors import UserError
from fga.integrity import check_once, file_sha256
from fga.io import atomic_path, read_json
from fga.models.base import Encoded, RetrievalModel, slice_encoded

DEFAULT_BUDGET_MB = 4096  # fits a 24 GiB machine with room for the encodings and the result matrix
SAVE_DTYPES = {"float16": np.float16, "float32": np.float32}
# Live [b_img, b_cap, R, L]-sized temporaries of one kernel call (measured peak / score tensor size,
# rounded up: GRM ~4, SCAN t2i/i2t ~9 incl. autograd-free softmax and the Gram product).
_TEMPORARIES = {"GRM": 6, "SCAN": 12}
_DEFAULT_TEMPORARIES = 12
# Beyond this many scores per call a CPU gets no faster (the block leaves the caches, and the
# per-call overhead is already amortised); blocks stay smaller than the budget allows.
_CPU_SCORES_PER_CALL = 2 ** 22
_MAX_BLOCK_CAPTIONS = 128  # token models: captions are length-sorted, so narrower blocks trim more padding
_GPU_FREE_SHARE = 0.5  # at most this share of the free GPU memory goes to one block


def n_items(enc: Encoded) -> int:
    return next(iter(enc.values())).shape[0]


def _tokens(enc: Encoded) -> int:
    """Tokens per item of an encoded dict (1 for global embeddings): the largest dim 1 of a >= 3-D tensor."""
    return max([v.shape[1] for v in enc.values() if v.dim() >= 3] or [1])


@dataclass(frozen=True)
class BlockPlan:
    """How the matrix is cut: ``block_images x block_captions`` pairs per kernel call."""

    block_images: int
    block_captions: int
    scores_per_pair: int  # R * L of the fine-grained kernel (1 for global embeddings)
    bytes_per_pair: int
    budget_bytes: int

    @property
    def scores_per_call(self) -> int:
        return self.block_images * self.block_captions * self.scores_per_pair


def budget_bytes(memory_budget_mb: float | None, device: torch.device) -> int:
    """The working-memory budget of one block in bytes (capped by the free memory of a GPU)."""
    mb = DEFAULT_BUDGET_MB if memory_budget_mb is None else memory_budget_mb
    if not (isinstance(mb, (int, float)) and mb > 0):
        raise UserError(f"evaluate.memory_budget_mb must be a positive number, got {mb!r}")
    budget = int(mb * 2 ** 20)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = min(budget, int(free * _GPU_FREE_SHARE))
    return budget


def plan_blocks(model: RetrievalModel, img: Encoded, txt: Encoded, memory_budget_mb: float | None = None,
                block_images: int | None = None, block_captions: int | None = None,
                device: torch.device | None = None) -> BlockPlan:
    """Block sizes for `similarity_matrix` from the memory budget (explicit sizes override it)."""
    device = device or next(iter(img.values())).device
    n_img, n_cap = n_items(img), n_items(txt)
    scores = _tokens(img) * _tokens(txt)
    temps = _TEMPORARIES.get(type(model).__name__, _DEFAULT_TEMPORARIES) if scores > 1 else 2
    elem = 4  # float32 scores
    per_pair = scores * elem * temps + 4  # + the float32 output entry
    budget = budget_bytes(memory_budget_mb, device)
    pairs = max(1, budget // per_pair)
    if device.type != "cuda":
        pairs = min(pairs, max(1, _CPU_SCORES_PER_CALL // scores))
    if block_images is None and block_captions is None:
        row = n_cap if scores == 1 else min(n_cap, _MAX_BLOCK_CAPTIONS)  # token models: length-sorted caption blocks
        if pairs >= row:  # whole rows of (up to _MAX_BLOCK_CAPTIONS) captions: fewer, wider calls
            bi, bc = min(n_img, pairs // row), row
        else:  # not even one full row fits: square-ish blocks
            bi = min(n_img, max(1, math.isqrt(pairs)))
            bc = min(n_cap, max(1, pairs // bi))
    elif block_captions is None:
        bi = min(n_img, int(block_images))
        bc = min(n_cap, max(1, pairs // bi))
    elif block_images is None:
        bc = min(n_cap, int(block_captions))
        bi = min(n_img, max(1, pairs // bc))
    else:
        bi, bc = min(n_img, int(block_images)), min(n_cap, int(block_captions))
    for name, v in (("block_images", bi), ("block_captions", bc)):
        if v < 1:
            raise UserError(f"evaluate.{name} must be a positive integer, got {v!r}")
    return BlockPlan(max(1, bi), max(1, bc), scores, per_pair, budget)


@contextlib.contextmanager
def _one_call_per_block(model: RetrievalModel, plan: BlockPlan) -> Iterator[None]:
    """Let models that chunk internally (``sim_chunk_elems``) compute a whole block in one call."""
    old = getattr(model, "sim_chunk_elems", None)
    if old is not None:
        model.sim_chunk_elems = max(int(old), plan.scores_per_call)
    try:
        yield
    finally:
        if old is not None:
            model.sim_chunk_elems = old


def token_axes(model: RetrievalModel, side: str) -> tuple[str, tuple[str, ...]] | None:
    """(mask key, keys indexed by that token axis) of a model's encoded images or captions, or None.

    Padded tokens never change a score (every kernel masks them), so a block may drop the token
    columns that are padding for all of its items. Only the models known here are trimmed.
    """
    from fga.models.grm import GRM
    from fga.models.scan import SCAN

    if isinstance(model, SCAN):
        return ("mask", ("regions", "mask")) if side == "img" else ("w_mask", ("words", "w_mask"))
    if isinstance(model, GRM):
        if side == "txt":
            return "t_mask", ("t", "t_mask", "t_hat", "a_t")
        keys: tuple[str, ...] = ("v", "mask", "v_hat", "a_v")
        if model.rp is None and model.no_rp_regions == "tokens":  # then every token is its own region
            keys += ("u", "u_mask")
        return "mask", keys
    return None


def _extent(enc: Encoded, axes: tuple[str, tuple[str, ...]] | None) -> torch.Tensor | None:
    """Per item: 1 + index of its last real token (0 for none), or None when the side is not trimmed."""
    if axes is None or axes[0] not in enc:
        return None
    mask = enc[axes[0]].bool()
    pos = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return (mask * pos).amax(dim=1).cpu()


def _trim(enc: Encoded, axes: tuple[str, tuple[str, ...]] | None, extent: torch.Tensor | None) -> Encoded:
    """Drop the token columns that are padding for every item of the block."""
    if extent is None or axes is None:
        return enc
    keep = max(1, int(extent.max()))
    full = enc[axes[0]].shape[1]
    if keep >= full:
        return enc
    return {k: (v[:, :keep] if k in axes[1] and v.dim() >= 2 and v.shape[1] == full else v) for k, v in enc.items()}


@torch.no_grad()
def similarity_matrix(model: RetrievalModel, img: Encoded, txt: Encoded, block_images: int | None = None,
                      block_captions: int | None = None, quiet: bool = True, memory_budget_mb: float | None = None,
                      desc: str = "similarity") -> np.ndarray:
    """``[n_img, n_cap]`` float32, one batched kernel call per block; a progress bar shows pairs/s.

    For models with known token axes (GRM, SCAN), images and captions are visited in order of
    length and each block drops the token columns that are padding for all of its items, so a
    block of short captions does not pay for the longest caption of the split.
    """
    model.eval()
    n_img, n_cap = n_items(img), n_items(txt)
    plan = plan_blocks(model, img, txt, memory_budget_mb, block_images, block_captions)
    img_axes, txt_axes = token_axes(model, "img"), token_axes(model, "txt")
    img_ext, txt_ext = _extent(img, img_axes), _extent(txt, txt_axes)
    img_order = torch.argsort(img_ext, stable=True) if img_ext is not None else None
    txt_order = torch.argsort(txt_ext, stable=True) if txt_ext is not None else None

    def ordered(enc: Encoded, order: torch.Tensor | None) -> Encoded:
        return enc if order is None else {k: v[order.to(v.device)] for k, v in enc.items()}

    img_s, txt_s = ordered(img, img_order), ordered(txt, txt_order)
    img_ext_s = None if img_ext is None else img_ext[img_order]
    txt_ext_s = None if txt_ext is None else txt_ext[txt_order]
    rows = np.arange(n_img) if img_order is None else img_order.numpy()
    cols = np.arange(n_cap) if txt_order is None else txt_order.numpy()
    out = np.empty((n_img, n_cap), np.float32)
    bar = tqdm(total=n_img * n_cap, desc=desc, unit="pair", unit_scale=True, disable=quiet)
    with _one_call_per_block(model, plan):
        for i in range(0, n_img, plan.block_images):
            si = slice(i, i + plan.block_images)
            img_block = _trim(slice_encoded(img_s, si), img_axes, None if img_ext_s is None else img_ext_s[si])
            for j in range(0, n_cap, plan.block_captions):
                sj = slice(j, j + plan.block_captions)
                txt_block = _trim(slice_encoded(txt_s, sj), txt_axes, None if txt_ext_s is None else txt_ext_s[sj])
                block = model.similarity(img_block, txt_block).float().cpu().numpy()
                out[np.ix_(rows[si], cols[sj])] = block
                bar.update(block.size)
    bar.close()
    if not np.isfinite(out).all():
        raise UserError("the similarity matrix has NaN/inf scores; the checkpoint or features are broken")
    return out


@torch.no_grad()
def reference_similarity_matrix(model: RetrievalModel, img: Encoded, txt: Encoded, **pair_kwargs: Any) -> np.ndarray:
    """The same matrix one pair at a time through ``model.pair_similarity`` (tests and benchmarks only).

    Models without a per-pair reference are scored with their batched kernel on 1 x 1 inputs.
    ``pair_kwargs`` go to ``pair_similarity`` (e.g. ``level="key"`` for GRM).
    """
    model.eval()
    n_img, n_cap = n_items(img), n_items(txt)
    pair = getattr(model, "pair_similarity", None)
    out = np.empty((n_img, n_cap), np.float64)
    for i in range(n_img):
        one_img = slice_encoded(img, slice(i, i + 1))
        for j in range(n_cap):
            one_txt = slice_encoded(txt, slice(j, j + 1))
            if pair is not None:
                out[i, j] = pair(one_img, one_txt, **pair_kwargs)
            else:
                out[i, j] = float(model.similarity(one_img, one_txt)[0, 0])
    return out


def matrix_path(run_results: Path, split: str) -> Path:
    return Path(run_results) / f"sim_{split}.npy"


def save_matrix(path: Path, sim: np.ndarray, dtype: str) -> Path | None:
    """Write ``sim`` as .npy in `dtype` (``none`` writes nothing), atomically."""
    if dtype == "none":
        return None
    if dtype not in SAVE_DTYPES:
        raise UserError(f"evaluate.save_matrix must be none, float16 or float32, got {dtype!r}")
    with atomic_path(path, suffix=".npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, sim.astype(SAVE_DTYPES[dtype], copy=False))
    return Path(path)


def matrix_sha256(path: Path) -> str:
    """The digest evaluate records in metrics.json's `matrix` entry (`sha256`) for the file it saved."""
    return file_sha256(path)


def _verify_matrix(path: Path) -> None:
    """Check `path` against the digest in the metrics.json beside it, when that records one for this file."""
    meta_path = path.parent / "metrics.json"
    entry = read_json(meta_path, "metrics.json").get("matrix") if meta_path.exists() else None
    if isinstance(entry, dict) and entry.get("file") == path.name and entry.get("sha256"):
        check_once(path, str(entry["sha256"]), lambda: file_sha256(path), "fga evaluate")


def load_matrix(path: Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A saved matrix as float32 (a float16 file keeps its ties); checks the shape when given, and the content
    digest recorded in the metrics.json beside it."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: similarity matrix not found; run `fga evaluate` with evaluate.save_matrix set")
    _verify_matrix(path)
    try:
        sim = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as exc:
        raise UserError(f"{path}: unreadable .npy ({exc}); delete it and re-run `fga evaluate`") from None
    if sim.ndim != 2 or (shape is not None and tuple(sim.shape) != tuple(shape)):
        raise UserError(f"{path}: matrix of shape {sim.shape}, expected {shape}; delete it and re-run `fga evaluate`")
    return np.asarray(sim, dtype=np.float32)
