"""kdcache train: the cache is a drop-in for the teacher, resume, DDP, data path, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from kdcache.cache.reader import open_cache
from kdcache.cli import main
from kdcache.stream.cached_teacher import CachedTeacher
from kdcache.stream.plan import plan_epoch
from kdcache.training import outputs, tracking
from kdcache.training.config import TrainConfig
from kdcache.training.loop import run_train
from tests.conftest import run_kdcache_process


def cli(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def extract_digits(weights: Path, out: Path, *extra: str) -> None:
    """`kdcache extract` of the fixed resnet8 over the digits train split into ``out``."""
    args = ["extract", "--teacher", "resnet8", "--weights", weights, "--dataset", "digits"]
    code, output = cli([*args, "--workers", "0", "--out", out, "--no-progress", *extra])
    assert code == 0, output


# fp32_cache: the session's shared read-only dense float32 digits cache (tests/conftest.py).


def train_one_epoch_from(cache: Path, out: Path) -> tuple[int, str]:
    """`kdcache train` of one KD epoch from ``cache``; returns (exit code, output)."""
    return cli(
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
        ]
    )


def copy_cache(cache: Path, to: Path) -> Path:
    shutil.copytree(cache, to)
    return to


def base_config(out: Path, **overrides) -> TrainConfig:
    settings = dict(
        student="resnet8",
        out=str(out),
        epochs=1,
        batch_size=64,
        workers=0,
        device="cpu",
        max_samples=512,
        seed=3,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def online_config(out: Path, teacher_weights: Path, **overrides: Any) -> TrainConfig:
    """KD with the live digits teacher, on the views of the ``fp32_cache`` fixture's settings."""
    settings: dict[str, Any] = dict(dataset="digits", recipe="cifar", aug_seed=7, num_views=2,
                                    teacher="resnet8", teacher_weights=str(teacher_weights),
                                    loss="kd")  # fmt: skip
    return base_config(out, **settings, **overrides)


@pytest.mark.slow
def test_cached_and_online_training_give_the_same_step_losses(
    tmp_path, fp32_cache, digits_teacher_weights
):
    cached = run_train(base_config(tmp_path / "cached", cache=str(fp32_cache), loss="kd"))
    online = run_train(online_config(tmp_path / "online", digits_teacher_weights, block_rows=256))
    assert len(cached.step_losses) == 8
    # One teacher forward for extract and online, batch-size independent: the same bits.
    assert cached.step_losses == online.step_losses
    logged = [x for r in outputs.read_metrics(cached.out, outputs.STEP_LOSSES) for x in r["loss"]]
    assert logged == cached.step_losses
    assert (
        cached.step_losses
        != run_train(base_config(tmp_path / "ce", cache=str(fp32_cache), loss="ce")).step_losses
    )


@pytest.mark.slow
def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(
    tmp_path, fp32_cache, monkeypatch
):
    config = dict(cache=str(fp32_cache), loss="ldrld", epochs=2, loss_params={"k": 4})
    run_train(base_config(tmp_path / "whole", **config))

    real_plot = tracking.plot_curves

    def crash_after_first_epoch(out):  # type: ignore[no-untyped-def]
        real_plot(out)
        raise KeyboardInterrupt("simulated stop after epoch 1")

    monkeypatch.setattr(tracking, "plot_curves", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_train(base_config(tmp_path / "cut", **config))
    monkeypatch.setattr(tracking, "plot_curves", real_plot)
    run_train(base_config(tmp_path / "cut", resume=True, **config))

    whole = outputs.load_checkpoint(tmp_path / "whole" / "last.pt")["model"]
    cut = outputs.load_checkpoint(tmp_path / "cut" / "last.pt")["model"]
    assert all(torch.equal(whole[k], cut[k]) for k in whole)
    epochs = [r["epoch"] for r in outputs.read_metrics(tmp_path / "cut")]
    assert epochs == [1, 2]
    steps = outputs.read_metrics(tmp_path / "cut", outputs.STEP_LOSSES)
    assert [r["epoch"] for r in steps] == [1, 2]
    assert steps == outputs.read_metrics(tmp_path / "whole", outputs.STEP_LOSSES)


def decode_one_epoch(cache: Path, *, epoch: int, views: list[int], window: int):  # type: ignore[no-untyped-def]
    """Stream one epoch of cached logits; returns (the CachedTeacher, the plan, the batches)."""
    reader = open_cache(str(cache))
    plan = plan_epoch(seed=1, epoch=epoch, num_samples=1438, block_rows=256, batch_size=64,
                      window_blocks=window, allowed_views=np.array(views))  # fmt: skip
    teacher = CachedTeacher(reader, chunk_capacity=8)
    served = [logits for logits, _ in teacher.batches(plan.items, plan.bounds)]
    return teacher, plan, served


def test_each_chunk_is_decoded_at_most_once_per_epoch(fp32_cache):
    teacher, plan, served = decode_one_epoch(fp32_cache, epoch=0, views=[0, 1], window=2)
    assert len(teacher.decoded) == len(set(teacher.decoded)) == 12  # 2 views x 6 blocks
    full = np.concatenate(served)
    view, index = plan.items[100]
    reader = open_cache(str(fp32_cache))
    np.testing.assert_array_equal(full[100], reader.read_dense(view, index // 256)[index % 256])


def test_a_view_subset_reads_only_those_views(fp32_cache):
    teacher, _, _ = decode_one_epoch(fp32_cache, epoch=3, views=[1], window=4)
    assert {view for view, _ in teacher.decoded} == {1}


def test_view_choice_depends_on_seed_epoch_and_sample_only():
    common: dict[str, Any] = dict(seed=5, epoch=2, num_samples=1000, block_rows=100,
                                  window_blocks=3, allowed_views=np.arange(4))  # fmt: skip
    a = plan_epoch(**common, batch_size=10)
    b = plan_epoch(**common, batch_size=50, rank=1, world=2)
    views_a = dict(zip(a.items[:, 1].tolist(), a.items[:, 0].tolist(), strict=True))
    assert all(views_a[i] == v for v, i in b.items.tolist())
    assert sorted(a.items[:, 1].tolist()) == list(range(1000))


def test_train_records_provenance_and_writes_run_outputs(tmp_path, fp32_cache):
    out = tmp_path / "run"
    code, output = cli(
        [
            "train",
            "--cache",
            fp32_cache,
            "--student",
            "resnet8",
            "--loss",
            "dkd",
            "--epochs",
            "1",
            "--max-samples",
            "256",
            "--workers",
            "0",
            "--out",
            out,
            "--no-progress",
        ]
    )
    assert code == 0, output
    fingerprint = open_cache(str(fp32_cache)).meta.fingerprint
    run = json.loads((out / "run.json").read_text())
    assert run["cache_fingerprint"] == fingerprint
    assert outputs.load_checkpoint(out / "best.pt")["cache_fingerprint"] == fingerprint
    assert {"last.pt", "best.pt", "metrics.jsonl", "curves.png"} <= {p.name for p in out.iterdir()}
    record = outputs.read_metrics(out)[0]
    assert 0 <= record["test_top1"] <= 100 and record["train_tckd"] >= 0
    code, output = cli(["eval", out / "best.pt"])
    assert code == 0 and f"top-1 {record['test_top1']:.2f}%" in output


def test_yaml_config_values_are_overridden_by_flags(tmp_path, fp32_cache):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"cache: {fp32_cache}\nstudent: resnet8\nloss: kd\nepochs: 3\n"
        "max-samples: 128\nworkers: 0\nloss_params: {temperature: 2}\n"
    )
    out = tmp_path / "run"
    code, output = cli(["train", "--config", cfg, "--epochs", "1", "--out", out, "--no-progress"])
    assert code == 0, output
    config = json.loads((out / "run.json").read_text())["config"]
    assert config["epochs"] == 1 and config["loss"] == "kd"
    assert config["loss_params"] == {"temperature": 2}


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_within_tolerance(tmp_path, fp32_cache):
    args = ["train", "--cache", str(fp32_cache), "--student", "resnet8", "--loss", "kd",
            "--epochs", "2", "--batch-size", "64", "--workers", "0", "--device", "cpu",
            "--no-progress"]  # fmt: skip
    single = run_kdcache_process([*args, "--out", str(tmp_path / "one")])
    assert single.returncode == 0, single.stderr[-2000:]
    multi = run_kdcache_process([*args, "--out", str(tmp_path / "two")], ranks=2)
    assert multi.returncode == 0, multi.stderr[-3000:]
    one, two = (outputs.read_metrics(tmp_path / d) for d in ("one", "two"))
    assert [r["epoch"] for r in two] == [1, 2]
    # Different batch composition and per-rank BatchNorm statistics: close, not equal.
    assert abs(one[-1]["train_loss"] - two[-1]["train_loss"]) < 0.25 * one[-1]["train_loss"]
    assert json.loads((tmp_path / "two" / "run.json").read_text())["world_size"] == 2


# ---------------------------------------------------------------- bad input, nothing lost


def test_missing_cache_is_a_clear_error(tmp_path):
    code, output = cli(
        ["train", "--cache", tmp_path / "nope", "--student", "resnet8", "--out", tmp_path / "run"]
    )
    assert code != 0 and "no kdcache cache" in output and "Traceback" not in output


def test_incomplete_cache_is_refused(tmp_path, fp32_cache):
    broken = copy_cache(fp32_cache, tmp_path / "incomplete")
    mark = broken / "block_done" / "c" / "1" / "2"
    mark.unlink()
    code, output = cli(
        [
            "train",
            "--cache",
            broken,
            "--student",
            "resnet8",
            "--loss",
            "kd",
            "--out",
            tmp_path / "run",
        ]
    )
    assert code != 0 and "incomplete" in output and "(view 1, block 2)" in output


def test_corrupted_chunk_stops_training_with_its_name(tmp_path, fp32_cache):
    broken = copy_cache(fp32_cache, tmp_path / "corrupt")
    chunk = broken / "logits" / "c" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    code, output = train_one_epoch_from(broken, tmp_path / "run")
    assert code != 0 and "checksum" in output and "view 0, block 0" in output


def test_replay_mismatch_is_an_error_that_says_what_differs(tmp_path, fp32_cache, monkeypatch):
    import kdcache.views

    # As if another Pillow/torchvision made the views: every regenerated view differs.
    seed = kdcache.views.sample_seed
    monkeypatch.setattr(kdcache.views, "sample_seed", lambda s, v, i: seed(s + 1, v, i))
    # ... on either stream: the host path's recipes and the device-resident views' geometry.
    import kdcache.stream.device_views

    monkeypatch.setattr(
        kdcache.stream.device_views, "sample_seed", lambda s, v, i: seed(s + 1, v, i)
    )
    code, output = train_one_epoch_from(fp32_cache, tmp_path / "run")
    assert code != 0 and "differs from the one the teacher saw" in output


def extract_tiny_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A 2-class, 12-image PNG ``imagefolder`` and a cache of it (resnet8, ``imagenet`` recipe):
    (data root, cache)."""
    from PIL import Image

    from kdcache.models import build_model

    root = tmp_path / "folder"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for k in range(3):
                Image.new("RGB", (40, 40), (k * 40, 10, 99)).save(root / split / cls / f"{k}.png")
    weights = tmp_path / "r8.pth"
    torch.save(build_model("resnet8", 2).state_dict(), weights)
    cache = tmp_path / "cache"
    code, output = cli(["extract", "--teacher", "resnet8", "--weights", weights, "--dataset",
                        "imagefolder", "--data-dir", root, "--recipe", "imagenet", "--workers",
                        "0", "--out", cache, "--no-progress"])  # fmt: skip
    assert code == 0, output
    return root, cache


def test_data_that_differs_from_the_caches_is_refused(tmp_path, digits_teacher_weights):
    from PIL import Image

    root, cache = extract_tiny_folder(tmp_path)
    Image.new("RGB", (41, 40), (1, 2, 3)).save(root / "train" / "a" / "0.png")
    code, output = cli(
        [
            "train",
            "--cache",
            cache,
            "--data-dir",
            root,
            "--student",
            "resnet8",
            "--loss",
            "kd",
            "--out",
            tmp_path / "run",
        ]
    )
    assert code != 0 and "not the data this cache was made from" in output


def test_student_with_another_class_count_is_refused(tmp_path, fp32_cache):
    factory = tmp_path / "my_model.py"
    factory.write_text(
        "import torch\n\ndef build(num_classes, in_chans=3, **kw):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(7))\n"
    )
    code, output = cli(
        [
            "train",
            "--cache",
            fp32_cache,
            "--student",
            f"{factory}:build",
            "--loss",
            "kd",
            "--out",
            tmp_path / "run",
        ]
    )
    assert code != 0 and "10 classes" in output and "Traceback" not in output


def test_sparse_cache_with_a_dense_loss_is_refused(tmp_path, digits_teacher_weights):
    cache = tmp_path / "sparse"
    extract_digits(digits_teacher_weights, cache, "--topk", "3")
    code, output = cli(
        [
            "train",
            "--cache",
            cache,
            "--student",
            "resnet8",
            "--loss",
            "ldrld",
            "--out",
            tmp_path / "run",
        ]
    )
    assert code != 0 and "this cache is sparse" in output and "needs every class" in output


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--loss", "distill-o-matic", "distill-o-matic"),
        ("--student", "resnet9000", "resnet9000"),
    ],
)
def test_unknown_names_are_clear_errors(tmp_path, fp32_cache, flag, value, message):
    args = [
        "train",
        "--cache",
        fp32_cache,
        "--student",
        "resnet8",
        "--loss",
        "kd",
        "--out",
        tmp_path / "run",
        flag,
        value,
    ]
    code, output = cli(args)
    assert code != 0 and message in output and "Traceback" not in output


def test_existing_run_is_never_clobbered(tmp_path, fp32_cache):
    out = tmp_path / "run"
    args = [
        "train",
        "--cache",
        fp32_cache,
        "--student",
        "resnet8",
        "--loss",
        "kd",
        "--epochs",
        "1",
        "--max-samples",
        "128",
        "--workers",
        "0",
        "--out",
        out,
        "--no-progress",
    ]
    assert cli(args)[0] == 0
    before = (out / "last.pt").read_bytes()
    code, output = cli(args)
    assert code != 0 and "already holds a training run" in output
    assert (out / "last.pt").read_bytes() == before
    assert cli([*args, "--force"])[0] == 0


def test_online_teacher_logits_can_be_saved_for_backward(
    tmp_path, digits_teacher_weights, monkeypatch
):
    """The online teacher runs under inference mode; a loss must still be free to save them."""
    from kdcache.losses.objective import Objective

    real_forward = Objective.forward
    seen: list[bool] = []

    def recording_forward(self, student, teacher, target, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(teacher.is_inference())
        return real_forward(self, student, teacher, target, *args, **kwargs)

    monkeypatch.setattr(Objective, "forward", recording_forward)
    run_train(online_config(tmp_path / "online", digits_teacher_weights, max_samples=128))
    assert seen and not any(seen)
