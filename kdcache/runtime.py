"""Devices, torch.distributed and library versions: the process-level runtime shared by extract
and train."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from kdcache.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                "`device` cuda was asked for but no CUDA GPU is visible; use `device` auto or cpu"
            )
        return torch.device(name)
    raise ConfigError(f"`device` must be auto, cpu or cuda[:N], got {name!r}")


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1), else a no-op.

    gloo on CPU, nccl on CUDA; with CUDA each rank uses the GPU of its LOCAL_RANK.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        log.info("rank %d/%d joined the %s process group", rank, world, backend)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank)


def rank_device(device: torch.device, ctx: DistContext) -> torch.device:
    if device.type == "cuda" and ctx.enabled:
        return torch.device("cuda", ctx.local_rank)
    return device


def shutdown_distributed(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def library_versions() -> dict[str, str]:
    """Versions of the libraries that can change a cache's bytes (recorded, not enforced)."""
    import numpy as np
    import PIL
    import timm
    import torchvision
    import zarr

    from kdcache._version import __version__

    return {
        "kdcache": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "Pillow": PIL.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "zarr": zarr.__version__,
    }
