"""The training objective: cross-entropy weight, distillation weight and each method's warm-up."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdcache.errors import ConfigError, UnknownNameError
from kdcache.losses import (
    build_objective,
    dkd_loss,
    kd_loss,
    ldrld_terms,
    list_objectives,
    rld_loss,
)


def _batch(batch: int = 8, classes: int = 10):
    gen = torch.Generator().manual_seed(0)
    student = 3 * torch.randn(batch, classes, generator=gen)
    teacher = 3 * torch.randn(batch, classes, generator=gen)
    target = torch.randint(0, classes, (batch,), generator=gen)
    return student, teacher, target


def test_objectives_are_ce_and_every_registered_loss() -> None:
    assert list_objectives() == ["ce", "dkd", "kd", "ldrld", "rld"]


def test_kd_objective_weights_ce_0_1_and_kd_0_9_without_warmup() -> None:
    s, t, y = _batch()
    total, parts = build_objective("kd")(s, t, y, epoch=1)
    expected = 0.1 * F.cross_entropy(s, y) + 0.9 * kd_loss(s, t, temperature=4.0)
    torch.testing.assert_close(total, expected)
    assert parts["warmup"].item() == 1.0
    torch.testing.assert_close(parts["kd"], kd_loss(s, t))


@pytest.mark.parametrize(
    ("epoch", "factor"), [(0, 0.0), (1, 0.05), (10, 0.5), (20, 1.0), (240, 1.0), (2.5, 0.125)]
)
@pytest.mark.parametrize("name", ["dkd", "rld"])
def test_dkd_and_rld_warm_up_linearly_over_20_epochs(
    name: str, epoch: float, factor: float
) -> None:
    s, t, y = _batch()
    total, parts = build_objective(name)(s, t, y, epoch=epoch)
    loss = dkd_loss(s, t, y) if name == "dkd" else rld_loss(s, t, y)
    torch.testing.assert_close(total, F.cross_entropy(s, y) + factor * loss)
    assert parts["warmup"].item() == pytest.approx(factor)
    torch.testing.assert_close(parts["distill"], factor * loss)


def test_imagenet_warmup_of_one_epoch_is_full_from_the_first_epoch() -> None:
    s, t, y = _batch()
    objective = build_objective("rld", warmup_epochs=1, beta=0.5, temperature=1.0)
    total, _ = objective(s, t, y, epoch=1)
    expected = F.cross_entropy(s, y) + rld_loss(s, t, y, beta=0.5, temperature=1.0)
    torch.testing.assert_close(total, expected)


def test_ldrld_objective_is_ce_plus_alpha_pairs_plus_beta_rntk() -> None:
    s, t, y = _batch(classes=20)
    total, parts = build_objective("ldrld")(s, t, y, epoch=1)
    terms = ldrld_terms(s, t, k=7, temperature=4.0)
    expected = F.cross_entropy(s, y) + 10.5 * terms["ldr"] + 7.0 * terms["rntk"]
    torch.testing.assert_close(total, expected)
    assert set(parts) == {"ce", "ldr", "rntk", "distill", "warmup"}


def test_weights_can_be_overridden() -> None:
    s, t, y = _batch()
    objective = build_objective("kd", ce_weight=0.5, distill_weight=2.0, temperature=2.0)
    total, _ = objective(s, t, y, epoch=3)
    expected = 0.5 * F.cross_entropy(s, y) + 2.0 * kd_loss(s, t, temperature=2.0)
    torch.testing.assert_close(total, expected)


def test_parts_are_detached_and_total_carries_the_graph() -> None:
    s, t, y = _batch()
    s.requires_grad_(True)
    total, parts = build_objective("dkd")(s, t, y, epoch=20)
    assert total.requires_grad and not any(p.requires_grad for p in parts.values())
    total.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_ce_objective_needs_no_teacher() -> None:
    s, _, y = _batch()
    objective = build_objective("ce")
    total, parts = objective(s, None, y, epoch=0)
    assert not objective.requires_teacher
    torch.testing.assert_close(total, F.cross_entropy(s, y))
    assert set(parts) == {"ce"}


def test_distillation_objective_without_teacher_logits_says_what_to_do() -> None:
    s, _, y = _batch()
    with pytest.raises(ConfigError, match="use loss 'ce'"):
        build_objective("dkd")(s, None, y, epoch=1)


def test_ce_objective_refuses_distillation_hyperparameters() -> None:
    with pytest.raises(ConfigError, match="temperature"):
        build_objective("ce", temperature=4.0)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"ce_weight": -1.0}, "ce_weight"),
        ({"distill_weight": -0.1}, "distill_weight"),
        ({"warmup_epochs": -5}, "warmup_epochs"),
        ({"k": 1}, "k"),
        ({"beta2": 1.0}, "beta2"),
    ],
)
def test_invalid_objective_settings_fail_at_construction(kwargs: dict, param: str) -> None:
    name = "ldrld" if "k" in kwargs else "dkd"
    with pytest.raises(ConfigError, match=param):
        build_objective(name, **kwargs)


def test_unknown_objective_name_is_refused_listing_ce_too() -> None:
    with pytest.raises(UnknownNameError, match="choose one of ce, dkd, kd, ldrld, rld"):
        build_objective("crd")
    with pytest.raises(UnknownNameError, match="Did you mean ldrld"):
        build_objective("LDRLD")


def test_negative_epoch_is_refused() -> None:
    s, t, y = _batch()
    with pytest.raises(ValueError, match="epoch"):
        build_objective("dkd")(s, t, y, epoch=-1)
