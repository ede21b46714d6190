"""Shared fixtures: paths to the real data, tiny caches built on the bundled digits dataset."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA_DIR = SHARED / "data"
TEACHER_WEIGHTS = DATA_DIR / "teachers" / "resnet56_cifar100_020118.pth"

# Two intra-op threads on the 2-core machine when the tests run one at a time; one per worker
# under pytest-xdist (`-n 2`), where two threads per worker would only contend for the cores.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


def free_port() -> int:
    """A TCP port nothing listens on now, for a torchrun rendezvous: a fixed port would clash
    between pytest-xdist workers, and with anyone else's torchrun on the same machine."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_kdcache_process(
    args: list[str], *, ranks: int = 1, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    """``kdcache ARGS`` in a fresh process, or under torchrun when ``ranks`` > 1 (1 thread each)."""
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
                "--master_port", str(free_port())] if ranks > 1 else []  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *launcher, "-m", "kdcache", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def require_shared_data() -> Path:
    if not (DATA_DIR / "cifar-100-python" / "test").is_file():
        pytest.skip("../shared/data (real CIFAR-100) is not present")
    return DATA_DIR


def cache_chunk_bytes(root: Path) -> dict[str, bytes]:
    """Every stored chunk file of a cache, by relative path (metadata documents excluded)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "zarr.json"
    }


def cache_attrs(root: Path) -> dict:
    """The kdcache self-description without its creation time."""
    attrs = json.loads((root / "zarr.json").read_text())["attributes"]["kdcache"]
    attrs.pop("created", None)
    return attrs


@pytest.fixture(scope="session")
def digits_teacher_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights of a seeded, randomly initialised 1-channel resnet8 (the same in every run)."""
    from kdcache.models import build_model

    path = tmp_path_factory.mktemp("weights") / "resnet8_digits.pth"
    torch.manual_seed(0)
    model = build_model("resnet8", 10, in_chans=1)
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def digits_extract_args(digits_teacher_weights: Path) -> list[str]:
    """A small, fast extract: a fixed resnet8 over the digits train split, 2 views."""
    return [
        "extract",
        "--teacher",
        "resnet8",
        "--weights",
        str(digits_teacher_weights),
        "--dataset",
        "digits",
        "--split",
        "train",
        "--recipe",
        "cifar",
        "--views",
        "2",
        "--seed",
        "7",
        "--chunk-rows",
        "256",
        "--no-progress",
    ]


def _extract_digits(args: list[str], out: Path) -> Path:
    from click.testing import CliRunner

    from kdcache.cli import main

    result = CliRunner().invoke(main, [*args, "--out", str(out), "--workers", "0"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def digits_cache(tmp_path_factory: pytest.TempPathFactory, digits_extract_args: list[str]) -> Path:
    """The cache of ``digits_extract_args``: dense float16, 2 views, 6 blocks of 256 rows per view.

    Shared by every module that asks for it (one extraction per session): read it, never change
    it; copy it first (``shutil.copytree``) to damage or resume it."""
    return _extract_digits(digits_extract_args, tmp_path_factory.mktemp("cache") / "digits")


@pytest.fixture(scope="session")
def fp32_cache(tmp_path_factory: pytest.TempPathFactory, digits_extract_args: list[str]) -> Path:
    """``digits_cache`` stored in float32 (the same views): shared and read-only like it."""
    args = [*digits_extract_args, "--dtype", "float32"]
    return _extract_digits(args, tmp_path_factory.mktemp("cache") / "digits_fp32")
