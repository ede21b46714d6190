"""Training from sparse (top-K) caches: KD exact, other losses only when asked, clear refusals."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from kdcache.errors import ConfigError
from kdcache.training.loop import run_train
from tests.test_train import base_config, cli, extract_digits


@pytest.fixture(scope="module")
def sparse_caches(tmp_path_factory, digits_teacher_weights):
    """Digits caches of the same views: dense float32, sparse top-10 (K = C) and top-3."""
    root = tmp_path_factory.mktemp("sparse")
    common = ("--views", "2", "--seed", "7", "--chunk-rows", "256")
    extract_digits(digits_teacher_weights, root / "dense", *common, "--dtype", "float32")
    extract_digits(digits_teacher_weights, root / "top10", *common, "--topk", "10")
    extract_digits(digits_teacher_weights, root / "top3", *common, "--topk", "3")
    return root


def test_kd_from_a_sparse_cache_keeping_every_class_trains_like_the_dense_cache(
    tmp_path, sparse_caches
):
    dense = run_train(base_config(tmp_path / "d", cache=str(sparse_caches / "dense"), loss="kd"))
    full = run_train(base_config(tmp_path / "s", cache=str(sparse_caches / "top10"), loss="kd"))
    assert len(full.step_losses) == len(dense.step_losses) == 8
    # The same KL from another formula (K + 1 buckets, stored normaliser): equal to rounding.
    np.testing.assert_allclose(full.step_losses, dense.step_losses, rtol=1e-4)


def test_kd_from_a_top3_cache_trains_and_differs_from_dense(tmp_path, sparse_caches):
    dense = run_train(base_config(tmp_path / "d", cache=str(sparse_caches / "dense"), loss="kd"))
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
