"""Position-bound block digests (format 1.2): what ties a chunk's bytes to its place in the cache.

zarr's crc32c codec proves that a chunk's bytes are the bytes that were stored, not that they are
stored in the right place: a valid chunk of view 2 copied over the same block of view 0 decodes
fine, and a deleted chunk reads as its fill value. So, when a block is written, the writer records
for each of the block's chunks

    sha256(b"kdcache-block-v1\\0" + ascii_bytes(name) + b"\\0" + le64(view) + le64(block)
           + le64(row_start) + le64(row_stop) + values)

where ``values`` are the block's decoded values in the array's stored dtype, little-endian,
C order, with the view axis dropped (``logits[view, rows, :]`` is ``[R, C]``; a per-block count
is one value). A chunk that holds another position's data, altered data or no data at all gives
another digest. The normative description is docs/cache-format.md §3.1; no IO here.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np

from kdcache.cache import schema

DIGEST_BYTES = 32  # sha256
_DOMAIN = b"kdcache-block-v1\0"


def digested_arrays(storage: schema.StorageInfo, mixed: bool = False) -> tuple[str, ...]:
    """The arrays whose chunks a block's digest record covers, in record order (a mixed recipe's
    cache appends its partner and lambda arrays)."""
    names = (*schema.data_arrays(storage), schema.INPUT_HASH, schema.BLOCK_TOP1, schema.BLOCK_TOP5)
    return (*names, *schema.MIX_ARRAYS) if mixed else names


def block_digest(name: str, view: int, block: int, rows: slice, values: np.ndarray) -> bytes:
    """The 32-byte digest of array ``name``'s chunk at (view, block) holding ``values``.

    ``values``: the block's values with the view axis dropped ([R, ...] or a scalar), in the
    array's stored dtype.
    """
    header = _DOMAIN + name.encode("ascii") + b"\0"
    # le64: unsigned 64-bit little-endian, the one definition of docs/cache-format.md §0.
    header += struct.pack("<4Q", view, block, rows.start, rows.stop)
    values = np.asarray(values)
    data = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))
    hasher = hashlib.sha256(header)
    hasher.update(data.data)  # C-contiguous: hashed in place, no copy
    return hasher.digest()
