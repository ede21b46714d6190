"""The public API: open_cache, Cache.loader (the stream `kdcache train` runs on), examples."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import kdcache
from kdcache.cache.reader import open_cache as open_reader
from kdcache.losses.sparse import SparseTeacher
from kdcache.stream.plan import epoch_views, plan_epoch
from kdcache.training import outputs
from kdcache.training.config import TrainConfig
from kdcache.training.loop import run_train
from tests.conftest import REPO, free_port
from tests.test_train import cli, extract_digits, extract_tiny_folder

N_DIGITS = 1438  # samples in the digits train split


# fp32_cache: the session's shared read-only dense float32 digits cache (tests/conftest.py):
# 2 views, 256 rows per chunk (6 blocks).


def every_file(root: Path) -> dict[str, bytes]:
    """Every file under a cache, metadata included: what a writer would change."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def load_example(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- the API surface


def test_import_kdcache_stays_light_and_every_public_name_resolves():
    code = "import sys, kdcache; assert 'torch' not in sys.modules, 'torch imported eagerly'"
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    for name in kdcache.__all__:
        assert getattr(kdcache, name) is not None, name
    with pytest.raises(AttributeError):
        kdcache.no_such_name  # noqa: B018


def test_create_model_builds_zoo_and_timm_names_as_train_resolves_them(digits_teacher_weights):
    import timm
    import torch

    from kdcache.models import build_model

    zoo = kdcache.create_model("resnet8", num_classes=10, in_chans=1)
    assert type(zoo) is type(build_model("resnet8", 10, in_chans=1))
    assert type(kdcache.create_model("cifar_resnet8", num_classes=10)) is type(zoo)  # timm name
    tiny = kdcache.create_model("timm:test_resnet", num_classes=7)
    assert type(tiny) is type(timm.create_model("test_resnet", num_classes=7))
    assert tiny.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 7)
    assert "resnet8" in kdcache.list_models()
    loaded = kdcache.create_model(
        "resnet8", num_classes=10, in_chans=1, pretrained=digits_teacher_weights
    )
    saved = torch.load(digits_teacher_weights, weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in loaded.state_dict().items())
    with pytest.raises(kdcache.ConfigError, match="never downloads weights"):
        kdcache.create_model("resnet8", num_classes=10, pretrained=True)


def test_create_model_loads_the_zoo_lazily():
    code = (
        "import sys, kdcache; assert 'kdcache.models' not in sys.modules; "
        "m = kdcache.create_model('resnet8', num_classes=3); "
        "assert 'kdcache.models' in sys.modules and m.fc.out_features == 3"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_open_cache_exposes_the_identity_as_typed_attributes(fp32_cache):
    cache = kdcache.open_cache(fp32_cache)
    meta = open_reader(str(fp32_cache)).meta
    assert cache.fingerprint == meta.fingerprint
    assert (cache.teacher, cache.dataset, cache.split, cache.recipe) == (
        "resnet8",
        "digits",
        "train",
        "cifar",
    )
    assert (cache.seed, cache.views, cache.classes, cache.num_samples) == (7, 2, 10, N_DIGITS)
    assert (cache.storage, cache.dtype, cache.chunk_rows, cache.topk) == (
        "dense",
        "float32",
        256,
        None,
    )
    assert (
        cache.complete and cache.teacher_top1 == meta.teacher_top1 and len(cache.teacher_top1) == 2
    )
    assert (cache.in_chans, cache.image_size) == (1, 8)
    assert cache.fingerprint[:16] in repr(cache)


def test_verify_method_reports_what_kdcache_verify_reports(tmp_path, fp32_cache):
    report = kdcache.open_cache(fp32_cache).verify(replay=8)
    assert report.ok and [c.name for c in report.checks] == [
        "metadata",
        "complete",
        "chunks",
        "figures",
        "labels",  # against their recorded digest (format 1.3)
        "dataset",
        "labels",  # against the data's
        "replay",
    ]
    code, output = cli(["verify", fp32_cache, "--replay", "8"])
    assert code == 0
    assert all(f"[ok] {c.name}: {c.detail}" in output for c in report.checks)


def test_a_zip_of_the_cache_opens_and_streams_the_same_batches(tmp_path, fp32_cache):
    packed = tmp_path / "digits.zip"
    code, output = cli(["pack", fp32_cache, packed])
    assert code == 0, output
    args: dict[str, Any] = dict(batch_size=100, seed=4, epoch=1)
    local = list(kdcache.open_cache(fp32_cache).loader(None, **args))
    zipped = list(kdcache.open_cache(packed).loader(None, **args))
    assert kdcache.open_cache(packed).fingerprint == kdcache.open_cache(fp32_cache).fingerprint
    for a, b in zip(local, zipped, strict=True):
        assert torch.equal(a.index, b.index) and torch.equal(a.teacher_logits, b.teacher_logits)


# ---------------------------------------------------------------- the loader's epoch


@pytest.mark.parametrize(
    ("world", "batch", "workers"), [(1, 50, 0), (2, 64, 0), (3, 37, 0), (2, 100, 2)]
)
def test_one_epoch_holds_every_sample_exactly_once(fp32_cache, world, batch, workers):
    handle = kdcache.open_cache(fp32_cache)
    steps, seen = set(), []
    for rank in range(world):
        loader = handle.loader(
            None, batch_size=batch, seed=3, epoch=2, rank=rank, world_size=world, workers=workers
        )
        batches = list(loader)
        steps.add(len(batches))
        assert len(batches) == len(loader) and all(0 < len(b.labels) <= batch for b in batches)
        seen += [b.index.numpy() for b in batches]
        b = batches[-1]
        assert b.images.dtype == torch.float32 and b.images.shape[1:] == (1, 8, 8)
        assert b.teacher_logits is not None and b.teacher_logits.shape == (len(b.labels), 10)
    assert len(steps) == 1  # DDP: every rank runs the same number of steps
    assert sorted(np.concatenate(seen).tolist()) == list(range(N_DIGITS))


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize(("num_samples", "block_rows", "batch"), [(1438, 256, 64), (777, 100, 7)])
def test_the_sharding_function_deals_every_sample_once_in_equal_step_counts(
    world, num_samples, block_rows, batch
):
    common: dict[str, Any] = dict(
        seed=11,
        epoch=4,
        num_samples=num_samples,
        block_rows=block_rows,
        window_blocks=2,
        allowed_views=np.arange(3),
        batch_size=batch,
    )
    plans = [plan_epoch(**common, rank=r, world=world) for r in range(world)]
    assert len({p.steps for p in plans}) == 1
    served = np.concatenate([p.items[s, 1] for p in plans for s in p.batch_slices()])
    assert sorted(served.tolist()) == list(range(num_samples))
    assert all(0 < s.stop - s.start <= batch for p in plans for s in p.batch_slices())
    for p in plans:  # each rank reads only its own blocks
        others = [q for q in plans if q is not p]
        mine = set((p.items[:, 1] // block_rows).tolist())
        assert not any(mine & set((q.items[:, 1] // block_rows).tolist()) for q in others)
    full = [plan_epoch(**common, rank=r, world=world, drop_last=True) for r in range(world)]
    assert len({p.steps for p in full}) == 1
    assert all(s.stop - s.start == batch for p in full for s in p.batch_slices())


def test_batches_carry_the_cached_logits_labels_and_view_of_each_sample(fp32_cache):
    reader = open_reader(str(fp32_cache))
    labels = reader.labels()
    views = epoch_views(5, 1, N_DIGITS, np.arange(2))
    for batch in kdcache.open_cache(fp32_cache).loader(None, batch_size=128, seed=5, epoch=1):
        index, view = batch.index.numpy(), batch.view.numpy()
        np.testing.assert_array_equal(view, views[index])  # view of (seed, epoch, sample)
        np.testing.assert_array_equal(batch.labels.numpy(), labels[index])
        for r in (0, len(index) - 1):
            block, row = divmod(int(index[r]), 256)
            cached = reader.read_dense(int(view[r]), block)[row]
            np.testing.assert_array_equal(batch.teacher_logits[r].numpy(), cached)


def test_order_depends_on_seed_and_epoch_only(fp32_cache):
    def order(**kw: Any) -> list[int]:
        batches = kdcache.open_cache(fp32_cache).loader(None, **kw)
        return np.concatenate([b.index.numpy() for b in batches]).tolist()

    base = order(batch_size=64, seed=1, epoch=0)
    assert order(batch_size=100, seed=1, epoch=0, workers=2, verify_replay="all") == base
    assert order(batch_size=64, seed=1, epoch=1) != base
    assert order(batch_size=64, seed=2, epoch=0) != base


def test_drop_last_serves_only_full_batches(fp32_cache):
    loader = kdcache.open_cache(fp32_cache).loader(
        None, batch_size=100, seed=0, epoch=0, drop_last=True
    )
    assert len(loader) == N_DIGITS // 100
    assert all(len(b.labels) == 100 for b in loader)


def test_the_loader_refuses_more_ranks_than_blocks(fp32_cache):
    with pytest.raises(kdcache.ConfigError, match="at most 6 ranks"):
        kdcache.open_cache(fp32_cache).loader(
            None, batch_size=8, seed=0, epoch=0, rank=0, world_size=7
        )


# ---------------------------------------------------------------- one stream, not two


def test_own_loop_example_and_kdcache_train_give_bit_identical_step_losses(tmp_path, fp32_cache):
    own = load_example("own_loop").main(
        [str(fp32_cache), "--student", "cifar_resnet8", "--epochs", "1", "--seed", "2"]
    )
    config = TrainConfig(
        cache=str(fp32_cache),
        student="resnet8",
        loss="ldrld",
        epochs=1,
        seed=2,
        workers=0,
        device="cpu",
        channels_last=False,
        out=str(tmp_path / "run"),
    )
    trained = run_train(config).step_losses
    assert len(own) == len(trained) == -(-N_DIGITS // 64)
    assert own == trained


def test_eval_every_sets_which_epochs_are_evaluated(tmp_path, fp32_cache):
    settings: dict[str, Any] = dict(
        cache=str(fp32_cache),
        student="resnet8",
        loss="kd",
        epochs=3,
        max_samples=128,
        workers=0,
        device="cpu",
    )
    result = run_train(TrainConfig(out=str(tmp_path / "every2"), eval_every=2, **settings))
    tested = [r["test_top1"] is not None for r in outputs.read_metrics(result.out)]
    assert tested == [False, True, True] and result.final_top1 is not None
    never = run_train(TrainConfig(out=str(tmp_path / "never"), eval_every=0, **settings))
    assert never.final_top1 is None and never.best_top1 is None
    assert all(r["test_top1"] is None for r in outputs.read_metrics(never.out))
    assert not (never.out / "best.pt").exists() and (never.out / "curves.png").is_file()


# ---------------------------------------------------------------- the same errors as the CLI


def error_through_api(cache: Path, data_dir: Path | None = None, *, iterate: bool = False) -> str:
    with pytest.raises(kdcache.KdcacheError) as info:
        loader = kdcache.open_cache(cache).loader(data_dir, batch_size=64, seed=0, epoch=0)
        if iterate:
            list(loader)
    return str(info.value)


def error_through_cli(cache: Path, out: Path, *extra: Any) -> str:
    code, output = cli(
        [
            "train",
            "--cache",
            cache,
            "--student",
            "resnet8",
            "--loss",
            "kd",
            "--epochs",
            "1",
            "--workers",
            "0",
            "--out",
            out,
            "--no-progress",
            *extra,
        ]
    )
    assert code == 1 and "Traceback" not in output
    return output


def test_incomplete_cache_same_error_nothing_written(tmp_path, fp32_cache):
    broken = tmp_path / "incomplete"
    shutil.copytree(fp32_cache, broken)
    (broken / "block_done" / "c" / "1" / "2").unlink()
    before = every_file(broken)
    message = error_through_api(broken)
    assert "incomplete" in message and "(view 1, block 2)" in message
    assert message in error_through_cli(broken, tmp_path / "run")
    assert every_file(broken) == before


def test_replay_mismatch_same_error_nothing_written(tmp_path, fp32_cache, monkeypatch):
    import kdcache.views

    # As if another Pillow/torchvision made the views: every regenerated view differs. (Editing the
    # stored hashes instead is damage, which the block digests refuse before any replay check.)
    seed = kdcache.views.sample_seed
    monkeypatch.setattr(kdcache.views, "sample_seed", lambda s, v, i: seed(s + 1, v, i))
    # ... on either stream: the host path's recipes and the device-resident views' geometry.
    import kdcache.stream.device_views

    monkeypatch.setattr(
        kdcache.stream.device_views, "sample_seed", lambda s, v, i: seed(s + 1, v, i)
    )
    before = every_file(fp32_cache)
    with pytest.raises(kdcache.ReplayMismatchError) as info:
        list(kdcache.open_cache(fp32_cache).loader(None, batch_size=64, seed=0, epoch=0))
    assert "differs from the one the teacher saw" in str(info.value)
    as_flags = str(info.value).replace("`verify_replay`", "--verify-replay")  # the CLI's words
    assert as_flags in error_through_cli(fp32_cache, tmp_path / "run")
    assert every_file(fp32_cache) == before
    # verify_replay="off" is the documented escape hatch.
    loader = kdcache.open_cache(fp32_cache).loader(
        None, batch_size=512, seed=0, epoch=0, verify_replay="off"
    )
    assert len(list(loader)) == 3


def test_sparse_cache_same_error_nothing_written(tmp_path, digits_teacher_weights):
    sparse = tmp_path / "sparse"
    extract_digits(digits_teacher_weights, sparse, "--topk", "3", "--chunk-rows", "1024")
    before = every_file(sparse)
    # The loader serves sparse rows; a loss that needs every logit refuses them, as train does.
    batch = next(iter(kdcache.open_cache(sparse).loader(None, batch_size=64, seed=0, epoch=0)))
    assert isinstance(batch.teacher_logits, SparseTeacher)
    student = torch.zeros(len(batch.labels), 10, requires_grad=True)
    with pytest.raises(kdcache.KdcacheError) as info:
        kdcache.create_loss("ldrld")(student, batch.teacher_logits, batch.labels)
    command = error_through_cli(sparse, tmp_path / "run", "--loss", "ldrld")
    assert "needs every class's teacher logit" in str(info.value)
    # The same message; the library names the setting, the CLI its flag.
    assert "`sparse_approx`" in str(info.value) and "--sparse-approx" in command
    assert str(info.value).replace("`sparse_approx`", "--sparse-approx") in command
    # KD is exact from the same rows, through the API and through train.
    assert torch.isfinite(kdcache.create_loss("kd")(student, batch.teacher_logits, batch.labels))
    ce = TrainConfig(
        cache=str(sparse),
        student="resnet8",
        loss="ce",
        epochs=1,
        max_samples=128,
        workers=0,
        device="cpu",
        eval_every=0,
        out=str(tmp_path / "ce"),
    )
    assert len(run_train(ce).step_losses) == 2
    assert every_file(sparse) == before


def test_foreign_data_same_error_nothing_written(tmp_path):
    from PIL import Image

    root, cache = extract_tiny_folder(tmp_path)
    Image.new("RGB", (41, 40), (1, 2, 3)).save(root / "train" / "a" / "0.png")  # other data
    before = every_file(cache)
    with pytest.raises(kdcache.CacheMismatchError) as info:
        kdcache.open_cache(cache).loader(root, batch_size=4, seed=0, epoch=0)
    assert "not the data this cache was made from" in str(info.value)
    # The same message; the library names the setting, the CLI its flag.
    through_cli = error_through_cli(cache, tmp_path / "run", "--data-dir", root)
    assert "`data_dir`" in str(info.value) and "--data-dir" in through_cli
    assert str(info.value).replace("`data_dir`", "--data-dir") in through_cli
    assert every_file(cache) == before


# ---------------------------------------------------------------- real processes


def torchrun(script: Path, *args: Any) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        str(script),
        *map(str, args),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


PROBE = """
import json, sys
import torch.distributed as dist
import kdcache
dist.init_process_group("gloo")
loader = kdcache.open_cache(sys.argv[1]).loader(None, batch_size=50, seed=9, epoch=1)
indices = [int(i) for batch in loader for i in batch.index]
with open(f"{sys.argv[2]}/rank{dist.get_rank()}.json", "w") as f:
    json.dump({"steps": len(loader), "indices": indices}, f)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_under_torch_distributed_the_loader_shards_by_rank_itself(tmp_path, fp32_cache):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    done = torchrun(probe, fp32_cache, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["steps"] == ranks[1]["steps"]
    assert not set(ranks[0]["indices"]) & set(ranks[1]["indices"])
    assert sorted(ranks[0]["indices"] + ranks[1]["indices"]) == list(range(N_DIGITS))


@pytest.mark.slow
def test_own_loop_ddp_example_runs_under_torchrun(fp32_cache):
    done = torchrun(
        REPO / "examples" / "own_loop_ddp.py",
        fp32_cache,
        "--student",
        "cifar_resnet8",
        "--epochs",
        "1",
        "--batch-size",
        "32",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    counts = [
        int(line.split(": ")[1].split()[0])
        for line in done.stdout.splitlines()
        if line.startswith("rank ")
    ]
    assert len(counts) == 2 and sum(counts) == N_DIGITS
    assert "epoch 1: top-1" in done.stdout


def test_the_readme_shows_own_loop_py_as_it_is():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Use a cache from your own training loop", 1)[1]
    shown = section.split("```python\n", 1)[1].split("```", 1)[0]
    example = [
        line.strip() for line in (REPO / "examples" / "own_loop.py").read_text().splitlines()
    ]
    assert shown.strip() and all(line.strip() in example for line in shown.splitlines())



def test_the_cache_attribute_table_in_the_api_docs_is_right(fp32_cache):
    """docs/api.md maps each Cache attribute to its metadata field: every row holds, and the
    table names every field of the identity a Cache shows."""
    import re
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    rows = re.findall(r"^\| `(\w+)`(?: \(also `(\w+)`\))? \| `([\w.]+)` \|$", docs, re.M)
    cache = kdcache.open_cache(fp32_cache)
    stored = open_reader(str(fp32_cache)).meta.to_dict()
    for attribute, alias, field in rows:
        value: object = stored
        for key in field.split("."):
            assert isinstance(value, dict) and key in value, field
            value = value[key]
        assert getattr(cache, attribute) == value, (attribute, field)
        if alias:
            assert getattr(cache, alias) == value, (alias, field)
    fields = {field for _, _, field in rows}
    assert {"augmentation.seed", "augmentation.num_views", "dataset.num_classes"} <= fields
    assert cache.seed == cache.augmentation_seed == 7


# ---------------------------------------------------------------- API edges (issue 25, item 23)


@pytest.mark.parametrize("location", [None, 3, b"cache"])
def test_open_cache_of_a_non_location_is_a_config_error(location):
    with pytest.raises(kdcache.ConfigError, match="a cache location must be a path or a string"):
        kdcache.open_cache(location)


def test_eval_loader_has_a_length_and_refuses_batch_size_0(fp32_cache):
    cache = kdcache.open_cache(fp32_cache)
    batches = cache.eval_loader(None, batch_size=100)
    served = list(batches)
    assert len(batches) == len(served) == -(-sum(len(b.labels) for b in served) // 100)
    assert len(list(batches)) == len(served)  # iterating again goes over the split again
    with pytest.raises(kdcache.ConfigError, match="batch_size must be an integer >= 1, got 0"):
        cache.eval_loader(None, batch_size=0)
    with pytest.raises(kdcache.ConfigError, match="batch_size must be an integer >= 1, got 0"):
        cache.loader(None, batch_size=0, seed=0, epoch=0)  # the same message as the loader's


def test_verify_with_a_negative_replay_is_a_config_error(fp32_cache):
    with pytest.raises(kdcache.ConfigError, match="replay must be a number of views >= 0"):
        kdcache.open_cache(fp32_cache).verify(replay=-1)


def test_the_loader_refuses_a_view_named_twice(fp32_cache):
    with pytest.raises(kdcache.ConfigError, match=r"names view\(s\) \[0\] more than once"):
        kdcache.open_cache(fp32_cache).loader(None, batch_size=8, seed=0, epoch=0, views=[0, 0])


def test_the_ddp_example_bounds_the_wait_for_a_hung_peer(fp32_cache, monkeypatch):
    from datetime import timedelta

    example = load_example("own_loop_ddp")
    seen: list[dict[str, Any]] = []

    class Joined(Exception):
        pass

    def init_process_group(backend: str, **kwargs: Any) -> None:
        seen.append(kwargs)
        raise Joined  # the group's arguments are what is under test

    monkeypatch.setattr(example.dist, "init_process_group", init_process_group)
    for argv, expected in (([], 300.0), (["--timeout", "7"], 7.0)):
        with pytest.raises(Joined):
            example.main([str(fp32_cache), *argv])
        assert seen[-1]["timeout"] == timedelta(seconds=expected)
    api_doc = (REPO / "docs" / "api.md").read_text()
    assert "init_process_group" in api_doc and "timeout=timedelta(" in api_doc
