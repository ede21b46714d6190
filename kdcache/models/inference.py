"""The one teacher forward pass that extract and online training share.

Both paths must compute the same logits for the same image, bit for bit, or an online run would not
reproduce a cached one. CPU kernels change their reduction order with the batch size (rows of
batches of 1-2 differ from larger ones by up to 1.4e-5 on ResNet-56) and with the memory format, so
the forward pads short batches to ``MIN_FORWARD_ROWS`` and always runs channels-last.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

MIN_FORWARD_ROWS = 16


def prepare_teacher(teacher: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move a teacher to ``device`` in eval mode, channels-last, with gradients off."""
    teacher = teacher.to(device).eval().to(memory_format=torch.channels_last)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@contextlib.contextmanager
def teacher_inference(device: torch.device) -> Iterator[None]:
    """Inference mode; on CUDA, float16 autocast (more mantissa than bfloat16 for logits that are
    stored as float16 anyway)."""
    with torch.inference_mode():
        if device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                yield
        else:
            yield


def teacher_logits(teacher: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Float32 logits [B, C] of normalised images ``x`` [B, ...], independent of B's size.

    Call inside ``teacher_inference``."""
    n = x.shape[0]
    if n < MIN_FORWARD_ROWS:
        x = torch.cat([x, x[-1:].expand(MIN_FORWARD_ROWS - n, *x.shape[1:])])
    x = x.contiguous(memory_format=torch.channels_last)
    return teacher(x)[:n].float()


def forward_description(device: torch.device) -> dict[str, str]:
    """How ``teacher_logits`` runs on ``device``, for a cache's ``producers`` record."""
    if device.type == "cuda":
        where, precision = f"cuda ({torch.cuda.get_device_name(device)})", "float16 autocast"
    else:
        where, precision = device.type, "float32"
    return {
        "device": where,
        "precision": precision,
        "memory_format": "channels_last",
        "min_forward_rows": str(MIN_FORWARD_ROWS),
        "torch": torch.__version__,
    }
