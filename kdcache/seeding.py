"""Per-sample seeds: the determinism contract of docs/design.md §Determinism.

Every augmented input is a pure function of ``(cache seed, view, sample index)``. The seed of one
sample is derived with a named hash so that another implementation can reproduce it
(``docs/cache-format.md`` §Seeds)::

    sample_seed(s, v, i) = int.from_bytes(
        sha256(b"kdcache-v1" + s.to_bytes(8, "little") + v.to_bytes(8, "little")
               + i.to_bytes(8, "little")).digest()[:8], "little") & (2**63 - 1)

Nothing here touches a global RNG except :func:`forked_global_rng`, which restores it afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator

import numpy as np
import torch

SEED_DOMAIN = b"kdcache-v1"
_U64 = 2**64
_SEED_MASK = 2**63 - 1  # torch.Generator.manual_seed and numpy accept up to 2**63 - 1 safely


def _u64(value: int, what: str) -> bytes:
    if not 0 <= value < _U64:
        raise ValueError(f"{what} must be an integer in [0, 2**64), got {value}")
    return int(value).to_bytes(8, "little")


def sample_seed(cache_seed: int, view: int, index: int) -> int:
    """The 63-bit seed of sample ``index`` in view ``view`` of a cache with seed ``cache_seed``."""
    digest = hashlib.sha256(
        SEED_DOMAIN + _u64(cache_seed, "seed") + _u64(view, "view") + _u64(index, "index")
    ).digest()
    return int.from_bytes(digest[:8], "little") & _SEED_MASK


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from any tuple of non-negative integers (e.g. student seed, epoch, sample).

    Same construction as :func:`sample_seed` with a different domain, so the two never collide.
    """
    payload = b"kdcache-derived-v1" + b"".join(_u64(p, "seed part") for p in parts)
    return int.from_bytes(hashlib.sha256(payload).digest()[:8], "little") & _SEED_MASK


@contextlib.contextmanager
def forked_global_rng(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's global CPU RNGs for a block, then restore them.

    For third-party transforms (timm's RandAugment draws from ``random`` and ``numpy``) that cannot
    take a generator: the caller's RNG state is exactly as before when the block exits.
    """
    py_state = random.getstate()
    np_state = np.random.get_state()
    torch_state = torch.random.get_rng_state()
    try:
        random.seed(seed)
        np.random.seed(seed % 2**32)  # NumPy's legacy seeding takes 32-bit seeds only
        # The CPU generator only: torch.manual_seed would also reseed (and so disturb) CUDA's.
        torch.default_generator.manual_seed(seed)
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)


def _hash_header(shape: tuple[int, ...]) -> bytes:
    return ("u8:" + ",".join(str(d) for d in shape) + ";").encode()


def input_hash(image: torch.Tensor) -> int:
    """64-bit fingerprint of an augmented uint8 image ``[C, H, W]`` (before normalisation).

    ``blake2b(digest_size=8)`` over an ASCII header ``"u8:C,H,W;"`` followed by the C-contiguous
    bytes, read as a little-endian *signed* 64-bit integer (so it fits int64 tensors and arrays).
    Stored per (view, sample) in the cache so a consumer can prove it regenerated the exact
    image the teacher saw.
    """
    if image.dtype != torch.uint8:
        raise TypeError(f"input_hash expects a uint8 image, got {image.dtype}")
    digest = hashlib.blake2b(_hash_header(tuple(image.shape)), digest_size=8)
    # The array's buffer itself: no bytes copy of the image, and no second one to join the header.
    digest.update(image.detach().cpu().contiguous().numpy().data)
    return int.from_bytes(digest.digest(), "little", signed=True)


def input_hashes(images: torch.Tensor) -> np.ndarray:
    """int64 ``[B]``: :func:`input_hash` of each image of a uint8 batch ``[B, C, H, W]`` (any
    device, any memory layout), with one copy to the host for the whole batch and the header
    hashed once."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise TypeError(f"input_hashes expects uint8 [B, C, H, W], got {images.dtype} "
                        f"{tuple(images.shape)}")  # fmt: skip
    host = images.detach().cpu().contiguous().numpy()  # [B, C, H, W]
    header = hashlib.blake2b(_hash_header(tuple(images.shape[1:])), digest_size=8)
    out = np.empty(len(host), np.int64)
    for k in range(len(host)):
        digest = header.copy()
        digest.update(host[k].data)
        out[k] = int.from_bytes(digest.digest(), "little", signed=True)
    return out
