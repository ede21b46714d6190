"""Carry the shared data to a device in parts small enough for one call each, and join them there.

    python experiments/cifar100/split_data.py [--data-dir ../shared/data]
        [--out experiments/cifar100/data_parts] [--part-bytes 52428800]
    python experiments/cifar100/split_data.py --join --parts DIR --out DATA_DIR

Split: every file the data folder's README.md lists in its table (path, bytes, md5, sha256) is
checked against its sha256 there, then cut into parts of at most ``--part-bytes`` (CIFAR-100
train, 155 MB, becomes 3 parts of 49 MiB). ``manifest.json`` beside the parts records each
file's parts, size and sha256. Join: the parts are concatenated back into the same layout under
``--out``, and each file must have its recorded size and sha256 (files already there and right
are left alone, so joining twice costs one hash per file).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
MANIFEST = "manifest.json"
DEFAULT_PART_BYTES = 50 * 2**20  # a device call carries 64 MiB in all, the working tree included
# A row of the README's table: | path | bytes | md5 | sha256 |
_ROW = re.compile(
    r"^\|\s*([^|\s]+)\s*\|\s*([\d,]+)\s*\|\s*([0-9a-f]{32})\s*\|\s*([0-9a-f]{64})\s*\|"
)


class DataError(RuntimeError):
    """A file is missing or not the file the README/manifest describes (the message says which)."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def listed_files(data_dir: Path) -> list[dict[str, Any]]:
    """The README table's rows: path, bytes, sha256."""
    readme = data_dir / "README.md"
    if not readme.is_file():
        raise DataError(f"{readme} is missing: it lists the files and their sha256")
    rows = [
        {"path": m[1], "bytes": int(m[2].replace(",", "")), "sha256": m[4]}
        for line in readme.read_text().splitlines()
        if (m := _ROW.match(line))
    ]
    if not rows:
        raise DataError(f"{readme} has no table of | path | bytes | md5 | sha256 |")
    return rows


def _part_name(path: str, index: int) -> str:
    return f"{path.replace('/', '__')}.part{index}"


def split(data_dir: Path, out: Path, part_bytes: int = DEFAULT_PART_BYTES) -> dict[str, Any]:
    """Cut every listed file into parts under ``out``; return the manifest (also written there)."""
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for row in listed_files(data_dir):
        src = data_dir / row["path"]
        if not src.is_file():
            raise DataError(f"{src} is missing (listed in {data_dir / 'README.md'})")
        if src.stat().st_size != row["bytes"] or sha256(src) != row["sha256"]:
            raise DataError(f"{src} does not match the size and sha256 its README lists")
        count = max(1, math.ceil(row["bytes"] / part_bytes))
        size = math.ceil(row["bytes"] / count)  # equal parts, the last one shorter
        names = []
        with open(src, "rb") as f:
            for i in range(count):
                names.append(_part_name(row["path"], i))
                (out / names[-1]).write_bytes(f.read(size))
        files.append({**row, "parts": names})
    manifest = {"part_bytes": part_bytes, "files": files}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def join(parts: Path, out: Path) -> list[Path]:
    """Reassemble the files of ``parts/manifest.json`` under ``out``, each checked by sha256."""
    manifest_path = parts / MANIFEST
    if not manifest_path.is_file():
        raise DataError(f"{manifest_path} is missing: carry it with the first part")
    written = []
    for entry in json.loads(manifest_path.read_text())["files"]:
        dest = out / entry["path"]
        if dest.is_file() and dest.stat().st_size == entry["bytes"]:
            if sha256(dest) == entry["sha256"]:
                written.append(dest)
                continue
        missing = [p for p in entry["parts"] if not (parts / p).is_file()]
        if missing:
            raise DataError(f"{entry['path']}: parts missing in {parts}: {', '.join(missing)}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        h = hashlib.sha256()
        with open(tmp, "wb") as f:
            for name in entry["parts"]:
                data = (parts / name).read_bytes()
                h.update(data)
                f.write(data)
        if tmp.stat().st_size != entry["bytes"] or h.hexdigest() != entry["sha256"]:
            tmp.unlink()
            raise DataError(
                f"{entry['path']}: the joined parts are not the file the manifest describes "
                f"(sha256 {h.hexdigest()[:12]}, expected {entry['sha256'][:12]}); a part is "
                "damaged or from another split: carry the parts again"
            )
        os.replace(tmp, dest)
        written.append(dest)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--join", action="store_true", help="Reassemble instead of splitting.")
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--parts", type=Path, default=REPO / "experiments" / "cifar100" / "data_parts")
    p.add_argument("--out", type=Path, help="Split: the parts folder [default: --parts]. "
                   "Join: the data folder to write.")  # fmt: skip
    p.add_argument("--part-bytes", type=int, default=DEFAULT_PART_BYTES)
    args = p.parse_args(argv)
    try:
        if args.join:
            if args.out is None:
                p.error("--join needs --out DATA_DIR")
            for path in join(args.parts, args.out):
                print(f"split_data.py: {path} ok (sha256 checked)")
        else:
            manifest = split(args.data_dir, args.out or args.parts, args.part_bytes)
            for entry in manifest["files"]:
                print(f"split_data.py: {entry['path']}: {', '.join(entry['parts'])}")
    except (DataError, OSError) as exc:
        print(f"split_data.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
