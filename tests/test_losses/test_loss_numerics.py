"""Exact masking, empty supports, large margins and the hand-written backwards."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdcache.losses import dkd_loss, dkd_terms, ldrld_loss, ldrld_terms, rld_loss, rld_terms
from kdcache.losses._common import masked_kl
from kdcache.losses.ldrld import adw_weight
from kdcache.losses.rld import _RLDRows, _RLDSharedRows
from tests.test_losses.reference_ldrld import ldrld_loop


def _logits(batch: int, classes: int, scale: float = 3.0, seed: int = 0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    student = scale * torch.randn(batch, classes, generator=gen, dtype=dtype)
    teacher = scale * torch.randn(batch, classes, generator=gen, dtype=dtype)
    target = torch.randint(0, classes, (batch,), generator=gen)
    return student, teacher, target


def test_masked_kl_equals_the_kl_of_the_kept_columns_alone() -> None:
    student, teacher, _ = _logits(3, 9)
    keep = torch.zeros(3, 9, dtype=torch.bool)
    keep[0, [1, 4, 5]] = True
    keep[1, 2:] = True
    keep[2, 7] = True  # one class: both distributions are a point mass
    per_row = masked_kl(student, teacher, keep, 2.0)
    for b in range(3):
        s, t = student[b, keep[b]] / 2.0, teacher[b, keep[b]] / 2.0
        expected = (F.softmax(t, 0) * (F.log_softmax(t, 0) - F.log_softmax(s, 0))).sum()
        torch.testing.assert_close(per_row[b], expected, rtol=1e-13, atol=1e-15)


def test_masked_kl_row_with_empty_support_is_zero_with_zero_gradient() -> None:
    student, teacher, _ = _logits(2, 6)
    student.requires_grad_(True)
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[1] = False
    per_row = masked_kl(student, teacher, keep, 4.0)
    per_row.sum().backward()
    assert per_row[1].item() == 0.0
    assert torch.equal(student.grad[1], torch.zeros(6, dtype=torch.float64))
    assert student.grad[0].abs().sum() > 0


def test_masked_kl_sends_no_gradient_to_excluded_classes_even_with_huge_logits() -> None:
    student, teacher, _ = _logits(2, 6, dtype=torch.float32)
    student[:, 0] = 5000.0  # would dominate a -1000 mask at T = 4
    student.requires_grad_(True)
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[:, 0] = False
    masked_kl(student, teacher, keep, 4.0).sum().backward()
    assert torch.equal(student.grad[:, 0], torch.zeros(2))
    reference = masked_kl(student[:, 1:].detach(), teacher[:, 1:], keep[:, 1:], 4.0)
    torch.testing.assert_close(masked_kl(student.detach(), teacher, keep, 4.0), reference)


def test_rld_row_without_classes_below_the_label_adds_nothing_to_mcd() -> None:
    student, teacher, target = _logits(4, 10)
    target[1] = teacher[1].argmin()
    full = rld_terms(student, teacher, target)["mcd"]
    others = rld_terms(student[[0, 2, 3]], teacher[[0, 2, 3]], target[[0, 2, 3]])["mcd"]
    torch.testing.assert_close(full, others * 3 / 4)


def test_dkd_and_rld_stay_accurate_where_the_official_float32_code_breaks() -> None:
    student, teacher, target = _logits(4, 100, scale=2.0, dtype=torch.float32)
    rows = torch.arange(4)
    student[rows, target] = 400.0  # p_y rounds to 1 in float32: official log(1 - p_y) = -inf
    teacher[rows, target] = 300.0
    official_log_rest = torch.log(1 - F.softmax(student / 4.0, dim=1)[rows, target])
    assert torch.isinf(official_log_rest).all()
    for fn in (dkd_loss, rld_loss):
        value = fn(student, teacher, target)
        reference = fn(student.double(), teacher.double(), target)
        assert torch.isfinite(value)
        assert value.item() == pytest.approx(reference.item(), rel=1e-4)


@pytest.mark.parametrize(
    "fn",
    [
        lambda s, t, y: dkd_loss(s, t, y, alpha=0.7, beta=1.3, temperature=3.0),
        lambda s, t, y: dkd_terms(s, t, y, temperature=2.0, logit_stand=True)["tckd"],
        lambda s, t, y: rld_loss(s, t, y, alpha=0.6, beta=1.7, alpha_temperature=1.5),
        lambda s, t, y: rld_loss(s, t, y, temperature=2.0, logit_stand=True),
        lambda s, t, y: ldrld_loss(s, t, y, k=4, alpha=1.1, beta=0.9, temperature=3.0),
    ],
    ids=["dkd", "dkd_tckd_stand", "rld_tau", "rld_stand", "ldrld"],
)
def test_hand_written_backward_matches_finite_differences(fn) -> None:
    student, teacher, target = _logits(3, 7, scale=2.0, seed=3)
    target[1] = teacher[1].argmin()  # include an empty MCD row
    student.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: fn(s, teacher, target), (student,))


@pytest.mark.parametrize("k", [3, 5, 10, 16])
@pytest.mark.parametrize("rank_by", ["student", "teacher"])
def test_vectorised_ldrld_equals_the_per_group_loop(k: int, rank_by: str) -> None:
    student, teacher, _ = _logits(6, 40, scale=4.0)
    student.requires_grad_(True)
    terms = ldrld_terms(student, teacher, k=k, rank_by=rank_by)
    ldr, rntk = ldrld_loop(student, teacher, k, 4.0, rank_by=rank_by)
    torch.testing.assert_close(terms["ldr"], ldr, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(terms["rntk"], rntk, rtol=1e-12, atol=1e-14)
    (ours,) = torch.autograd.grad(terms["ldr"] + 2 * terms["rntk"], student)
    (loop,) = torch.autograd.grad(ldr + 2 * rntk, student)
    torch.testing.assert_close(ours, loop, rtol=1e-10, atol=1e-14)


def test_ldrld_ranking_by_teacher_differs_from_ranking_by_student() -> None:
    student, teacher, _ = _logits(6, 40, scale=4.0)
    by_student = ldrld_terms(student, teacher, k=5)["ldr"]
    by_teacher = ldrld_terms(student, teacher, k=5, rank_by="teacher")["ldr"]
    assert not torch.isclose(by_student, by_teacher)


def test_ldrld_with_k_equal_to_the_class_count_has_no_remaining_knowledge() -> None:
    student, teacher, _ = _logits(4, 6)
    student.requires_grad_(True)
    terms = ldrld_terms(student, teacher, k=6)
    assert terms["rntk"].item() == 0.0
    (grad,) = torch.autograd.grad(terms["ldr"] + terms["rntk"], student)
    assert torch.isfinite(grad).all()


def test_adaptive_decay_weight_uses_one_based_ranks() -> None:
    assert adw_weight(0, 1) == pytest.approx(2.0 * torch.exp(torch.tensor(-0.15)).item() / 2.5)
    assert adw_weight(2, 5, a=1.0, b=1.0, gamma=0.0) == pytest.approx(1.0 / 4.0)


def _rld_rows_both_ways(student, teacher, target, temperature: float = 4.0):
    """(shared-softmax rows, general rows): values and student gradients of alpha*SCD + beta*MCD."""
    results = []
    for rows in (_RLDSharedRows.apply, lambda s, t, y, T: _RLDRows.apply(s, t, y, T, T)):
        s = student.clone().requires_grad_(True)
        scd, mcd = rows(s, teacher, target, temperature)
        (grad,) = torch.autograd.grad((scd + 8.0 * mcd).sum(), s)
        results.append((torch.stack([scd, mcd]).detach(), grad))
    return results


def _rld_hard_rows(dtype: torch.dtype):
    """Rows that send the shared-softmax path to each exact fallback, beside ordinary rows."""
    student, teacher, target = _logits(8, 12, dtype=dtype)
    top = teacher.argmax(dim=1)
    teacher[0, top[0]] += 200.0  # teacher sure of its arg-max: sum - max cancels to 0 or less
    student[1, target[1]] = -900.0  # student sure the label is wrong: q_y underflows
    student[2, target[2]] = 900.0  # student sure of the label: its other mass underflows
    below = teacher[3] < teacher[3, target[3]]
    student[3] = torch.where(below, student[3] - 700.0, student[3])  # student mass on S underflows
    teacher[4] = torch.where(teacher[4] < teacher[4, target[4]], teacher[4] - 700.0, teacher[4])
    target[5] = teacher[5].argmin()  # empty MCD support
    teacher[6, 3] = teacher[6, 5] = teacher[6].max() + 1.0  # tied teacher arg-max
    return student, teacher, target


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_rld_shared_softmax_path_equals_the_general_one_on_hard_rows(dtype, tol) -> None:
    student, teacher, target = _rld_hard_rows(dtype)
    (fast, fast_grad), (general, general_grad) = _rld_rows_both_ways(student, teacher, target)
    assert torch.isfinite(fast).all() and torch.isfinite(fast_grad).all()
    torch.testing.assert_close(fast, general, rtol=tol, atol=tol)
    torch.testing.assert_close(fast_grad, general_grad, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "disable",
    [("REST_MIN", 0.0), ("_underflow_floor", lambda dtype, classes: 0.0)],
    ids=["teacher_rest_cancellation", "underflowing_masses"],
)
def test_rld_shared_softmax_path_needs_each_exact_fallback(disable, monkeypatch) -> None:
    """With a fallback switched off, the hard rows give inf / nan: the test above can fail."""
    import kdcache.losses.rld as rld_module

    monkeypatch.setattr(rld_module, *disable)
    student, teacher, target = _rld_hard_rows(torch.float32)
    (fast, fast_grad), _ = _rld_rows_both_ways(student, teacher, target)
    assert not (torch.isfinite(fast).all() and torch.isfinite(fast_grad).all())
