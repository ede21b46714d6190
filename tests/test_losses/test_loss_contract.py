"""The contract every registered loss honours; ``list_losses()`` drives it, so a new loss is
covered the moment it is registered."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor

from kdcache.errors import ConfigError, UnknownNameError
from kdcache.losses import create_loss, list_losses, loss_info

LOSSES = list_losses()

# Invalid values for every hyper-parameter a registered loss may take. A loss that adds a
# hyper-parameter without an entry here fails test_every_hyperparameter_has_invalid_values.
INVALID: dict[str, list[Any]] = {
    "temperature": [0.0, -4.0, math.nan, math.inf, "4"],
    "alpha_temperature": [0.0, -1.0, math.nan],
    "alpha": [-1.0, math.inf, None],
    "beta": [-0.5, math.nan],
    "logit_stand": ["yes", 1],
    "k": [1, 0, -3, 2.5, True],
    "rank_by": ["label", "", None],
    "a": [0.0, -2.0],
    "b": [0.0, -1.5],
    "gamma": [-0.05, math.nan],
}


def _logits(batch: int = 8, classes: int = 10, scale: float = 3.0, seed: int = 0) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    student = scale * torch.randn(batch, classes, generator=gen)
    teacher = scale * torch.randn(batch, classes, generator=gen)
    target = torch.randint(0, classes, (batch,), generator=gen)
    return student, teacher, target


def _value_and_grad(name: str, student: Tensor, teacher: Tensor, target: Tensor, **hp: Any):
    student = student.clone().requires_grad_(True)
    value = create_loss(name, **hp)(student, teacher, target)
    (grad,) = torch.autograd.grad(value, student)
    return value, grad


@pytest.mark.parametrize("name", LOSSES)
def test_loss_is_a_finite_scalar_with_a_finite_gradient(name: str) -> None:
    value, grad = _value_and_grad(name, *_logits())
    assert value.dim() == 0 and value.dtype == torch.float32
    assert math.isfinite(value.item()) and value.item() >= 0
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("name", LOSSES)
def test_loss_does_not_depend_on_batch_order(name: str) -> None:
    student, teacher, target = _logits(batch=16, classes=20)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    loss = create_loss(name)
    torch.testing.assert_close(
        loss(student[perm], teacher[perm], target[perm]), loss(student, teacher, target)
    )


@pytest.mark.parametrize("name", LOSSES)
def test_gradient_reaches_the_student_only(name: str) -> None:
    student, teacher, target = _logits()
    student.requires_grad_(True)
    teacher.requires_grad_(True)  # a live teacher's logits may carry a graph: never follow it
    create_loss(name)(student, teacher, target).backward()
    assert teacher.grad is None
    assert student.grad is not None and torch.isfinite(student.grad).all()


@pytest.mark.parametrize("name", LOSSES)
def test_single_sample_batch_works(name: str) -> None:
    value, grad = _value_and_grad(name, *_logits(batch=1))
    assert math.isfinite(value.item()) and torch.isfinite(grad).all()


@pytest.mark.parametrize("name", LOSSES)
def test_two_classes_work(name: str) -> None:
    hparams = {"k": 2} if "k" in loss_info(name).defaults else {}
    value, grad = _value_and_grad(name, *_logits(classes=2), **hparams)
    assert math.isfinite(value.item()) and torch.isfinite(grad).all()


@pytest.mark.parametrize("name", LOSSES)
def test_float16_teacher_is_upcast_at_the_boundary(name: str) -> None:
    student, teacher, target = _logits()
    teacher16 = teacher.half()
    loss = create_loss(name)
    value = loss(student, teacher16, target)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, loss(student, teacher16.float(), target))


@pytest.mark.parametrize("name", LOSSES)
def test_float64_inputs_compute_in_float64(name: str) -> None:
    student, teacher, target = _logits()
    value = create_loss(name)(student.double(), teacher.double(), target)
    assert value.dtype == torch.float64
    torch.testing.assert_close(value.float(), create_loss(name)(student, teacher, target))


@pytest.mark.parametrize("name", LOSSES)
def test_row_whose_label_has_the_teachers_lowest_logit_is_finite(name: str) -> None:
    student, teacher, target = _logits(batch=4)
    target[1] = teacher[1].argmin()  # RLD's MCD support is empty on this row
    target[2] = teacher[2].argmax()
    value, grad = _value_and_grad(name, student, teacher, target)
    assert math.isfinite(value.item()) and torch.isfinite(grad).all()


@pytest.mark.parametrize("name", LOSSES)
def test_tied_logits_are_finite_and_deterministic(name: str) -> None:
    student, teacher, target = _logits(batch=16, classes=12, scale=1.5)
    student, teacher = (student * 2).round() / 2, (teacher * 2).round() / 2  # many ties
    teacher[0] = 0.5  # a constant row: every class ties with the label
    first, grad = _value_and_grad(name, student, teacher, target)
    second, _ = _value_and_grad(name, student, teacher, target)
    assert math.isfinite(first.item()) and torch.isfinite(grad).all()
    assert first.item() == second.item()


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("scale", [100.0, 1000.0])
def test_large_logits_stay_finite_in_float32(name: str, scale: float) -> None:
    student, teacher, target = _logits(batch=8, classes=50, scale=scale)
    value, grad = _value_and_grad(name, student, teacher, target)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    reference, _ = _value_and_grad(name, student.double(), teacher.double(), target)
    assert value.item() == pytest.approx(reference.item(), rel=1e-3, abs=1e-3 * scale)


@pytest.mark.parametrize("name", LOSSES)
def test_every_hyperparameter_has_invalid_values(name: str) -> None:
    assert set(loss_info(name).defaults) <= set(INVALID)


@pytest.mark.parametrize(
    ("name", "param", "bad"),
    [
        (name, param, bad)
        for name in LOSSES
        for param in loss_info(name).defaults
        for bad in INVALID[param]
    ],
)
def test_invalid_hyperparameter_fails_at_construction_naming_it(
    name: str, param: str, bad: Any
) -> None:
    with pytest.raises(ConfigError, match=param):
        create_loss(name, **{param: bad})


@pytest.mark.parametrize("name", LOSSES)
def test_unknown_hyperparameter_is_refused_with_the_allowed_list(name: str) -> None:
    with pytest.raises(ConfigError, match="allowed"):
        create_loss(name, temprature=4.0)


def test_unknown_loss_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownNameError, match="known losses: dkd, kd, ldrld, rld"):
        create_loss("dkd2")


def test_ldrld_k_larger_than_the_class_count_fails_at_the_first_call() -> None:
    loss = create_loss("ldrld", k=11)
    with pytest.raises(ConfigError, match="k must be <= the number of classes"):
        loss(*_logits(classes=10))
