"""Fault injection (issue #15): a cache that cannot lie, and training that never ends on bad data.

Each test damages a small digits cache the way a bad copy, a bad sync or an edit would, and checks
that `verify`, `info` and `train` name the damage instead of using it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from kdcache.cache import schema
from kdcache.cache.digest import block_digest
from kdcache.cache.reader import open_cache
from kdcache.cache.writer import open_for_writing
from kdcache.cli import main
from kdcache.errors import CacheCorruptError, CacheMismatchError, ConfigError, NonFiniteError
from kdcache.summary import format_summary, summarize
from kdcache.training import outputs, tracking
from kdcache.training.config import TrainConfig
from kdcache.training.loop import run_train
from kdcache.training.step import StepGuard, StepRecord
from kdcache.training.tally import EpochTally

RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl")


def cli(args: list[object]) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def cache3(tmp_path_factory, digits_teacher_weights) -> Path:
    """Dense float16 cache of digits/train: 3 views, 6 blocks of 256 rows per view."""
    out = tmp_path_factory.mktemp("integrity") / "digits3"
    code, output = cli(["extract", "--teacher", "resnet8", "--weights", digits_teacher_weights,
                        "--dataset", "digits", "--views", "3", "--seed", "7", "--chunk-rows", "256",
                        "--workers", "0", "--no-progress", "--out", out])  # fmt: skip
    assert code == 0, output
    return out


def copy(cache: Path, to: Path) -> Path:
    shutil.copytree(cache, to)
    return to


def chunk(cache: Path, array: str, view: int, block: int) -> Path:
    """The file of one block's chunk (per-view arrays have one chunk per (view, block))."""
    trailing = {schema.LOGITS: ["0"], schema.BLOCK_DIGEST: ["0", "0"]}.get(array, [])
    return cache.joinpath(array, "c", str(view), str(block), *trailing)


def config(cache: Path | None, out: Path, **overrides: object) -> TrainConfig:
    """One KD epoch on 256 samples from ``cache`` (None: online, from ``overrides``)."""
    settings: dict = dict(student="resnet8", out=str(out), cache=cache and str(cache), loss="kd",
                          epochs=1, batch_size=64, workers=0, device="cpu", max_samples=256,
                          seed=3)  # fmt: skip
    settings.update(overrides)
    return TrainConfig(**settings)


def train_cli(cache: Path, out: Path, *extra: object) -> tuple[int, str]:
    return cli(["train", "--cache", cache, "--student", "resnet8", "--loss", "kd", "--epochs", "1",
                "--workers", "0", "--max-samples", "512", "--out", out, "--no-progress",
                *extra])  # fmt: skip


def assert_nothing_saved(out: Path) -> None:
    assert not [name for name in RUN_FILES if (out / name).exists()]


def attrs_of(cache: Path) -> dict:
    return json.loads((cache / "zarr.json").read_text())["attributes"]["kdcache"]


def set_attrs(cache: Path, attrs: dict) -> None:
    doc = json.loads((cache / "zarr.json").read_text())
    doc["attributes"]["kdcache"] = attrs
    (cache / "zarr.json").write_text(json.dumps(doc))


def make_legacy(cache: Path, version: str = "1.1") -> None:
    """Turn a 1.2 cache into what kdcache 1.1 wrote: no digest array, older version."""
    shutil.rmtree(cache / schema.BLOCK_DIGEST)
    set_attrs(cache, {**attrs_of(cache), "format_version": version})


# ------------------------------------------------------------------ presence and position (1-3)


def sparse_meta(num_samples: int, num_views: int, chunk_rows: int) -> schema.CacheMeta:
    """A sparse top-3 float32 cache of 6 classes (T = 1 and 4), for blocks written by hand."""
    return schema.CacheMeta(
        identity=schema.CacheIdentity(
            teacher=schema.TeacherInfo("resnet8", None, 1),
            dataset=schema.DatasetInfo("digits", "train", num_samples, 6, "f" * 64),
            augmentation=schema.AugmentationInfo("cifar", {}, 0, num_views),
            storage=schema.StorageInfo(
                "sparse", "float32", chunk_rows, topk=3, temperatures=(1.0, 4.0)
            ),
        )
    )


def delete_logits(cache: Path) -> None:
    chunk(cache, schema.LOGITS, 0, 1).unlink()


def copy_view2_over_view0(cache: Path) -> None:
    shutil.copyfile(chunk(cache, schema.LOGITS, 2, 1), chunk(cache, schema.LOGITS, 0, 1))


def copy_view2_with_its_digest(cache: Path) -> None:
    # A bad sync that moves the digest record along: the digest is bound to its position too.
    for array in (schema.LOGITS, schema.BLOCK_DIGEST):
        shutil.copyfile(chunk(cache, array, 2, 1), chunk(cache, array, 0, 1))


def write_zeros(cache: Path) -> None:
    # Valid bytes (the codec's crc32c is right), wrong values.
    zarr.open_array(str(cache / schema.LOGITS), mode="r+")[0, 256:512, :] = 0


DAMAGE = {
    "deleted": (delete_logits, "is missing although its block is marked written"),
    "moved": (copy_view2_over_view0, "does not hold the data recorded for that position"),
    "moved with digest": (copy_view2_with_its_digest, "does not hold the data recorded"),
    "zeroed": (write_zeros, "does not hold the data recorded for that position"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_or_misplaced_chunk_is_named_by_verify_and_train(cache3, tmp_path, damage):
    broken = copy(cache3, tmp_path / "broken")
    apply, message = DAMAGE[damage]
    apply(broken)
    where = "logits chunk (view 0, block 1, rows 256-511)"

    code, output = cli(["verify", broken, "--replay", "0"])
    assert code == 1 and "[FAIL] chunks" in output and where in output and message in output

    code, output = train_cli(broken, tmp_path / "run")
    assert code == 1 and where in output and message in output and "Traceback" not in output
    assert_nothing_saved(tmp_path / "run")


def test_reads_check_every_array_of_the_block(cache3, tmp_path):
    broken = copy(cache3, tmp_path / "broken")
    shutil.copyfile(chunk(broken, schema.INPUT_HASH, 2, 4), chunk(broken, schema.INPUT_HASH, 1, 4))
    reader = open_cache(str(broken))
    reader.read_dense(1, 4)  # the logits of that block are intact
    with pytest.raises(CacheCorruptError, match=r"input_hash chunk \(view 1, block 4, rows 1024"):
        reader.read_input_hashes(1, 4)


def test_a_sparse_cache_binds_every_array_of_the_block(tmp_path):
    meta = sparse_meta(num_samples=10, num_views=2, chunk_rows=4)
    ident = meta.identity
    writer = open_for_writing(str(tmp_path / "c"), meta, np.arange(10) % 6, create=True)
    rng = np.random.default_rng(0)
    for view in range(2):
        for block in range(meta.num_blocks):
            rows = meta.block_rows(block)
            n = rows.stop - rows.start
            logits = rng.normal(size=(n, 6)).astype(np.float32)
            writer.write_block(view, block, logits, np.arange(rows.start, rows.stop) + 1, 1, 2,
                               labels=np.arange(rows.start, rows.stop) % 6)  # fmt: skip
    writer.finalize()
    reader = open_cache(str(tmp_path / "c"))
    last = reader.read_sparse(1, 2)  # the short last block
    assert [len(x) for x in (last.values, last.indices, last.lse, last.tail_lse)] == [2, 2, 2, 2]
    code, output = cli(["verify", tmp_path / "c", "--replay", "0"])
    assert code == 0, output
    for array in schema.data_arrays(ident.storage):
        broken = copy(tmp_path / "c", tmp_path / f"broken-{array}")
        sub = ["0"] if array not in schema.SPARSE_ROW_STATS else []
        shutil.copyfile(broken.joinpath(array, "c", "1", "1", *sub),
                        broken.joinpath(array, "c", "0", "1", *sub))  # fmt: skip
        with pytest.raises(CacheCorruptError, match=rf"{array} chunk \(view 0, block 1, rows 4-7"):
            open_cache(str(broken)).read_sparse(0, 1)


def test_a_missing_input_hash_chunk_is_named_not_blamed_on_library_versions(cache3, tmp_path):
    broken = copy(cache3, tmp_path / "broken")
    chunk(broken, schema.INPUT_HASH, 1, 0).unlink()
    where = "input_hash chunk (view 1, block 0, rows 0-255)"

    code, output = cli(["verify", broken])  # the sampled replay need not hit the block
    assert code == 1 and "[FAIL] chunks" in output and where in output and "missing" in output

    code, output = train_cli(broken, tmp_path / "run", "--verify-replay", "all")
    assert code == 1 and where in output and "missing" in output
    assert "versions" not in output and "differs from the one the teacher saw" not in output
    assert_nothing_saved(tmp_path / "run")


def test_the_digest_is_bound_to_array_view_and_block():
    values = np.arange(12, dtype=np.float16).reshape(4, 3)
    base = block_digest("logits", 0, 1, slice(4, 8), values)
    assert len(base) == 32
    assert block_digest("logits", 0, 1, slice(4, 8), values.copy()) == base
    for other in (
        block_digest("logits", 2, 1, slice(4, 8), values),
        block_digest("logits", 0, 2, slice(4, 8), values),
        block_digest("topk_values", 0, 1, slice(4, 8), values),
        block_digest("logits", 0, 1, slice(4, 8), values.astype(np.float32)),
        block_digest("logits", 0, 1, slice(4, 8), values + 1),
    ):
        assert other != base


def test_the_digest_is_the_documented_sha256():
    import hashlib
    import struct

    values = np.array([[1.5, -2.0]], dtype=np.float16)
    expected = hashlib.sha256(
        b"kdcache-block-v1\0logits\0" + struct.pack("<4q", 3, 2, 8, 9) + values.tobytes()
    ).digest()
    assert block_digest("logits", 3, 2, slice(8, 9), values) == expected


# ------------------------------------------------------------------------ old caches still read


def test_a_format_1_1_cache_reads_trains_and_says_what_it_lacks(cache3, tmp_path):
    legacy = copy(cache3, tmp_path / "legacy")
    make_legacy(legacy)
    code, output = cli(["info", legacy])
    assert code == 0 and "records no block digests" in output and "complete (18/18" in output
    code, output = cli(["verify", legacy])
    assert code == 0, output
    assert "[ok] chunks" in output and "records no block digests" in output
    result = run_train(config(legacy, tmp_path / "run"))
    assert (tmp_path / "run" / "last.pt").is_file() and np.isfinite(result.step_losses).all()


def test_a_format_1_1_cache_still_refuses_a_missing_chunk(cache3, tmp_path):
    legacy = copy(cache3, tmp_path / "legacy")
    make_legacy(legacy)
    chunk(legacy, schema.INPUT_HASH, 0, 2).unlink()
    delete_logits(legacy)
    code, output = cli(["verify", legacy, "--replay", "0"])
    assert code == 1 and "input_hash chunk (view 0, block 2, rows 512-767)" in output
    assert "logits chunk (view 0, block 1, rows 256-511)" in output and "missing" in output
    code, output = train_cli(legacy, tmp_path / "run")
    assert code == 1 and "missing" in output
    assert_nothing_saved(tmp_path / "run")


def test_resuming_an_unfinished_1_1_cache_keeps_it_1_1(cache3, tmp_path, digits_teacher_weights):
    legacy = copy(cache3, tmp_path / "legacy")
    make_legacy(legacy)
    set_attrs(legacy, {**attrs_of(legacy), "complete": False})
    for path in (legacy / schema.BLOCK_DONE / "c" / "2").iterdir():
        path.unlink()
    shutil.rmtree(legacy / schema.LOGITS / "c" / "2")
    code, output = cli(["extract", "--teacher", "resnet8", "--weights", digits_teacher_weights,
                        "--dataset", "digits", "--views", "3", "--seed", "7", "--chunk-rows", "256",
                        "--workers", "0", "--no-progress", "--out", legacy])  # fmt: skip
    assert code == 0, output
    assert attrs_of(legacy)["format_version"] == "1.1"
    assert not (legacy / schema.BLOCK_DIGEST).exists()
    np.testing.assert_array_equal(
        open_cache(str(legacy)).read_dense(2, 5), open_cache(str(cache3)).read_dense(2, 5)
    )


# ---------------------------------------------------------------- info and derived figures (6)


def test_info_calls_a_cache_with_a_missing_mark_incomplete(cache3, tmp_path):
    broken = copy(cache3, tmp_path / "broken")
    chunk(broken, schema.BLOCK_DONE, 2, 5).unlink()
    code, output = cli(["info", broken])
    assert code == 0 and "INCOMPLETE (17/18 blocks)" in output and "complete (" not in output
    assert "WARNING" in output and "(view 2, block 5)" in output
    summary = json.loads(cli(["info", broken, "--json"])[1])
    assert summary["complete"] is False and summary["blocks"]["done"] == 17


def test_an_edited_teacher_top1_is_caught_by_verify_and_info(cache3, tmp_path):
    edited = copy(cache3, tmp_path / "edited")
    attrs = attrs_of(edited)
    set_attrs(edited, {**attrs, "teacher_top1": [x + 20.0 for x in attrs["teacher_top1"]]})
    code, output = cli(["verify", edited, "--replay", "0"])
    assert code == 1 and "[FAIL] figures" in output and "teacher_top1" in output
    code, output = cli(["info", edited])
    assert code == 0 and "WARNING" in output and "teacher_top1" in output
    code, output = cli(["verify", cache3, "--replay", "0"])
    assert code == 0 and "[ok] figures" in output


def test_an_edited_block_count_is_caught_by_its_digest(cache3, tmp_path):
    edited = copy(cache3, tmp_path / "edited")
    counts = zarr.open_array(str(edited / schema.BLOCK_TOP1), mode="r+")
    counts[1, 3] = int(counts[1, 3]) + 50
    code, output = cli(["verify", edited, "--replay", "0"])
    assert code == 1 and "block_top1_correct chunk (view 1, block 3" in output


# ------------------------------------------------------------------- non-finite training (2)


@pytest.mark.parametrize("lr", ["nan", "inf", "-inf"])
def test_a_non_finite_learning_rate_is_refused_up_front(cache3, tmp_path, lr):
    code, output = train_cli(cache3, tmp_path / "run", "--lr", lr)
    assert code == 1 and "--lr must be a finite number" in output and "Traceback" not in output
    assert_nothing_saved(tmp_path / "run")
    with pytest.raises(ConfigError, match="`lr` must be a finite number"):
        config(cache3, tmp_path / "x", lr=float(lr))


def test_a_diverging_run_stops_naming_the_step_before_any_checkpoint(cache3, tmp_path):
    with pytest.raises(NonFiniteError, match=r"training loss is (nan|inf) at epoch 1, step \d+"):
        run_train(config(cache3, tmp_path / "run", lr=1e30))
    assert_nothing_saved(tmp_path / "run")


def test_non_finite_online_teacher_logits_stop_the_run(
    cache3, tmp_path, digits_teacher_weights, monkeypatch
):
    import kdcache.stream.live_teacher as live

    real = live.teacher_forward

    def broken_teacher(model, x):  # type: ignore[no-untyped-def]
        logits = real(model, x)
        logits[5, 2] = float("nan")
        return logits

    monkeypatch.setattr(live, "teacher_forward", broken_teacher)
    online = dict(dataset="digits", recipe="cifar", aug_seed=7, num_views=3, teacher="resnet8",
                  teacher_weights=str(digits_teacher_weights))  # fmt: skip
    with pytest.raises(NonFiniteError, match=r"online teacher's logits for \(view \d+, sample \d+"):
        run_train(config(None, tmp_path / "run", **online))
    assert_nothing_saved(tmp_path / "run")


def test_the_step_guard_names_the_cached_chunk():
    logits = torch.zeros(4, 10)
    logits[2, 7] = float("inf")
    view, index = torch.tensor([0, 1, 2, 0]), torch.tensor([3, 300, 700, 9])
    for origin, message in (
        ("cache", r"\(view 2, sample 700\), in the chunk \(view 2, block 2\)"),
        ("live", r"online teacher's logits for \(view 2, sample 700"),
    ):
        guard, tally = StepGuard(torch.device("cpu")), EpochTally()
        for step_logits in (torch.zeros(4, 10), logits):  # the bad rows come at step 2
            ok = guard.check(torch.tensor(True), torch.isfinite(step_logits).all(dim=1))
            tally.queue(4, StepRecord(torch.tensor([1.0]), ()), 0.1, view, index)
            assert bool(ok) == bool(torch.isfinite(step_logits).all())
        where = r".*1 rows of this batch, epoch 1, step 2"
        with pytest.raises(NonFiniteError, match=message + where):
            tally.flush(guard, epoch=0, origin=origin, chunk_rows=256)
    guard, tally = StepGuard(torch.device("cpu")), EpochTally()
    guard.check(torch.tensor(True), torch.ones(4, dtype=torch.bool))
    tally.queue(4, StepRecord(torch.tensor([1.0]), ()), 0.1, view, index)
    tally.flush(guard, epoch=0, origin="cache", chunk_rows=256)
    assert tally.step_losses == [1.0]


# ---------------------------------------------------------------------------- resume (5)


def stop_after_first_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    real_plot = tracking.plot_curves

    def crash(out):  # type: ignore[no-untyped-def]
        real_plot(out)
        raise KeyboardInterrupt("simulated stop after epoch 1")

    monkeypatch.setattr(tracking, "plot_curves", crash)


def test_resume_with_another_cache_is_refused_naming_both(cache3, tmp_path, monkeypatch):
    # Another cache of the same data: another seed, a consistent fingerprint (not an edit).
    other = copy(cache3, tmp_path / "other")
    attrs = attrs_of(other)
    attrs["augmentation"]["seed"] = 8
    attrs["fingerprint"] = schema.CacheIdentity.from_dict(attrs).fingerprint()
    set_attrs(other, attrs)
    stop_after_first_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_train(config(cache3, tmp_path / "run", epochs=2))
    monkeypatch.undo()
    before = (tmp_path / "run" / "last.pt").read_bytes()
    first, second = open_cache(str(cache3)).meta, open_cache(str(other)).meta
    with pytest.raises(CacheMismatchError) as err:
        run_train(config(other, tmp_path / "run", epochs=2, resume=True))
    assert first.fingerprint in str(err.value) and second.fingerprint in str(err.value)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    assert [r["epoch"] for r in outputs.read_metrics(tmp_path / "run")] == [1]
    # The same cache at another path (a copy) resumes.
    moved = copy(cache3, tmp_path / "moved")
    run_train(config(moved, tmp_path / "run", epochs=2, resume=True))
    assert [r["epoch"] for r in outputs.read_metrics(tmp_path / "run")] == [1, 2]


def test_resume_with_other_online_teacher_weights_is_refused(cache3, tmp_path, monkeypatch,
                                                             digits_teacher_weights):  # fmt: skip
    weights = tmp_path / "teacher.pth"
    shutil.copyfile(digits_teacher_weights, weights)
    online = dict(dataset="digits", recipe="cifar", aug_seed=7, num_views=3, teacher="resnet8",
                  teacher_weights=str(weights), epochs=2)  # fmt: skip
    stop_after_first_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_train(config(None, tmp_path / "run", **online))
    monkeypatch.undo()
    from kdcache.models import build_model, weights_sha256

    old_sha = weights_sha256(str(weights))
    torch.manual_seed(1)
    torch.save(build_model("resnet8", 10, in_chans=1).state_dict(), weights)  # same path
    with pytest.raises(CacheMismatchError, match="teacher weights") as err:
        run_train(config(None, tmp_path / "run", resume=True, **online))
    assert old_sha in str(err.value) and weights_sha256(str(weights)) in str(err.value)


def test_the_digest_benchmark_runs_at_a_tiny_size() -> None:
    """benchmarks/bench_digest.py (figures in docs/benchmarks.md) still runs: every mode timed."""
    from benchmarks import bench_digest

    figures = bench_digest.main(["--samples", "3000", "--classes", "10", "--repeats", "1"])
    modes = {"checked", "zarr only", "digests only", "digest records read", "opening the reader"}
    assert modes < set(figures) and all(figures[m] > 0 for m in modes)


def test_verify_flags_sparse_rows_whose_normaliser_disagrees_with_their_kept_values(
    tmp_path, monkeypatch
):
    """Digests bind what was written; the kept-mass check catches a writer that stored a wrong
    log-sum-exp (kept probabilities summing to more than 1)."""
    from kdcache.cache import sparse as sparse_rows
    from kdcache.cache import writer as cache_writer

    meta = sparse_meta(num_samples=8, num_views=1, chunk_rows=4)

    def write(out: Path) -> None:
        writer = open_for_writing(str(out), meta, np.arange(8) % 6, create=True)
        rng = np.random.default_rng(0)
        for block in range(meta.num_blocks):
            logits = rng.normal(size=(4, 6)).astype(np.float32)
            writer.write_block(0, block, logits, np.arange(4) + 4 * block + 1, 1, 2,
                               labels=np.arange(4) % 6)  # fmt: skip
        writer.finalize()

    write(tmp_path / "good")
    code, output = cli(["verify", tmp_path / "good", "--replay", "0"])
    assert code == 0 and "kept top-3 mass is at most 1 + 1e-05 at T = 1, 4" in output, output

    def low_normaliser(*args, **kwargs):
        rows = sparse_rows.sparse_rows_from_logits(*args, **kwargs)
        lse = rows.lse.copy()
        lse[1, 1] -= 1.0  # row 1 at T = 4: its kept mass (about 1/2) times e, above 1
        return dataclasses.replace(rows, lse=lse)

    monkeypatch.setattr(cache_writer, "sparse_rows_from_logits", low_normaliser)
    write(tmp_path / "bad")
    code, output = cli(["verify", tmp_path / "bad", "--replay", "0"])
    assert code == 1 and "2 bad" in output and "1 rows whose kept top-3 mass exceeds 1" in output


def test_info_gives_the_size_per_row_written_for_a_partial_cache(tmp_path):
    meta = sparse_meta(num_samples=4000, num_views=1, chunk_rows=1000)
    writer = open_for_writing(str(tmp_path / "c"), meta,
                              np.arange(4000) % 6, create=True)  # fmt: skip
    logits = np.random.default_rng(0).normal(size=(1000, 6)).astype(np.float32)
    writer.write_block(0, 0, logits, np.arange(1000) + 1, 1, 2, labels=np.arange(1000) % 6)
    summary = summarize(open_cache(str(tmp_path / "c")))
    assert summary["rows_written"] == 1000  # one block of four
    text = format_summary(summary)
    per_row = summary["stored_bytes"] / 1000
    assert f"({per_row:.1f} bytes per sample per view written)" in text, text
