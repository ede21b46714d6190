"""Roads a new user walks from the README and docs, and the mistakes made on them: each mistake is
met with one clear line rather than a silent wrong run."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import kdcache
from kdcache.cli import main
from kdcache.errors import ConfigError
from kdcache.extract import ExtractConfig, run_extract
from kdcache.models import build_model, inference
from kdcache.models.inference import CUDA_FORWARD_ROWS, padded_batch_note
from kdcache.training.config import TrainConfig


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        (dict(recipe="imagenet"), "`recipe`"),
        (dict(aug_seed=3), "`aug_seed`"),
        (dict(num_views=4), "`num_views`"),
        (dict(split="test"), "`split`"),
        (dict(block_rows=64), "`block_rows`"),
    ],
)
def test_view_settings_given_with_a_cache_are_refused_not_ignored(
    overrides: dict, setting: str
) -> None:
    with pytest.raises(ConfigError, match=f"{setting} only appl(y|ies) without `cache`"):
        TrainConfig(student="resnet8", out="run", cache="some/cache", **overrides)


def test_view_settings_still_apply_without_a_cache() -> None:
    config = TrainConfig(student="resnet8", out="run", dataset="digits", recipe="imagenet",
                         aug_seed=3, num_views=4, split="test", block_rows=64)  # fmt: skip
    assert config.recipe == "imagenet" and config.num_views == 4


def test_the_cli_refuses_aug_seed_with_a_cache_before_writing_anything(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--cache", str(tmp_path / "cache"),
                                       "--student", "resnet8", "--aug-seed", "3",
                                       "--out", str(out)])  # fmt: skip
    assert result.exit_code == 1
    assert "--aug-seed only applies without --cache" in result.output
    assert not out.exists()


def test_a_cuda_batch_size_off_the_forward_rows_is_named_with_what_it_wastes() -> None:
    note = padded_batch_note(300, torch.device("cuda"))
    assert note is not None and "runs as 512 rows (41%" in note and "multiple of 256" in note
    assert padded_batch_note(512, torch.device("cuda")) is None
    assert padded_batch_note(300, torch.device("cpu")) is None  # CPU pads only short batches


def test_extract_warns_when_its_cuda_forwards_would_be_padded(
    tmp_path, digits_teacher_weights, monkeypatch, caplog
) -> None:
    # Stand in for CUDA: every forward of 256 rows, as on a GPU (runs on CPU just the same).
    monkeypatch.setattr(inference, "forward_rows", lambda device: CUDA_FORWARD_ROWS)
    config = ExtractConfig(teacher="resnet8", weights=str(digits_teacher_weights),
                           dataset="digits", split="test", recipe="none", batch_size=100,
                           workers=0, chunk_rows=512, out=str(tmp_path / "c"))  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="kdcache.extract"):
        run_extract(config)
    assert "--batch-size 100 on CUDA" in caplog.text and "multiple of 256" in caplog.text


def test_extract_reports_the_teacher_top1_on_the_split_it_ran_on(
    tmp_path, digits_teacher_weights
) -> None:
    result = CliRunner().invoke(main, ["extract", "--teacher", "resnet8", "--weights",
                                       str(digits_teacher_weights), "--dataset", "digits",
                                       "--split", "test", "--recipe", "none", "--workers", "0",
                                       "--no-progress", "--out", str(tmp_path / "c")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "on the augmented test views" in result.output


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory, digits_teacher_weights) -> Path:
    """One view of the digits test split (359 samples), float32, 128 rows per chunk."""
    out = tmp_path_factory.mktemp("cache") / "digits_test"
    run_extract(ExtractConfig(teacher="resnet8", weights=str(digits_teacher_weights),
                              dataset="digits", split="test", recipe="cifar", dtype="float32",
                              chunk_rows=128, workers=0, out=str(out)))  # fmt: skip
    return out


def test_the_api_docs_student_preprocessing_road_runs_as_written(small_cache: Path) -> None:
    # docs/api.md: kdcache.resolve_preprocessing(model, cache.spec, "auto") for the loader
    cache = kdcache.open_cache(small_cache)
    model = build_model("resnet8", cache.classes, in_chans=cache.in_chans)
    assert cache.spec.num_classes == cache.classes and cache.spec.image_size == cache.image_size
    pre = kdcache.resolve_preprocessing(model, cache.spec, "dataset,size=16")
    batch = next(iter(cache.loader(None, batch_size=32, seed=0, epoch=0, preprocessing=pre)))
    assert batch.images.shape == (32, 1, 16, 16) and batch.views_uint8.shape == (32, 1, 8, 8)


def test_a_student_built_for_other_images_is_one_clear_line_not_a_bug_report(
    tmp_path: Path, small_cache: Path
) -> None:
    # The user's own model expects 3-channel images; digits views have 1 channel.
    (tmp_path / "mine.py").write_text(
        "import torch.nn as nn\n"
        "def net(num_classes, **kw):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, num_classes))\n"
    )
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--cache", str(small_cache), "--student",
                                       f"{tmp_path / 'mine.py'}:net", "--loss", "kd",
                                       "--workers", "0", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 1
    assert "the student fails on the data's input [2, 1, 8, 8]" in result.output
    assert "in_chans=1" in result.output and "bug" not in result.output
    assert not out.exists()


THREE_CHANNEL_NET = (
    "import torch.nn as nn\n"
    "def net(num_classes, **kw):\n"
    "    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, num_classes))\n"
)


def _three_channel_teacher(tmp_path: Path) -> tuple[str, str]:
    """A teacher of the user's own, built for 3 x 8 x 8 images, and its weights: (spec, path)."""
    (tmp_path / "mine.py").write_text(THREE_CHANNEL_NET)
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 10)).state_dict(),
               tmp_path / "w.pth")  # fmt: skip
    return f"{tmp_path / 'mine.py'}:net", str(tmp_path / "w.pth")


def test_a_teacher_built_for_other_images_is_refused_before_the_cache_is_created(
    tmp_path: Path,
) -> None:
    teacher, weights = _three_channel_teacher(tmp_path)
    out = tmp_path / "cache"
    result = CliRunner().invoke(main, ["extract", "--teacher", teacher,
                                       "--weights", weights, "--dataset",
                                       "digits", "--split", "test", "--workers", "0",
                                       "--no-progress", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 1
    assert "the teacher fails on the data's input [2, 1, 8, 8]" in result.output
    assert "bug" not in result.output and not out.exists()


def test_a_live_teacher_built_for_other_images_is_refused_before_the_run_starts(
    tmp_path: Path,
) -> None:
    teacher, weights = _three_channel_teacher(tmp_path)
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--dataset", "digits", "--teacher",
                                       teacher, "--teacher-weights",
                                       weights, "--student", "resnet8",
                                       "--loss", "kd", "--workers", "0", "--no-progress",
                                       "--out", str(out)])  # fmt: skip
    assert result.exit_code == 1
    assert "the teacher fails on the data's input [2, 1, 8, 8]" in result.output
    assert "bug" not in result.output and not (out / "run.json").exists()


@pytest.mark.parametrize("command", ["info", "verify", "train"])
def test_an_array_inside_a_cache_given_as_the_cache_names_the_cache_folder(
    small_cache: Path, command: str, tmp_path: Path
) -> None:
    inner = str(small_cache / "logits")
    args = {"info": ["info", inner], "verify": ["verify", inner],
            "train": ["train", "--cache", inner, "--student", "resnet8", "--epochs", "1",
                      "--out", str(tmp_path / "run")]}[command]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "is one array inside a cache, not a cache" in result.output
    assert f"e.g. {small_cache}" in result.output and "bug in kdcache" not in result.output


def test_extract_into_an_array_of_a_cache_is_refused_and_the_cache_is_untouched(
    small_cache: Path, digits_teacher_weights: Path
) -> None:
    before = sorted((p.relative_to(small_cache), p.stat().st_mtime_ns)
                    for p in small_cache.rglob("*"))  # fmt: skip
    with pytest.raises(kdcache.KdcacheError, match="one array inside a cache"):
        run_extract(ExtractConfig(teacher="resnet8", weights=str(digits_teacher_weights),
                                  dataset="digits", split="test", recipe="cifar", workers=0,
                                  out=str(small_cache / "logits")))  # fmt: skip
    after = sorted((p.relative_to(small_cache), p.stat().st_mtime_ns)
                   for p in small_cache.rglob("*"))  # fmt: skip
    assert after == before


def test_verify_of_a_half_copied_cache_names_the_blocks_and_says_the_advice_once(
    small_cache: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "half"
    shutil.copytree(small_cache, copy)
    chunks = sorted(p for p in (copy / "logits").rglob("*") if p.is_file() and "c" in p.parts)
    assert len(chunks) == 3  # 359 samples in blocks of 128 rows
    for chunk in chunks[1:]:  # blocks 1 and 2's logits never arrived
        chunk.unlink()
    result = CliRunner().invoke(main, ["verify", str(copy)])
    assert result.exit_code == 1
    line = next(x for x in result.output.splitlines() if x.startswith("[FAIL] chunks"))
    assert "2 bad blocks (view 0 block 1, view 0 block 2;" in line
    assert line.count("Fetch a complete copy") == 1 and "-v verify` lists each" in line
    assert "The problem: logits chunk (view 0, block 1" in line


def test_a_topk_over_the_class_count_says_what_to_give_before_the_teacher_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_teacher(*args: object, **kwargs: object) -> None:
        raise AssertionError("the teacher was built before the settings were checked")

    monkeypatch.setattr("kdcache.extract.build_model", no_teacher)
    out = tmp_path / "c"
    config = ExtractConfig(teacher="resnet8", weights="unused.pth", dataset="digits",
                           split="test", recipe="cifar", topk=11, out=str(out))  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"`topk` 11 exceeds the 10 classes of digits: give K <= 10"
    ):
        run_extract(config)
    assert not out.exists()
