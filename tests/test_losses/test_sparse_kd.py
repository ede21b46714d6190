"""Sparse KD: exact over the kept classes + one tail bucket, equal to dense KD when K = C."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdcache.cache.sparse import kept_mass_violations, sparse_rows_from_logits
from kdcache.errors import ConfigError
from kdcache.losses import create_loss, kd_loss
from kdcache.losses.sparse import SparseTeacher, sparse_kd_loss


def _sparse(logits: torch.Tensor, labels: torch.Tensor, k: int, temps=(1.0, 4.0), dtype=np.float64):
    rows = sparse_rows_from_logits(logits.detach().numpy(), labels.numpy(), k, temps, dtype=dtype)
    return SparseTeacher.from_rows(rows, logits.shape[1])


def _batch(b=12, c=10, scale=3.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(b, c, generator=g, dtype=dtype) * scale).requires_grad_(True)
    t = torch.randn(b, c, generator=g, dtype=dtype) * scale
    y = torch.randint(0, c, (b,), generator=g)
    return s, t, y


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_sparse_kd_with_all_classes_kept_equals_dense_kd(temperature):
    s, t, y = _batch()
    teacher = _sparse(t, y, k=t.shape[1])
    sparse = sparse_kd_loss(s, teacher, y, temperature=temperature)
    (g_sparse,) = torch.autograd.grad(sparse, s)
    dense = kd_loss(s, t, y, temperature=temperature)
    (g_dense,) = torch.autograd.grad(dense, s)
    torch.testing.assert_close(sparse, dense, rtol=1e-6, atol=0)
    torch.testing.assert_close(g_sparse, g_dense, rtol=1e-6, atol=1e-12)


def test_sparse_kd_equals_the_kl_over_kept_classes_plus_one_tail_bucket():
    s, t, y = _batch(c=20)
    k, temperature = 5, 4.0
    got = sparse_kd_loss(s, _sparse(t, y, k), y, temperature=temperature)
    # Reference: merge the classes not kept into one bucket on both sides, then a plain KL.
    p = torch.softmax(t / temperature, 1)
    q = torch.softmax(s / temperature, 1)
    top = t.argsort(dim=1, descending=True, stable=True)[:, :k]
    keep = torch.zeros_like(p, dtype=torch.bool).scatter(1, top, True)
    p_b = torch.cat([p.gather(1, top), (p * ~keep).sum(1, keepdim=True)], 1)
    q_b = torch.cat([q.gather(1, top), (q * ~keep).sum(1, keepdim=True)], 1)
    want = (p_b * (p_b.log() - q_b.log())).sum(1).mean() * temperature**2
    torch.testing.assert_close(got, want, rtol=1e-9, atol=0)
    assert got <= kd_loss(s, t, y, temperature=temperature)  # merging buckets never adds KL


@pytest.mark.parametrize("scale", [1000.0])
def test_tail_stays_finite_and_correct_at_logit_magnitude_1000(scale):
    s, t, y = _batch(c=50, scale=scale, dtype=torch.float32)
    rows = sparse_rows_from_logits(t.numpy(), y.numpy(), 5, (1.0, 4.0))  # float32, as stored
    teacher = SparseTeacher.from_rows(rows, 50)
    loss = sparse_kd_loss(s, teacher, y, temperature=4.0)
    (grad,) = torch.autograd.grad(loss, s)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    # The tail's log-mass comes from the stored normaliser: finite, and far below the kept mass.
    tail = rows.tail_lse[:, 1] - rows.lse[:, 1]
    assert np.isfinite(tail).all() and (tail < -10).all()
    s64 = s.detach().double().requires_grad_(True)
    want = sparse_kd_loss(s64, _sparse(t.double(), y, 5), y, temperature=4.0)
    torch.testing.assert_close(loss.double(), want, rtol=1e-4, atol=1e-3)


def test_kept_mass_that_rounds_to_one_leaves_a_zero_tail_without_nan():
    # One dominant class: in float32 the kept mass rounds to 1, the tail is ~e^-200.
    t = torch.tensor([[800.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    s = torch.randn(1, 6, requires_grad=True)
    rows = sparse_rows_from_logits(t.numpy(), np.array([0]), 2, (1.0,))
    assert rows.tail_lse[0, 0] - rows.lse[0, 0] < -700  # exact in log space, not 1 - sum(p)
    loss = sparse_kd_loss(s, SparseTeacher.from_rows(rows, 6), temperature=1.0)
    (grad,) = torch.autograd.grad(loss, s)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert kept_mass_violations(rows) == 0


def test_stored_logsumexp_equals_torch_logsumexp_at_each_temperature():
    _, t, y = _batch(b=64, c=100, scale=5.0, dtype=torch.float32)
    temps = (1.0, 2.0, 4.0)
    rows = sparse_rows_from_logits(t.numpy(), y.numpy(), 10, temps)
    for col, temperature in enumerate(temps):
        want = torch.logsumexp(t / temperature, dim=1).numpy()
        np.testing.assert_allclose(rows.lse[:, col], want, rtol=1e-6)
    np.testing.assert_array_equal(rows.label_logit, t.numpy()[np.arange(64), y.numpy()])
    np.testing.assert_allclose(rows.logit_std, t.std(dim=1).numpy(), rtol=1e-6)
    assert kept_mass_violations(rows) == 0


def test_a_loss_at_an_unrecorded_temperature_is_refused_naming_what_is_stored():
    s, t, y = _batch()
    with pytest.raises(
        ConfigError, match=r"temperature 3\b.*T = 1, 4 only.*--sparse-temperature 3"
    ):
        sparse_kd_loss(s, _sparse(t, y, 4), y, temperature=3.0)


def test_kd_module_dispatches_sparse_rows_and_refuses_logit_standardisation():
    s, t, y = _batch()
    teacher = _sparse(t, y, 10)
    torch.testing.assert_close(
        create_loss("kd")(s, teacher, y), kd_loss(s, t, y, temperature=4.0), rtol=1e-6, atol=0
    )
    with pytest.raises(ConfigError, match="logit_stand"):
        create_loss("kd", logit_stand=True)(s, teacher, y)


# --------------------------------------------------------------- the other losses from sparse rows
from kdcache.losses import build_objective  # noqa: E402
from kdcache.losses.dkd import dkd_terms  # noqa: E402
from kdcache.losses.rld import rld_terms  # noqa: E402
from kdcache.losses.sparse import uniform_tail_teacher  # noqa: E402


@pytest.mark.parametrize("k", [1, 3, 9, 10])
def test_uniform_tail_completion_is_exact_where_the_cache_determines_it(k):
    _, t, y = _batch(b=32, c=10)
    temperature = 4.0
    dense = uniform_tail_teacher(_sparse(t, y, k), y, temperature)
    p, p_hat = torch.softmax(t / temperature, 1), torch.softmax(dense / temperature, 1)
    top = t.argsort(dim=1, descending=True, stable=True)[:, :k]
    torch.testing.assert_close(p_hat.gather(1, top), p.gather(1, top), rtol=1e-12, atol=0)
    torch.testing.assert_close(p_hat.gather(1, y[:, None]), p.gather(1, y[:, None]), rtol=1e-12,
                               atol=0)  # fmt: skip
    assert (dense.gather(1, top) == t.gather(1, top)).all()
    outside = torch.ones_like(t, dtype=torch.bool).scatter(1, top, False)
    assert (dense <= dense.gather(1, top[:, -1:]) + 1e-12)[outside].all()  # no fill outranks
    if k == 10:
        torch.testing.assert_close(dense, t, rtol=0, atol=0)


def test_dkd_tckd_and_rld_scd_are_exact_from_the_completion():
    s, t, y = _batch(b=64, c=20)
    dense = uniform_tail_teacher(_sparse(t, y, 5), y, 4.0)
    torch.testing.assert_close(
        dkd_terms(s, dense, y)["tckd"], dkd_terms(s, t, y)["tckd"], rtol=1e-9, atol=0
    )
    torch.testing.assert_close(
        rld_terms(s, dense, y)["scd"], rld_terms(s, t, y)["scd"], rtol=1e-9, atol=0
    )


@pytest.mark.parametrize("loss", ["dkd", "rld", "ldrld"])
def test_approximated_losses_are_refused_without_the_option_and_run_with_it(loss, caplog):
    s, t, y = _batch(b=16, c=20)
    teacher = _sparse(t, y, 8)
    with pytest.raises(ConfigError, match=rf"loss '{loss}' needs every class.*`sparse_approx`"):
        build_objective(loss)(s, teacher, y, epoch=30.0)
    with pytest.raises(ConfigError, match="`sparse_approx`"):
        create_loss(loss)(s, teacher, y)  # straight from an own loop: the same refusal
    objective = build_objective(loss, sparse_approx=True)
    with caplog.at_level("WARNING"):
        total, _ = objective(s, teacher, y, epoch=30.0)
        objective(s, teacher, y, epoch=30.0)
    assert torch.isfinite(total)
    warnings = [r for r in caplog.records if "sparse-approx" in r.getMessage()]
    assert len(warnings) == 1 and "exact" in warnings[0].getMessage()  # one line, naming it
