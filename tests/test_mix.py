"""Mixed views (``<base>+mixup`` / ``+cutmix`` / ``+mixup-cutmix``): pure functions of
(seed, view, sample), timm's draws, byte-exact mixing rules at the edges, the mixed target."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdcache.augment import create_recipe
from kdcache.augment.mix import (
    MixDraw,
    MixedRecipe,
    MixParams,
    apply_mix,
    cutmix_box,
    cutmix_size,
    draw_mix,
    mix_seed,
)
from kdcache.data import load_dataset
from kdcache.errors import ConfigError
from kdcache.losses.mixed import MixedTarget, mixed_cross_entropy, soft_targets
from kdcache.losses.objective import build_objective
from kdcache.losses.registry import list_losses
from kdcache.seeding import sample_seed
from kdcache.views import SeededViews, view_items


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", None, "train")


def test_mix_seed_is_independent_of_the_sample_seed() -> None:
    assert mix_seed(0, 0, 0) != sample_seed(0, 0, 0)
    assert mix_seed(0, 0, 0) == mix_seed(0, 0, 0) != mix_seed(0, 0, 1) != mix_seed(0, 1, 0)
    assert 0 <= mix_seed(2**63, 9, 7) < 2**63


@pytest.mark.parametrize("name", ["cifar+mixup", "cifar+cutmix", "imagenet+mixup-cutmix"])
def test_a_mixed_view_does_not_depend_on_order_or_neighbours(digits, name: str) -> None:
    recipe = create_recipe(name, digits.spec)
    items = view_items(range(2), range(40))
    forward = SeededViews(digits, recipe, 5, items)
    backward = SeededViews(digits, recipe, 5, items[::-1].copy())
    for k in range(len(items)):
        a, b = forward[k], backward[len(items) - 1 - k]
        assert torch.equal(a["image"], b["image"])
        assert (a["partner"], float(a["lam"]), a["input_hash"]) == (
            b["partner"], float(b["lam"]), b["input_hash"],
        )  # fmt: skip
        assert a["partner_label"] == int(digits.labels[a["partner"]])
        assert a["lam"].dtype == torch.float32 and 0 <= float(a["lam"]) <= 1


def test_the_mixed_image_is_the_rule_applied_to_the_two_base_views(digits) -> None:
    recipe = create_recipe("cifar+mixup-cutmix", digits.spec)
    base = create_recipe("cifar", digits.spec)
    views = SeededViews(digits, recipe, 3, view_items([1], range(30)))
    kinds = set()
    for k in range(len(views)):
        item = views[k]
        i = item["index"]
        draw = recipe.draw(3, 1, i, len(digits))
        kinds.add(draw.kind)
        x_i = base(digits.image(i), sample_seed=sample_seed(3, 1, i), view=1)
        x_j = base(digits.image(draw.partner), sample_seed=sample_seed(3, 1, draw.partner), view=1)
        assert torch.equal(item["image"], apply_mix(x_i, x_j, draw))
        assert draw.partner == item["partner"] and draw.lam == float(item["lam"])
    assert kinds == {"mixup", "cutmix"}  # switch prob 0.5 over 30 samples draws both


def test_draws_equal_timms_mixup_draws_from_the_same_generator_state() -> None:
    """After the partner draw, kdcache draws exactly what timm's ``Mixup`` draws (batch mode)."""
    from timm.data.mixup import Mixup, cutmix_bbox_and_lam

    params = MixParams("mixup-cutmix")
    timm_mix = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, mode="batch")
    saved = np.random.get_state()
    try:
        for index in range(60):
            seed = mix_seed(9, 2, index)
            rs = np.random.RandomState(np.array([seed & 0xFFFFFFFF, seed >> 32], np.uint32))
            rs.randint(0, 1000)  # the partner
            np.random.set_state(rs.get_state())
            lam, use_cutmix = timm_mix._params_per_batch()
            box = None
            if use_cutmix:
                box, lam = cutmix_bbox_and_lam((1, 3, 32, 32), lam, correct_lam=True)
            ours = draw_mix(params, 9, 2, index, 1000, 32, 32)
            assert ours.kind == ("cutmix" if use_cutmix else "mixup")
            assert ours.lam == np.float32(lam)
            assert ours.box == (tuple(int(b) for b in box) if box is not None else None)
    finally:
        np.random.set_state(saved)


def test_mixup_at_lambda_one_and_zero_gives_each_image_exactly() -> None:
    a = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16)
    b = a.flip(-1).clone()
    assert torch.equal(apply_mix(a, b, MixDraw(1, "mixup", np.float32(1.0))), a)
    assert torch.equal(apply_mix(a, b, MixDraw(1, "mixup", np.float32(0.0))), b)


def test_mixup_rounds_half_to_even_in_float32() -> None:
    a = torch.tensor([[[1, 3, 0, 255]]], dtype=torch.uint8)
    b = torch.tensor([[[0, 0, 5, 0]]], dtype=torch.uint8)
    out = apply_mix(a, b, MixDraw(1, "mixup", np.float32(0.5)))
    # 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 127.5 -> 128: halves go to the even neighbour (np.rint)
    assert out.tolist() == [[[0, 2, 2, 128]]]


@pytest.mark.parametrize("lam", [0.0, 1e-7, 0.1, 0.3333333, 0.5, 0.7, 0.9999999, 1.0])
def test_mixing_an_image_with_itself_leaves_every_byte_unchanged(lam: float) -> None:
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16)
    assert torch.equal(apply_mix(x, x.clone(), MixDraw(0, "mixup", np.float32(lam))), x)
    cut = MixDraw(0, "cutmix", np.float32(lam), (2, 9, 0, 16))
    assert torch.equal(apply_mix(x, x.clone(), cut), x)


def test_a_partner_equal_to_the_sample_gives_the_unmixed_view(digits, monkeypatch) -> None:
    recipe = create_recipe("cifar+mixup", digits.spec)
    base = SeededViews(digits, create_recipe("cifar", digits.spec), 4, view_items([0], range(8)))
    real = MixedRecipe.draw

    def self_partner(self, cache_seed, view, index, num_samples):  # type: ignore[no-untyped-def]
        return MixDraw(index, "mixup", real(self, cache_seed, view, index, num_samples).lam)

    monkeypatch.setattr(MixedRecipe, "draw", self_partner)
    mixed = SeededViews(digits, recipe, 4, view_items([0], range(8)))
    for k in range(8):
        assert mixed[k]["input_hash"] == base[k]["input_hash"]
        assert mixed[k]["partner"] == mixed[k]["index"]
        assert mixed[k]["partner_label"] == mixed[k]["label"]
    # A dataset of one sample: the partner drawn from [0, 1) is always the sample itself.
    assert draw_mix(MixParams("cutmix"), 0, 0, 0, 1, 8, 8).partner == 0


def test_mix_prob_zero_leaves_every_view_unmixed_with_lambda_one(digits) -> None:
    mixed = create_recipe("cifar+mixup-cutmix", digits.spec, mix_prob=0.0)
    plain = create_recipe("cifar", digits.spec)
    items = view_items([0], range(10))
    a, b = SeededViews(digits, mixed, 1, items), SeededViews(digits, plain, 1, items)
    for k in range(10):
        assert a[k]["input_hash"] == b[k]["input_hash"]
        assert (a[k]["partner"], float(a[k]["lam"])) == (k, 1.0)


def test_cutmix_boxes_clip_at_the_border_and_lambda_counts_the_clipped_area() -> None:
    # lam = 0: a full-size cut centred at the corner keeps only the quarter inside the image.
    assert cutmix_size(0.0, 8, 8) == (8, 8)
    assert cutmix_box(8, 8, 0, 0, 8, 8) == ((0, 4, 0, 4), np.float32(1 - 16 / 64))
    assert cutmix_box(8, 8, 7, 7, 8, 8) == ((3, 8, 3, 8), np.float32(1 - 25 / 64))
    # The whole image is replaced only when the centre is in the middle: lambda 0 exactly.
    assert cutmix_box(8, 8, 4, 4, 8, 8) == ((0, 8, 0, 8), np.float32(0.0))
    # lam = 1: no cut, lambda 1 (the image is the sample's own).
    assert cutmix_size(1.0, 8, 8) == (0, 0)
    assert cutmix_box(0, 0, 5, 2, 8, 8) == ((5, 5, 2, 2), np.float32(1.0))
    # An odd cut: cut // 2 rows above the centre, (cut + 1) // 2 from it on (timm 1.0).
    assert cutmix_box(3, 3, 4, 4, 8, 8) == ((3, 6, 3, 6), np.float32(1 - 9 / 64))
    x, y = torch.zeros(1, 8, 8, dtype=torch.uint8), torch.full((1, 8, 8), 9, dtype=torch.uint8)
    out = apply_mix(x, y, MixDraw(1, "cutmix", np.float32(1 - 25 / 64), (3, 8, 3, 8)))
    assert int(out.sum()) == 9 * 25 and int(out[0, 3:, 3:].min()) == 9


def test_mixed_recipes_refuse_bad_settings_with_one_line(digits) -> None:
    with pytest.raises(ConfigError, match="no finite set of views"):
        create_recipe("cifar+mixup", digits.spec, exhaustive=True)
    with pytest.raises(ConfigError, match="unknown mixing 'mixdown'"):
        create_recipe("cifar+mixdown", digits.spec)
    with pytest.raises(ConfigError, match="no parameter.*cutmix_alpha"):
        create_recipe("cifar+mixup", digits.spec, cutmix_alpha=1.0)
    with pytest.raises(ConfigError, match="mixup_alpha must be a finite number > 0"):
        create_recipe("cifar+mixup", digits.spec, mixup_alpha=0)
    with pytest.raises(ConfigError, match="switch_prob must be a number in"):
        create_recipe("cifar+mixup-cutmix", digits.spec, switch_prob=2)
    recipe = create_recipe("imagenet+cutmix", digits.spec, cutmix_alpha=0.5)
    assert recipe.name == "imagenet+cutmix"
    assert create_recipe(recipe.name, digits.spec, **recipe.params()) == recipe


def test_the_mixed_cross_entropy_is_the_soft_target_cross_entropy() -> None:
    torch.manual_seed(0)
    s = torch.randn(6, 5, dtype=torch.float64)
    y, y2 = torch.tensor([0, 1, 2, 3, 4, 0]), torch.tensor([1, 1, 0, 4, 2, 3])
    lam = torch.tensor([0.0, 1.0, 0.3, 0.5, 0.9, 0.25])
    mix = MixedTarget(y2, lam)
    soft = soft_targets(y, mix, 5).double()
    expected = (-soft * F.log_softmax(s, 1)).sum(1).mean()  # timm's SoftTargetCrossEntropy
    torch.testing.assert_close(mixed_cross_entropy(s, y, mix), expected, rtol=1e-12, atol=0)
    ones = MixedTarget(y2, torch.ones(6))
    torch.testing.assert_close(mixed_cross_entropy(s, y, ones), F.cross_entropy(s, y))


def test_label_smoothing_smooths_each_label_then_mixes_as_timm() -> None:
    """timm's mixup with smoothing: target = lam * smooth(y) + (1 - lam) * smooth(y'), where
    smooth(y) = (1 - e) onehot(y) + e / C; at lam = 1 it is F.cross_entropy's label_smoothing."""
    torch.manual_seed(0)
    s = torch.randn(6, 5, dtype=torch.float64)
    y, y2 = torch.tensor([0, 1, 2, 3, 4, 0]), torch.tensor([1, 1, 0, 4, 2, 3])
    lam = torch.tensor([0.0, 1.0, 0.3, 0.5, 0.9, 0.25], dtype=torch.float64)
    e = 0.1
    smooth = lambda labels: (1 - e) * F.one_hot(labels, 5).double() + e / 5  # noqa: E731
    target = lam[:, None] * smooth(y) + (1 - lam[:, None]) * smooth(y2)
    expected = (-target * F.log_softmax(s, 1)).sum(1).mean()
    got = mixed_cross_entropy(s, y, MixedTarget(y2, lam), label_smoothing=e)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    ones = MixedTarget(y2, torch.ones(6, dtype=torch.float64))
    torch.testing.assert_close(mixed_cross_entropy(s, y, ones, label_smoothing=e),
                               F.cross_entropy(s, y, label_smoothing=e))  # fmt: skip


def test_kd_and_ldrld_train_on_mixed_targets_and_dkd_rld_refuse() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    y = torch.tensor([0, 1, 2, 3])
    mix = MixedTarget(torch.tensor([3, 2, 1, 0]), torch.tensor([0.2, 0.4, 0.6, 0.8]))
    for name in ("kd", "ldrld"):
        objective = build_objective(name)
        total, parts = objective(s, t, y, epoch=1, mix=mix)
        _, plain = objective(s, t, y, epoch=1)
        torch.testing.assert_close(parts["distill"], plain["distill"])  # the label is not read
        torch.testing.assert_close(parts["ce"], mixed_cross_entropy(s, y, mix))
    for name in ("dkd", "rld"):
        with pytest.raises(ConfigError, match=f"loss '{name}' has no definition for mixed views"):
            build_objective(name)(s, t, y, epoch=1, mix=mix)
    # Every registered loss is classified one way or the other.
    from kdcache.losses.mixed import LABEL_BOUND_LOSSES, MIXABLE_LOSSES

    assert set(list_losses()) == MIXABLE_LOSSES | LABEL_BOUND_LOSSES
