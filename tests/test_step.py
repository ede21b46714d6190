"""The sync-free step: a non-finite step is skipped on the device (no weight takes it), named when
the host next reads the records, and the per-step values are those of a step that syncs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from kdcache.errors import NonFiniteError
from kdcache.losses.objective import build_objective
from kdcache.stream.batch import Batch
from kdcache.training.loop import train_one_epoch
from kdcache.training.step import StepGuard, TrainStep, skips_on_device
from kdcache.training.tally import EpochTally


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU(),
                         nn.Linear(12, 5))  # fmt: skip


def batches(count: int, bad_step: int | None = None, bad: str = "teacher") -> list[Batch]:
    g = torch.Generator().manual_seed(1)
    out = []
    for k in range(count):
        b = 8 if k < count - 1 else 5  # a shorter last batch
        teacher = torch.randn(b, 5, generator=g)
        images = torch.randn(b, 1, 4, 4, generator=g)
        if k == bad_step and bad == "teacher":
            teacher[3, 1] = float("nan")
        if k == bad_step and bad == "image":
            images[:] = float("inf")
        index = torch.arange(k * 8, k * 8 + b)
        out.append(Batch(images, torch.randint(0, 5, (b,), generator=g), teacher,
                         torch.full((b,), 2), index))  # fmt: skip
    return out


@pytest.mark.parametrize("fused", [False, True])
def test_a_nan_teacher_row_stops_the_epoch_and_no_weight_takes_it(fused):
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=fused)
    assert skips_on_device(optimizer) == fused
    reference = copy.deepcopy(model)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, fused=fused)
    objective = build_objective("kd")
    good = batches(3)
    train_one_epoch(reference, objective, ref_opt, good[:2], epoch=0, sync_every=100)
    with pytest.raises(NonFiniteError, match=r"\(view 2, sample 19\) are NaN/Inf \(1 rows of this "
                       r"batch, epoch 1, step 3\)"):  # fmt: skip
        # The host reads only at the end: steps 4 and 5 run on and are skipped too.
        train_one_epoch(model, objective, optimizer, batches(5, bad_step=2), epoch=0,
                        sync_every=100)  # fmt: skip
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q)  # the weights after step 2, untouched since


def test_a_non_finite_loss_part_is_named():
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, fused=True)
    objective = build_objective("kd")
    real = objective.forward

    def nan_part(*args, **kwargs):  # type: ignore[no-untyped-def]
        total, parts = real(*args, **kwargs)
        return total, {**parts, "kd": parts["kd"] * float("nan")}

    objective.forward = nan_part  # type: ignore[method-assign]
    with pytest.raises(NonFiniteError, match=r"loss part 'kd' is NaN/Inf at epoch 2, step 1"):
        train_one_epoch(model, objective, optimizer, batches(3), epoch=1)


def test_a_diverged_loss_is_named_with_its_value():
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, fused=True)
    with pytest.raises(NonFiniteError, match=r"training loss is (nan|inf) at epoch 1, step 2"):
        train_one_epoch(model, build_objective("kd"), optimizer, batches(4, 1, "image"), epoch=0,
                        sync_every=10)  # fmt: skip


def test_the_values_read_late_are_the_values_read_each_step():
    losses = []
    for every in (1, 2, 100):
        model = tiny_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        tally = EpochTally()
        stats = train_one_epoch(model, build_objective("dkd"), optimizer, batches(5), epoch=3,
                                tally=tally, sync_every=every)  # fmt: skip
        losses.append((stats.step_losses, stats.means))
    assert losses[0] == losses[1] == losses[2]


def test_the_guard_flags_only_steps_from_the_first_bad_one():
    guard = StepGuard(torch.device("cpu"))
    ok, bad = torch.tensor(True), torch.tensor(False)
    flags = [bool(guard.check(x, None)) for x in (ok, ok, bad, ok)]
    assert flags == [True, True, False, False]
    assert guard.first_bad() == (2, 1, 0, 0)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["ce", "kd"])  # ce: its loss is 1.0 * ce, its one part ce
def test_the_compiled_step_gives_the_eager_losses_within_float32_tolerance(loss):
    torch._dynamo.reset()  # each case compiles afresh (what an earlier compile left can hide a bug)
    results = []
    for compiled in (False, True):
        model = tiny_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        step = TrainStep(model, build_objective(loss), optimizer, compile=compiled)
        stats = train_one_epoch(model, build_objective(loss), optimizer, batches(6), epoch=0,
                                step=step)  # fmt: skip
        results.append(stats.step_losses)
    assert results[0] == pytest.approx(results[1], rel=1e-5, abs=1e-6)
