"""No asyncio noise after the error (issue 25, item 20).

When one of zarr's concurrent chunk reads fails while the others are still waiting (a damaged
``block_done`` chunk among slow reads, a hung server), the process must end with the one error
line: zarr's pending reads are cancelled before its event loop closes, instead of Python printing
"Task was destroyed but it is pending!" for each of them at exit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    import numpy as np
    import zarr.storage
    from kdcache.cache import schema
    from kdcache.cache.reader import open_cache
    from kdcache.cache.writer import open_for_writing

    out = sys.argv[1]
    meta = schema.CacheMeta(identity=schema.CacheIdentity(
        teacher=schema.TeacherInfo("resnet8", None, 1),
        dataset=schema.DatasetInfo("digits", "train", 64, 6, "f" * 64),
        augmentation=schema.AugmentationInfo("cifar", {}, 0, 2),
        storage=schema.StorageInfo("dense", "float32", 4)))
    open_for_writing(out, meta, np.arange(64) % 6, create=True)
    reader = open_cache(out)
    original = zarr.storage.LocalStore.get

    async def get(self, key, prototype=None, byte_range=None):
        if key.startswith("block_done/c/"):
            if key == "block_done/c/0/0":
                raise ValueError("checksum mismatch")  # this chunk is damaged: fails at once
            await asyncio.sleep(60)  # the other 31 wait, as on a hung server
        return await original(self, key, prototype, byte_range)

    zarr.storage.LocalStore.get = get
    try:
        reader.done_mask()
    except Exception as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(1)
    """
)


def test_a_failed_read_among_pending_ones_ends_with_the_error_alone(tmp_path):
    script = tmp_path / "failing_read.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert lines == [lines[0]] and "block_done fails its crc32c checksum" in lines[0], lines[:8]
    assert "Task was destroyed" not in done.stderr and "Event loop is closed" not in done.stderr
    assert time.monotonic() - started < 50  # the cancelled reads were not waited for
