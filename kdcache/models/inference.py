"""The one teacher forward pass that extract and online training share.

Both paths must compute the same logits for the same image, bit for bit, or an online run would not
reproduce a cached one. CPU kernels change their reduction order with the batch size (rows of
batches of 1-2 differ from larger ones by up to 1.4e-5 on ResNet-56) and with the memory format, so
the forward pads short batches to ``MIN_FORWARD_ROWS`` and always runs channels-last.

CUDA goes further: cuDNN and cuBLAS choose kernels by shape, and under float16 autocast the
ResNet-56's logits for the same image differed by up to 0.0156 between batch sizes 256 and 64 on an
H200 (``benchmarks/gpu_check.py``). So on CUDA every forward has one shape: the batch is cut into
pieces of exactly ``CUDA_FORWARD_ROWS`` rows, the last one padded. A row's logits then depend on its
image alone, whatever batch size extract or online training uses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

MIN_FORWARD_ROWS = 16
CUDA_FORWARD_ROWS = 256


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


def teacher_forward(
    teacher: torch.nn.Module, x: torch.Tensor, *, fixed_rows: int | None = None
) -> torch.Tensor:
    """Float32 logits [B, C] of normalised images ``x`` [B, ...], independent of B's size.

    ``fixed_rows``: run every forward as exactly that many rows (default: ``CUDA_FORWARD_ROWS``
    on CUDA, none on CPU, where short batches are padded to ``MIN_FORWARD_ROWS``).
    Call inside ``teacher_inference``."""
    rows = fixed_rows if fixed_rows is not None else forward_rows(x.device)
    if rows is None:
        return _padded_forward(teacher, x, MIN_FORWARD_ROWS)
    return torch.cat([_padded_forward(teacher, piece, rows) for piece in x.split(rows)])


def forward_rows(device: torch.device) -> int | None:
    """The fixed row count of every teacher forward on ``device`` (None: only a minimum)."""
    return CUDA_FORWARD_ROWS if device.type == "cuda" else None


def padded_batch_note(batch_size: int, device: torch.device) -> str | None:
    """A line saying how much of each forward a batch size wastes on ``device``, or None.

    On CUDA every forward runs exactly ``CUDA_FORWARD_ROWS`` rows, so a batch of another multiple
    is cut into pieces and its last piece padded: ``--batch-size 300`` runs 512 rows for 300
    images. The logits are the same either way; only the time is lost."""
    rows = forward_rows(device)
    if rows is None or batch_size % rows == 0:
        return None
    padded = -(-batch_size // rows) * rows
    return (
        f"--batch-size {batch_size} on CUDA: every teacher forward runs {rows} rows, so each "
        f"batch runs as {padded} rows ({100 * (padded - batch_size) / padded:.0f}% of the "
        f"teacher's time on padding); use a multiple of {rows} (the cache's bytes are the same)"
    )


def _padded_forward(teacher: torch.nn.Module, x: torch.Tensor, rows: int) -> torch.Tensor:
    """Float32 logits of ``x``, run as at least ``rows`` rows (the last image repeated)."""
    n = x.shape[0]
    if n < rows:
        x = torch.cat([x, x[-1:].expand(rows - n, *x.shape[1:])])
    x = x.contiguous(memory_format=torch.channels_last)
    return teacher(x)[:n].float()


def forward_description(device: torch.device) -> dict[str, str]:
    """How ``teacher_forward`` runs on ``device``, for a cache's ``producers`` record."""
    record = {"memory_format": "channels_last", "min_forward_rows": str(MIN_FORWARD_ROWS),
              "torch": torch.__version__}  # fmt: skip
    if device.type == "cuda":
        record["forward_rows"] = str(forward_rows(device))  # every CUDA forward has this shape
        return {"device": f"cuda ({torch.cuda.get_device_name(device)})",
                "precision": "float16 autocast", **record}  # fmt: skip
    return {"device": device.type, "precision": "float32", **record}
