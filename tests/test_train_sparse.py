"""Training from sparse (top-K) caches: KD exact, other losses only when asked, clear refusals."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from kdcache.errors import ConfigError
from kdcache.losses.kd import KDLoss
from kdcache.training.loop import run_train
from tests.test_train import base_config, cli, extract_digits, online_config


@pytest.fixture(scope="module")
def sparse_caches(tmp_path_factory, digits_teacher_weights):
    """Sparse digits caches of the views of ``fp32_cache``: top-10 (K = C) and top-3."""
    root = tmp_path_factory.mktemp("sparse")
    common = ("--views", "2", "--seed", "7", "--chunk-rows", "256")
    extract_digits(digits_teacher_weights, root / "top10", *common, "--topk", "10")
    extract_digits(digits_teacher_weights, root / "top3", *common, "--topk", "3")
    return root


def test_kd_from_a_sparse_cache_keeping_every_class_trains_like_the_dense_cache(
    tmp_path, sparse_caches, fp32_cache
):
    dense = run_train(base_config(tmp_path / "d", cache=str(fp32_cache), loss="kd"))
    full = run_train(base_config(tmp_path / "s", cache=str(sparse_caches / "top10"), loss="kd"))
    assert len(full.step_losses) == len(dense.step_losses) == 8
    # The same KL from another formula (K + 1 buckets, stored normaliser): equal to rounding.
    np.testing.assert_allclose(full.step_losses, dense.step_losses, rtol=1e-4)


def test_kd_from_a_top3_cache_trains_and_differs_from_dense(tmp_path, sparse_caches, fp32_cache):
    dense = run_train(base_config(tmp_path / "d", cache=str(fp32_cache), loss="kd"))
    top3 = run_train(base_config(tmp_path / "s", cache=str(sparse_caches / "top3"), loss="kd"))
    assert np.isfinite(top3.step_losses).all()
    assert top3.step_losses[0] <= dense.step_losses[0]  # merging classes never adds KL
    assert top3.step_losses != dense.step_losses


def test_approximated_losses_need_the_option_and_then_warn_once(tmp_path, sparse_caches, caplog):
    cache = str(sparse_caches / "top3")
    code, output = cli(["train", "--cache", cache, "--student", "resnet8", "--loss", "ldrld",
                        "--out", tmp_path / "refused"])  # fmt: skip
    assert code != 0 and "needs every class" in output and "--sparse-approx" in output
    assert "Traceback" not in output and not (tmp_path / "refused" / "run.json").exists()
    with caplog.at_level(logging.WARNING):
        run = run_train(base_config(tmp_path / "approx", cache=cache, loss="dkd",
                                    sparse_approx=True))  # fmt: skip
    assert np.isfinite(run.step_losses).all()
    lines = [r.getMessage() for r in caplog.records if "sparse-approx" in r.getMessage()]
    assert len(lines) == 1 and "TCKD is exact" in lines[0]


def test_a_temperature_the_cache_did_not_store_is_refused_before_training(tmp_path, sparse_caches):
    config = base_config(tmp_path / "t", cache=str(sparse_caches / "top3"), loss="kd",
                         loss_params={"temperature": 3.0})  # fmt: skip
    with pytest.raises(ConfigError, match=r"T = 1, 4; loss 'kd' runs at temperature 3\b"):
        run_train(config)
    assert not (tmp_path / "t" / "run.json").exists()


def online_topk_config(out, weights, **overrides):
    """Online KD with the live digits teacher on the views of the ``sparse_caches`` fixture."""
    settings = dict(loss="kd", block_rows=256, max_samples=256)
    settings.update(overrides)
    loss = settings.pop("loss")
    return dataclasses.replace(online_config(out, weights, **settings), loss=loss)


@pytest.mark.parametrize(
    "settings",
    [dict(loss="kd"), dict(loss="dkd", sparse_approx=True)],
    ids=["kd", "dkd-approx"],
)
def test_online_topk_trains_bit_for_bit_like_the_sparse_cache(
    tmp_path, sparse_caches, digits_teacher_weights, settings
):
    cache = str(sparse_caches / "top3")
    cached = run_train(base_config(tmp_path / "c", cache=cache, max_samples=256, **settings))
    online = run_train(
        online_topk_config(tmp_path / "o", digits_teacher_weights, teacher_topk=3, **settings)
    )
    assert len(cached.step_losses) == 4
    # The cache writer's sparsification of the same logits: the same rows, the same bits (and
    # the top-3 cache's losses differ from the dense cache's: test_kd_from_a_top3_cache_...).
    assert online.step_losses == cached.step_losses


def test_online_topk_keeping_every_class_is_online_kd(tmp_path, digits_teacher_weights):
    dense = run_train(online_topk_config(tmp_path / "d", digits_teacher_weights, max_samples=128))
    full = run_train(online_topk_config(tmp_path / "s", digits_teacher_weights, max_samples=128,
                                        teacher_topk=10))  # fmt: skip
    np.testing.assert_allclose(full.step_losses, dense.step_losses, rtol=1e-4)


def test_teacher_topk_outside_online_kd_is_refused_at_once(tmp_path, fp32_cache):
    with pytest.raises(ConfigError, match="a cache is sparse or not as it was extracted"):
        base_config(tmp_path / "c", cache=str(fp32_cache), loss="kd", teacher_topk=3)
    with pytest.raises(ConfigError, match="needs a live `teacher`"):
        base_config(tmp_path / "d", dataset="digits", loss="ce", teacher_topk=3)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(teacher_topk=11), "`teacher_topk` 11 exceeds the 10 classes"),
        (dict(teacher_topk=0), "`teacher_topk` must be >= 1"),
        (dict(teacher_topk=3, loss="ce"), "loss 'ce' uses no teacher"),
        (dict(teacher_topk=3, loss="dkd"), "needs every class.*`sparse_approx`"),
        (
            dict(teacher_topk=3, loss="dkd", sparse_approx=True, loss_params={"logit_stand": True}),
            "logit_stand=true needs every",
        ),
    ],  # fmt: skip
    ids=["k-above-classes", "k-zero", "ce", "approx-not-asked", "logit-stand"],
)
def test_bad_online_topk_settings_are_refused_before_the_run(
    tmp_path, digits_teacher_weights, settings, message
):
    with pytest.raises(ConfigError, match=message):
        run_train(online_topk_config(tmp_path / "r", digits_teacher_weights, **settings))
    assert not (tmp_path / "r").exists()


def test_teacher_topk_cli_errors_are_one_line(tmp_path, digits_teacher_weights):
    code, output = cli(["train", "--dataset", "digits", "--teacher", "resnet8", "--teacher-weights",
                        digits_teacher_weights, "--teacher-topk", "11", "--loss", "kd",
                        "--student", "resnet8", "--out", tmp_path / "r"])  # fmt: skip
    assert code == 1 and "exceeds the 10 classes" in output and "Traceback" not in output
    assert not (tmp_path / "r").exists()


def test_a_sparse_cache_run_builds_its_loss_once(tmp_path, sparse_caches, monkeypatch):
    built: list[float] = []
    init = KDLoss.__init__

    def counting_init(self, *args, **kwargs):
        built.append(1.0)
        init(self, *args, **kwargs)

    monkeypatch.setattr(KDLoss, "__init__", counting_init)
    run_train(base_config(tmp_path / "s", cache=str(sparse_caches / "top3"), loss="kd",
                          max_samples=64))  # fmt: skip
    assert len(built) == 1
