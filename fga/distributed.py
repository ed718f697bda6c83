"""DDP under torchrun: the process group of a run, object exchange between ranks, the autograd gather of encodings.

With WORLD_SIZE > 1 the process group is initialised from the environment (gloo on the CPU, nccl on
CUDA). `gather_encoded` all-gathers a rank's encoded slice of a global batch with the
autograd-preserving `torch.distributed.nn.functional.all_gather`, so every rank can compute the
loss on the full global similarity.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from fga.device import pick_device
from fga.models.base import Encoded


@dataclass
class DistContext:
    """This process's place among the ranks of a run (one process: rank 0 of 1)."""

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
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def sync_batchnorm(self, module: nn.Module, device: torch.device) -> nn.Module:
        """BatchNorm statistics over all ranks' slices (CUDA only: SyncBatchNorm has no CPU kernels)."""
        if self.world == 1 or device.type != "cuda":
            return module
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(module)

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """`module` in DistributedDataParallel when there are several ranks (gradients averaged over them)."""
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=True)

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
