"""The compute device and its arithmetic: which device a run uses, cuDNN determinism, AMP autocast + GradScaler."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ContextManager

import torch

from fga.errors import UserError


def pick_device(name: str, local_rank: int | None = None) -> torch.device:
    """`train.device` (auto | cpu | cuda) -> a device; under torchrun the rank's own GPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device = cuda but no CUDA device is visible; use device: auto or cpu")
    if name in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda") if local_rank is None else torch.device("cuda", local_rank)
    return torch.device("cpu")


def make_deterministic(device: torch.device) -> None:
    """cuDNN in deterministic mode, without autotuning (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


@dataclass(frozen=True)
class Precision:
    """Mixed precision of a run: `train.amp` (CUDA only) in `train.amp_dtype` (bf16 | fp16)."""

    device_type: str
    amp: bool
    dtype: torch.dtype

    @classmethod
    def from_config(cls, tc: dict[str, Any], device: torch.device) -> "Precision":
        amp = bool(tc.get("amp", True)) and device.type == "cuda"
        dtype = torch.float16 if tc.get("amp_dtype", "bf16") == "fp16" else torch.bfloat16
        if amp and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise UserError("train.amp_dtype = bf16 but this GPU has no bf16; set train.amp_dtype: fp16 or train.amp: false")
        return cls(device.type, amp, dtype)

    def autocast(self) -> ContextManager[Any]:
        """The forward pass's autocast region (a no-op without AMP)."""
        return torch.autocast(self.device_type, dtype=self.dtype) if self.amp else contextlib.nullcontext()

    def grad_scaler(self, init_scale: float) -> torch.amp.GradScaler:
        """A GradScaler, enabled for fp16 autocast only (bf16 and fp32 need no loss scaling)."""
        return torch.amp.GradScaler(self.device_type, init_scale=float(init_scale),
                                    enabled=self.amp and self.dtype == torch.float16)
