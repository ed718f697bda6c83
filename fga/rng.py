"""Random number generators: seeding, capturing and restoring a process's RNG states, per-step generators."""
from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    """This process's RNG states (torch CPU, CUDA, numpy, python), as types `torch.load(weights_only=True)` reads back."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(cached)},
            "python": {"version": version, "state": list(py_state), "gauss": gauss}}


def restore_rng(state: dict[str, Any]) -> None:
    """Undo everything drawn since `capture_rng` returned `state` (CUDA only on the same number of devices)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "python" in state:
        p = state["python"]
        random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def step_generator(seed: int, epoch: int, step: int, what: str) -> torch.Generator:
    """A generator for one global batch's `what` (tokens, augment): a function of (seed, epoch, step) only."""
    digest = hashlib.sha256(f"fga/{what}/{seed}/{epoch}/{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:7], "little"))
