"""kdcache extract: determinism, resume, distributed byte-identity, bad input, real teacher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from kdcache.cache.reader import open_cache
from kdcache.cache.writer import CacheWriter
from kdcache.cli import main
from tests.conftest import (
    REPO,
    TEACHER_WEIGHTS,
    cache_attrs,
    cache_chunk_bytes,
    require_shared_data,
    run_kdcache_process,
)


def run_cli(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.output


def extract(args: list[str], out: Path, *extra: str) -> str:
    code, output = run_cli([*args, "--out", str(out), *extra])
    assert code == 0, output
    return output


def test_extract_writes_a_complete_self_describing_cache(tmp_path, digits_extract_args):
    out = tmp_path / "c"
    extract(digits_extract_args, out, "--workers", "0")
    reader = open_cache(str(out))
    ident = reader.identity
    assert reader.meta.complete
    assert (ident.dataset.name, ident.dataset.split, ident.dataset.num_classes) == (
        "digits",
        "train",
        10,
    )
    assert ident.augmentation.num_views == 2 and ident.augmentation.seed == 7
    assert ident.storage.mode == "dense" and ident.storage.dtype == "float16"
    assert len(reader.meta.teacher_top1 or []) == 2
    logits = reader.read_dense(1, 0)
    assert logits.dtype == np.float16 and logits.shape == (256, 10)
    assert np.isfinite(logits).all()
    assert set(reader.meta.versions) >= {"torch", "torchvision", "Pillow", "kdcache"}
    assert np.array_equal(reader.labels()[:5], reader.labels()[:5].astype(np.int64))


@pytest.mark.slow
def test_bytes_do_not_depend_on_batch_size_or_workers(tmp_path, digits_extract_args):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    one_view = [
        *digits_extract_args,
        "--views",
        "1",
        "--dtype",
        "float32",
    ]  # no rounding to hide in
    extract(one_view, a, "--workers", "0", "--batch-size", "7")
    extract(one_view, b, "--workers", "2", "--batch-size", "64")
    extract(one_view, c, "--workers", "0", "--batch-size", "1")  # every forward padded
    assert cache_chunk_bytes(a) == cache_chunk_bytes(b) == cache_chunk_bytes(c)
    assert cache_attrs(a) == cache_attrs(b) == cache_attrs(c)


def test_the_cache_records_how_the_teacher_forward_ran(tmp_path, digits_extract_args, monkeypatch):
    out = tmp_path / "c"
    extract(digits_extract_args, out, "--workers", "0")
    first = open_cache(str(out)).meta
    assert first.producers == (
        {
            "device": "cpu",
            "precision": "float32",
            "memory_format": "channels_last",
            "min_forward_rows": "16",
            "torch": torch.__version__,
        },
    )
    # A resume elsewhere (here: faked) is appended, and `info` warns about the mix.
    other = {**first.producers[0], "device": "cuda (NVIDIA H100)", "precision": "float16 autocast"}
    monkeypatch.setattr("kdcache.extract.forward_description", lambda device: other)
    extract(digits_extract_args, out, "--workers", "0")
    meta = open_cache(str(out)).meta
    assert meta.producers == (first.producers[0], other)
    assert meta.fingerprint == first.fingerprint and meta.complete
    code, output = run_cli(["info", str(out)])
    assert code == 0 and "more than one forward configuration" in output


def test_interrupted_extract_resumes_to_the_same_bytes(tmp_path, digits_extract_args, monkeypatch):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    extract(digits_extract_args, whole, "--workers", "0")

    real_write = CacheWriter.write_block
    calls = {"n": 0}

    def crash_after_three(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill")
        calls["n"] += 1
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(CacheWriter, "write_block", crash_after_three)
    code, _ = run_cli([*digits_extract_args, "--out", str(broken), "--workers", "0"])
    assert code != 0
    partial = open_cache(str(broken))
    assert partial.done_mask().sum() == 3 and not partial.meta.complete
    monkeypatch.setattr(CacheWriter, "write_block", real_write)

    output = extract(digits_extract_args, broken, "--workers", "0")
    assert "wrote 9 blocks" in output  # 2 views x 6 blocks, 3 already done
    assert cache_chunk_bytes(whole) == cache_chunk_bytes(broken)
    assert cache_attrs(whole) == cache_attrs(broken)


@pytest.mark.slow
def test_killed_process_resumes_to_the_same_bytes(tmp_path, digits_extract_args):
    """A real SIGKILL mid-run (not a Python exception) leaves a cache that resumes cleanly."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    args = [*digits_extract_args, "--views", "6", "--chunk-rows", "64", "--workers", "0"]
    extract(args, whole)
    cmd = [sys.executable, "-m", "kdcache", *args, "--out", str(killed)]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marks = killed / "block_done" / "c"
    try:
        while proc.poll() is None and len(list(marks.rglob("*")) if marks.exists() else []) < 12:
            pass
    finally:
        proc.kill()
        proc.wait()
    assert not open_cache(str(killed)).meta.complete, "the run finished before it could be killed"
    extract(args, killed)
    assert cache_chunk_bytes(whole) == cache_chunk_bytes(killed)


@pytest.mark.slow
@pytest.mark.parametrize("mode", [(), ("--topk", "3")], ids=["dense", "sparse"])
def test_two_torchrun_ranks_write_the_same_bytes_as_one_process(
    tmp_path, digits_extract_args, mode
):
    single, multi = tmp_path / "single", tmp_path / "multi"
    extract(digits_extract_args, single, "--workers", "0", *mode)
    args = [*digits_extract_args, "--out", str(multi), "--workers", "0", "--device", "cpu", *mode]
    done = run_kdcache_process(args, ranks=2, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert cache_chunk_bytes(single) == cache_chunk_bytes(multi)
    assert cache_attrs(single) == cache_attrs(multi)


def test_sparse_mode_keeps_exact_topk_and_normalisers(tmp_path, digits_extract_args):
    dense, sparse = tmp_path / "dense", tmp_path / "sparse"
    extract(digits_extract_args, dense, "--workers", "0", "--dtype", "float32")
    extract(digits_extract_args, sparse, "--workers", "0", "--topk", "3",
            "--sparse-temperature", "2.5")  # fmt: skip
    reader = open_cache(str(sparse))
    assert reader.identity.storage.dtype == "float32"  # sparse rows are always float32
    assert reader.identity.storage.temperatures == (1.0, 2.5, 4.0)
    full = open_cache(str(dense)).read_dense(0, 1).astype(np.float64)  # [R, C]
    rows = reader.read_sparse(0, 1)
    kept = rows.indices.astype(np.int64)
    np.testing.assert_array_equal(rows.values, np.take_along_axis(full, kept, 1))
    assert (np.diff(rows.values, axis=1) <= 0).all()
    tail = np.ones_like(full, dtype=bool)
    np.put_along_axis(tail, kept, False, axis=1)
    for col, t in enumerate(rows.temperatures):
        z = full / t
        np.testing.assert_allclose(rows.lse[:, col], np.log(np.exp(z).sum(1)), rtol=1e-6)
        np.testing.assert_allclose(
            rows.tail_lse[:, col], np.log(np.where(tail, np.exp(z), 0).sum(1)), rtol=1e-6
        )
    labels = reader.labels()[reader.meta.block_rows(1)]
    np.testing.assert_array_equal(rows.label_logit, full[np.arange(len(full)), labels])


def test_sparse_mode_refuses_float16_and_stray_temperatures(tmp_path, digits_extract_args):
    code, output = run_cli([*digits_extract_args, "--out", str(tmp_path / "a"), "--topk", "3",
                            "--dtype", "float16"])  # fmt: skip
    assert code != 0 and "float32" in output and "Traceback" not in output
    code, output = run_cli([*digits_extract_args, "--out", str(tmp_path / "b"),
                            "--sparse-temperature", "2"])  # fmt: skip
    assert code != 0 and "only meaningful with --topk" in output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_existing_cache_with_other_settings_is_refused_and_untouched(tmp_path, digits_extract_args):
    out = tmp_path / "c"
    extract(digits_extract_args, out, "--workers", "0")
    before = cache_chunk_bytes(out)
    code, output = run_cli([*digits_extract_args, "--out", str(out), "--seed", "8"])
    assert code != 0
    assert "already holds a different cache" in output and "augmentation.seed: 7 != 8" in output
    assert "Traceback" not in output
    assert cache_chunk_bytes(out) == before


def test_rerunning_a_complete_cache_does_nothing(tmp_path, digits_extract_args):
    out = tmp_path / "c"
    extract(digits_extract_args, out, "--workers", "0")
    before = cache_chunk_bytes(out)
    assert "nothing to do" in extract(digits_extract_args, out, "--workers", "0")
    assert cache_chunk_bytes(out) == before


def test_non_cache_directory_is_never_written_into(tmp_path, digits_extract_args):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("keep me")
    code, output = run_cli([*digits_extract_args, "--out", str(out)])
    assert code != 0 and "not a kdcache cache" in output
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--views", "0"], "'--views': 0 is not in the range 1<=x"),
        (["--teacher", "resnet9000"], "resnet9000"),
        (["--recipe", "mixup-deluxe"], "mixup-deluxe"),
        (["--dataset", "cifar100", "--data-dir", "/nonexistent/data"], "cifar-100-python"),
    ],
)
def test_bad_input_gives_a_clear_error(tmp_path, digits_extract_args, change, message):
    out = tmp_path / "c"
    code, output = run_cli([*digits_extract_args, "--out", str(out), *change])
    assert code != 0
    assert message in output and "Traceback" not in output
    assert not out.exists() or not any(out.iterdir())


def test_weights_for_another_architecture_are_refused(tmp_path, digits_extract_args):
    wrong = tmp_path / "wrong.pth"
    from kdcache.models import build_model

    torch.save(build_model("wrn_16_1", 10, in_chans=1).state_dict(), wrong)
    code, output = run_cli(
        [*digits_extract_args, "--out", str(tmp_path / "c"), "--weights", str(wrong)]
    )
    assert code != 0 and "missing" in output.lower() and "Traceback" not in output


def test_extract_without_weights_explains_why(tmp_path):
    code, output = run_cli(
        ["extract", "--teacher", "resnet8", "--dataset", "digits", "--out", str(tmp_path / "c")]
    )
    assert code != 0 and "--weights is required" in output


def _exhaustive_args(digits_extract_args: list[str]) -> list[str]:
    """The digits extract with ``--recipe cifar --exhaustive`` and no ``--views``."""
    args = list(digits_extract_args)
    at = args.index("--views")
    del args[at : at + 2]
    return [*args, "--exhaustive"]


def test_exhaustive_extract_stores_every_distinct_view_by_default(tmp_path, digits_teacher_weights):
    # Before the fix, no --views meant view 0 only. Padding 1 (18 views) keeps it fast;
    # the CLI passes no --views through as None (next test).
    from kdcache.extract import ExtractConfig, run_extract

    out = tmp_path / "c"
    config = ExtractConfig(
        teacher="resnet8", weights=str(digits_teacher_weights), dataset="digits", split="test",
        recipe="cifar", recipe_params={"exhaustive": True, "padding": 1}, out=str(out),
        chunk_rows=512, batch_size=512, workers=0,
    )  # fmt: skip
    assert run_extract(config).complete
    reader = open_cache(str(out))
    assert reader.identity.augmentation.num_views == 18
    hashes = np.stack([reader.read_input_hashes(v, 0) for v in range(18)])  # [18, 359]
    # The 18 views of a sample are 18 geometries: shifted crops of a digit never coincide (a flip
    # may coincide with a shift for a symmetric digit), so a sample has many distinct hashes.
    assert all(len(set(hashes[:, i])) > 9 for i in range(hashes.shape[1]))


def test_exhaustive_cli_without_views_asks_for_all_views(monkeypatch, digits_extract_args):
    import kdcache.extract

    seen = {}

    def fake_run(config, progress=None):
        seen["config"] = config
        raise SystemExit(0)

    monkeypatch.setattr(kdcache.extract, "run_extract", fake_run)
    run_cli([*_exhaustive_args(digits_extract_args), "--out", "unused"])
    assert seen["config"].views is None and seen["config"].recipe_params == {"exhaustive": True}


def test_exhaustive_with_more_views_than_distinct_is_refused(tmp_path, digits_extract_args):
    out = tmp_path / "c"
    args = [*_exhaustive_args(digits_extract_args), "--views", "163", "--out", str(out)]
    code, output = run_cli(args)
    assert code == 1 and "Traceback" not in output
    assert "--views 163 exceeds the 162 distinct views" in output
    assert not out.exists()


def test_views_to_store_defaults() -> None:
    from kdcache.augment import create_recipe, views_to_store
    from kdcache.data.datasets import CIFAR100

    assert views_to_store(create_recipe("cifar", CIFAR100, exhaustive=True), None) == 162
    assert views_to_store(create_recipe("cifar", CIFAR100, exhaustive=True), 5) == 5
    assert views_to_store(create_recipe("cifar", CIFAR100), None) == 1
    assert views_to_store(create_recipe("randaugment", CIFAR100), 300) == 300


@pytest.mark.slow
def test_real_teacher_accuracy_through_extract_and_info(tmp_path):
    data = require_shared_data()
    out = tmp_path / "teacher_test"
    extract(
        [
            "extract",
            "--teacher",
            "resnet56",
            "--weights",
            str(TEACHER_WEIGHTS),
            "--dataset",
            "cifar100",
            "--data-dir",
            str(data),
            "--split",
            "test",
            "--recipe",
            "none",
            "--views",
            "1",
            "--dtype",
            "float32",
            "--no-progress",
            "--batch-size",
            "500",
            "--workers",
            "0",
        ],
        out,
    )
    code, output = run_cli(["info", str(out), "--json"])
    assert code == 0, output
    summary = json.loads(output)
    assert summary["teacher_top1"] == [66.42]
    assert summary["complete"] and summary["dataset"]["num_samples"] == 10000


def test_a_resume_removes_the_temporaries_of_an_interrupted_write(tmp_path, digits_extract_args):
    # zarr writes each object to <key>.<uuid hex>.partial and renames it: a kill can leave one,
    # 0 bytes when it came at open. The resume must not keep that litter.
    out = tmp_path / "sparse"
    extract(digits_extract_args, out, "--workers", "0", "--topk", "3")
    left = [out / "topk_values" / "c" / "0" / "1" / f"0.{'ab' * 16}.partial",
            out / "block_done" / "c" / "1" / f"2.{'0f' * 16}.partial"]  # fmt: skip
    for path in left:
        path.write_bytes(b"")
    before = cache_chunk_bytes(out)
    extract(digits_extract_args, out, "--workers", "0", "--topk", "3")
    assert not any(path.exists() for path in left)
    after = cache_chunk_bytes(out)
    assert after == {k: v for k, v in before.items() if not k.endswith(".partial")}
