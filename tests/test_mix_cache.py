"""Caches of mixed views: the same bytes whatever the batch size, workers or ranks; partners and
lambdas stored and digested; verify replays them; training on them, cached and online alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from kdcache.augment import create_recipe
from kdcache.cache.reader import open_cache
from kdcache.cli import main
from kdcache.data import load_dataset
from kdcache.training.config import TrainConfig
from kdcache.training.loop import run_train
from kdcache.views import SeededViews, view_items
from tests.conftest import cache_attrs, cache_chunk_bytes, run_kdcache_process

RECIPE = "cifar+mixup-cutmix"


def cli(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def extract_args(weights: Path, out: Path) -> list[str]:
    """The digits test split (359 samples), 1 mixed view, float32, 64 rows per chunk."""
    return ["extract", "--teacher", "resnet8", "--weights", str(weights), "--dataset", "digits",
            "--split", "test", "--recipe", RECIPE, "--views", "1", "--seed", "5",
            "--dtype", "float32", "--chunk-rows", "64", "--no-progress",
            "--out", str(out)]  # fmt: skip


@pytest.fixture(scope="module")
def mixed_cache(tmp_path_factory, digits_teacher_weights) -> Path:
    out = tmp_path_factory.mktemp("mixed") / "cache"
    code, output = cli([*extract_args(digits_teacher_weights, out), "--workers", "0",
                        "--batch-size", "7"])  # fmt: skip
    assert code == 0, output
    return out


def test_the_cache_stores_each_views_partner_and_lambda(mixed_cache) -> None:
    reader = open_cache(str(mixed_cache))
    assert reader.identity.augmentation.recipe == RECIPE
    assert reader.identity.augmentation.params["switch_prob"] == 0.5
    source = load_dataset("digits", None, "test")
    views = SeededViews(source, create_recipe(RECIPE, source.spec, **reader.identity.augmentation
                        .params), 5, view_items([0], range(64, 128)))  # fmt: skip
    partners, lambdas = reader.read_mix(0, 1)  # rows 64..127
    hashes = reader.read_input_hashes(0, 1)
    assert partners.dtype == np.int64 and lambdas.dtype == np.float32
    for k in range(64):
        item = views[k]
        assert (partners[k], lambdas[k], hashes[k]) == (
            item["partner"], item["lam"].item(), item["input_hash"],
        )  # fmt: skip
    assert len(set(lambdas.tolist())) > 10 and (partners != np.arange(64, 128)).any()


def test_verify_replays_a_mixed_cache_and_catches_an_edited_lambda(mixed_cache, tmp_path) -> None:
    code, output = cli(["verify", mixed_cache])
    assert code == 0, output
    assert "replay: 64 sampled views regenerate bit-exactly" in output
    import shutil

    edited = tmp_path / "edited"
    shutil.copytree(mixed_cache, edited)
    lam = zarr.open_array(str(edited / "mix_lambda"), mode="r+")
    lam[0, 0:64] = np.asarray(lam[0, 0:64]) * np.float32(0.5)
    code, output = cli(["verify", edited])
    assert code == 1
    assert "mix_lambda chunk (view 0, block 0" in output and "does not hold the data" in output


def test_a_mixed_cache_refuses_dkd_and_rld_before_anything_runs(mixed_cache, tmp_path) -> None:
    for loss in ("dkd", "rld"):
        out = tmp_path / loss
        code, output = cli(["train", "--cache", mixed_cache, "--student", "resnet8", "--loss",
                            loss, "--epochs", "1", "--out", out, "--no-progress"])  # fmt: skip
        assert code == 1
        assert f"loss '{loss}' has no definition for mixed views ({RECIPE})" in output
        assert "Use kd or ldrld" in output and output.count("\n") <= 2
        assert not out.exists()


def config(out: Path, **overrides) -> TrainConfig:
    settings = dict(student="resnet8", out=str(out), epochs=1, batch_size=64, workers=0,
                    device="cpu", seed=3, loss="kd")  # fmt: skip
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.mark.slow
def test_cached_and_online_training_on_mixed_views_give_the_same_step_losses(
    tmp_path, mixed_cache, digits_teacher_weights
) -> None:
    cached = run_train(config(tmp_path / "cached", cache=str(mixed_cache)))
    online = run_train(config(tmp_path / "online", dataset="digits", split="test", recipe=RECIPE,
                              aug_seed=5, num_views=1, block_rows=64, teacher="resnet8",
                              teacher_weights=str(digits_teacher_weights)))  # fmt: skip
    assert len(cached.step_losses) == 6  # 359 samples, batch 64
    assert cached.step_losses == online.step_losses


def test_mixed_cache_bytes_do_not_depend_on_batch_size_or_workers(
    tmp_path, mixed_cache, digits_teacher_weights
) -> None:
    other = tmp_path / "b64w2"
    code, output = cli([*extract_args(digits_teacher_weights, other), "--workers", "2",
                        "--batch-size", "64"])  # fmt: skip
    assert code == 0, output
    assert cache_chunk_bytes(mixed_cache) == cache_chunk_bytes(other)
    assert cache_attrs(mixed_cache) == cache_attrs(other)


@pytest.mark.slow
def test_two_torchrun_ranks_write_the_mixed_bytes_of_one_process(
    tmp_path, mixed_cache, digits_teacher_weights
) -> None:
    multi = tmp_path / "multi"
    args = [*extract_args(digits_teacher_weights, multi), "--workers", "0", "--device", "cpu"]
    done = run_kdcache_process(args[:], ranks=2, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert cache_chunk_bytes(mixed_cache) == cache_chunk_bytes(multi)
    assert cache_attrs(mixed_cache) == cache_attrs(multi)


def test_the_public_loader_serves_the_stored_partners_and_lambdas(mixed_cache) -> None:
    import kdcache

    cache = kdcache.open_cache(mixed_cache)
    reader = open_cache(str(mixed_cache))
    labels = reader.labels()
    partners = np.concatenate([reader.read_mix(0, b)[0] for b in range(reader.meta.num_blocks)])
    lambdas = np.concatenate([reader.read_mix(0, b)[1] for b in range(reader.meta.num_blocks)])
    seen = 0
    for batch in cache.loader(None, batch_size=50, seed=1, epoch=0, verify_replay="all"):
        index = batch.index.numpy()
        assert batch.lam is not None and batch.partner_labels is not None
        assert np.array_equal(batch.lam.numpy(), lambdas[index])
        assert np.array_equal(batch.partner_labels.numpy(), labels[partners[index]])
        soft = batch.soft_targets(10)  # [B, 10]
        assert soft.shape == (len(index), 10)
        np.testing.assert_allclose(soft.sum(1).numpy(), 1.0, rtol=1e-6)
        seen += len(index)
    assert seen == len(labels)


def test_caches_without_mixing_have_no_mix_arrays(tmp_path) -> None:
    from kdcache.cache import schema
    from kdcache.cache.digest import digested_arrays
    from kdcache.cache.writer import open_for_writing
    from kdcache.errors import CacheError

    source = load_dataset("digits", None, "test")
    for recipe, arrays in (("cifar", 4), ("cifar+cutmix", 6)):
        params = create_recipe(recipe, source.spec).params()
        ident = schema.CacheIdentity(
            teacher=schema.TeacherInfo("synthetic", None, 0),
            dataset=schema.DatasetInfo(
                "digits", "test", len(source), 10, source.fingerprint(), source.spec.to_dict()
            ),  # fmt: skip
            augmentation=schema.AugmentationInfo(recipe, params, 0, 1),
            storage=schema.StorageInfo("dense", "float32", 512),
        )
        out = tmp_path / recipe
        open_for_writing(str(out), schema.CacheMeta(identity=ident), source.labels, create=True)
        assert (out / "mix_partner").exists() == (out / "mix_lambda").exists() == (arrays == 6)
        assert len(digested_arrays(ident.storage, ident.augmentation.mixed)) == arrays
        if arrays == 4:
            with pytest.raises(CacheError, match="mixes nothing"):
                open_cache(str(out)).read_mix(0, 0)
