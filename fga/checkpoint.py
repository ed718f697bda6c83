"""The two checkpoint files of a run directory (runs/<dataset>/<backbone>/<text encoder>/<method>/seed<k>/).

`checkpoint.safetensors`, the run's result (a declared pipeline output): the best-val-rSum weights
of the model as tensors `model.<name>` and, in finetune mode, of the region source (the trained
backbone) as `region_source.<name>`; the run's metadata (run hash, params, history, best epoch and
rSum, text encoder, ...) as canonical JSON (sorted keys) under the header metadata key `fga` (the header's only key:
safetensors writes several in a random order). safetensors has no
pickle and no random serialization id, and the metadata holds no wall-clock times, so the same
params and seed give byte-identical files on the same machine.

`last.pt`, the state to resume from after the last finished epoch (model, region source,
optimizer, scheduler, GradScaler, every rank's RNG states, best weights so far, history): written
with `torch.save`, read with `torch.load(weights_only=True)`.

Both are written atomically (temp file, fsync, rename); a truncated or foreign file is a one-line
UserError naming it. Both carry a content digest checked before use (fga.integrity): the key
`content_sha256` of the safetensors `fga` metadata (over the rest of the metadata and the tensor bytes),
the last.pt key `integrity_sha256` (over the rest of the state); a file whose bytes changed on disk is a
one-line UserError, never loaded.
Files written before the digests existed have none and load unchecked.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from fga.errors import UserError
from fga.integrity import check_once, file_sha256, tree_sha256
from fga.io import atomic_path

CHECKPOINT_FILE = "checkpoint.safetensors"
RESUME_FILE = "last.pt"
META_KEY = "fga"
DIGEST_KEY = "content_sha256"  # in the `fga` metadata of checkpoint.safetensors
STATE_DIGEST_KEY = "integrity_sha256"  # in last.pt
GROUPS = ("model", "region_source")
FIX = "delete it and re-run `fga train`"


def _write_synced(path: Path, write: Any) -> None:
    with atomic_path(path) as tmp:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())


def canonical_json(obj: Any) -> str:
    """The one JSON text of `obj`: sorted keys, no spaces (equal objects, equal bytes)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def save_checkpoint(path: Path, model: dict[str, torch.Tensor], region_source: dict[str, torch.Tensor],
                    meta: dict[str, Any]) -> None:
    """Write checkpoint.safetensors: both state dicts' tensors and `meta` (JSON-able) in the header."""
    from safetensors.torch import save

    # clones: safetensors refuses tensors that share memory (tied weights)
    tensors = {f"{group}.{name}": t.detach().cpu().contiguous().clone()
               for group, state in zip(GROUPS, (model, region_source)) for name, t in state.items()}
    meta_json = canonical_json({k: v for k, v in meta.items() if k != DIGEST_KEY})
    body = _tensor_bytes(save(tensors, metadata={META_KEY: meta_json}))
    # the tensor bytes do not depend on the header's metadata: serialise again with their digest in it
    stamped = canonical_json({**json.loads(meta_json), DIGEST_KEY: _digest(meta_json, body)})
    data = save(tensors, metadata={META_KEY: stamped})
    _write_synced(Path(path), lambda tmp: tmp.write_bytes(data))


def _tensor_bytes(data: bytes) -> bytes:
    """The tensor buffer of serialised safetensors (after the 8-byte length and the JSON header)."""
    return data[8 + int.from_bytes(data[:8], "little"):]


def _digest(meta_json: str, body: bytes) -> str:
    return hashlib.sha256(meta_json.encode() + body).hexdigest()


def _verify_checkpoint(path: Path, meta: dict[str, Any]) -> None:
    """Pop the recorded digest (if any) from `meta` and check it against the rest of it and the tensor bytes."""
    expected = meta.pop(DIGEST_KEY, None)
    if expected is None:
        return
    with open(path, "rb") as f:
        offset = 8 + int.from_bytes(f.read(8), "little")
    check_once(path, str(expected), lambda: file_sha256(path, offset, canonical_json(meta).encode()), "fga train")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """checkpoint.safetensors -> {"model": state dict, "region_source": state dict, "meta": dict}."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: checkpoint not found; run `fga train` for this run first")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:  # truncated, random bytes, another format (a torch.save zip, ...)
        raise UserError(f"{path}: unreadable checkpoint ({exc.__class__.__name__}); {FIX}") from None
    try:
        meta = json.loads(header[META_KEY])
    except (KeyError, ValueError):
        meta = None
    if not isinstance(meta, dict):
        raise UserError(f"{path}: not an fga checkpoint (no `{META_KEY}` metadata); {FIX}")
    _verify_checkpoint(path, meta)
    state: dict[str, Any] = {group: {} for group in GROUPS}
    for name, tensor in tensors.items():
        group, _, key = name.partition(".")
        if group not in state:
            raise UserError(f"{path}: not an fga checkpoint (tensor {name!r}); {FIX}")
        state[group][key] = tensor
    return {**state, "meta": meta}


def check_text_encoder(path: Path, meta: dict[str, Any], name: str) -> None:
    """A checkpoint of one text encoder (`text_encoder` in its metadata; none: the BiGRU) loaded for another is a
    one-line UserError naming both."""
    recorded = str(meta.get("text_encoder") or "bigru")
    if recorded != name:
        raise UserError(f"{path}: trained with text encoder {recorded!r}, but train.text_encoder is {name!r}; set "
                        f"train.text_encoder: {recorded} (--set train.text_encoder={recorded}) or re-run `fga train`")


def save_resume_state(path: Path, state: dict[str, Any]) -> None:
    """Write last.pt (torch.save of tensors, numbers, strings, lists and dicts only), with its content digest."""
    stamped = {**state, STATE_DIGEST_KEY: tree_sha256(state)}
    _write_synced(Path(path), lambda tmp: torch.save(stamped, tmp))


def load_resume_state(path: Path, expect_hash: str) -> dict[str, Any] | None:
    """last.pt if it resumes this run; None when there is none or it was trained with other params.

    A truncated, foreign or incomplete file is a UserError and is left in place.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, random bytes, pickle of unknown objects, ...
        raise UserError(f"{path}: unreadable checkpoint ({exc.__class__.__name__}); {FIX}") from None
    if not isinstance(state, dict) or "model" not in state or not isinstance(state.get("meta"), dict):
        raise UserError(f"{path}: not an fga checkpoint; {FIX}")
    expected = state.pop(STATE_DIGEST_KEY, None)
    if expected is not None:
        check_once(path, expected, lambda: tree_sha256(state), "fga train")
    if state["meta"].get("run_hash") != expect_hash:
        return None
    missing = [k for k in ("optimizer", "scheduler") if k not in state]
    missing += [] if state.get("rng") or "torch_rng" in state else ["rng"]
    if missing or "epoch" not in state["meta"]:
        raise UserError(f"{path}: not a resumable fga checkpoint (no {', '.join(missing) or 'epoch'}); {FIX}")
    return state


def remove_partial_saves(run_dir: Path) -> None:
    """Delete the temp files a killed save left behind."""
    for name in (RESUME_FILE, CHECKPOINT_FILE):
        for stale in Path(run_dir).glob(f".{name}.*"):
            stale.unlink(missing_ok=True)
