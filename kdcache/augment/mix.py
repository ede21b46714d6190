"""Mixed views (``<base>+mixup``, ``<base>+cutmix``, ``<base>+mixup-cutmix``) under the
determinism contract (docs/design.md §Determinism; normative text in docs/cache-format.md §5.3.1).

Mixup (Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018) and CutMix (Yun et
al., "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable Features", ICCV
2019), with timm's defaults and draws (``timm.data.Mixup``: alpha 0.8 / 1.0, switch probability
0.5, the ``rand_bbox`` box with lambda corrected after clipping). Unlike timm, the partner is not
"the batch flipped": it is drawn per sample, so a view is a pure function of
``(cache seed, view, index)`` and never of the batch (the teacher saw exactly this image, whatever
batch size, worker count or rank count extraction and training use).

View v of sample i: ``x_i = base(i)`` and ``x_j = base(j)`` (the base recipe's own views, same v),
the draws of :func:`draw_mix`, then :func:`apply_mix`. The effective lambda (float32) is the weight
of sample i's label: the target is ``lam * onehot(y_i) + (1 - lam) * onehot(y_j)``.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from kdcache.augment.base import Recipe, create_base_recipe
from kdcache.data.spec import DatasetSpec
from kdcache.errors import ConfigError

MixKind = Literal["mixup", "cutmix", "mixup-cutmix"]
MIX_KINDS: tuple[str, ...] = ("mixup", "cutmix", "mixup-cutmix")
MIX_DOMAIN = b"kdcache-mix-v1"
_SEED_MASK = 2**63 - 1
# Which parameters each kind has (only these are recorded, so the identity names what matters).
_KIND_PARAMS: dict[str, tuple[str, ...]] = {
    "mixup": ("mixup_alpha", "mix_prob"),
    "cutmix": ("cutmix_alpha", "mix_prob"),
    "mixup-cutmix": ("mixup_alpha", "cutmix_alpha", "switch_prob", "mix_prob"),
}
MIX_PARAM_NAMES = frozenset(p for names in _KIND_PARAMS.values() for p in names)
# One generator per thread, reseeded per draw: constructing a RandomState costs ~0.6 ms (most of a
# CIFAR view's cost), reseeding one ~40 us, and reseeding gives the same stream as a new one.
_LOCAL = threading.local()


def _generator(seed: int) -> np.random.RandomState:
    rs = getattr(_LOCAL, "rs", None)
    if rs is None:
        rs = _LOCAL.rs = np.random.RandomState()
    rs.seed(np.array([seed & 0xFFFFFFFF, seed >> 32], dtype=np.uint32))
    return rs


def mix_seed(cache_seed: int, view: int, index: int) -> int:
    """The 63-bit seed of the mix draws of (view, index): :func:`kdcache.seeding.sample_seed`'s
    construction with the domain ``b"kdcache-mix-v1"``, so it is independent of the base recipe's
    draws."""
    payload = MIX_DOMAIN + b"".join(int(x).to_bytes(8, "little") for x in (cache_seed, view, index))
    return int.from_bytes(hashlib.sha256(payload).digest()[:8], "little") & _SEED_MASK


@dataclass(frozen=True)
class MixParams:
    """timm's ``Mixup`` defaults: mixup alpha 0.8, cutmix alpha 1.0, switch prob 0.5, prob 1."""

    kind: MixKind
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    switch_prob: float = 0.5
    mix_prob: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in MIX_KINDS:
            raise ConfigError(f"unknown mixing {self.kind!r}; choose one of {', '.join(MIX_KINDS)}")
        for name in ("mixup_alpha", "cutmix_alpha"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 < value < float("inf"):
                raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("switch_prob", "mix_prob"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")

    def to_dict(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in _KIND_PARAMS[self.kind]}


@dataclass(frozen=True)
class MixDraw:
    """What (cache seed, view, index) draws: the partner, the kind, lambda and the cutmix box."""

    partner: int
    kind: Literal["mixup", "cutmix", "none"]  # "none": not mixed (u >= mix_prob)
    lam: np.float32  # effective weight of the sample itself (after box clipping for cutmix)
    box: tuple[int, int, int, int] | None = None  # cutmix: (y0, y1, x0, x1) taken from the partner


def draw_mix(
    params: MixParams, cache_seed: int, view: int, index: int, num_samples: int,
    height: int, width: int,
) -> MixDraw:  # fmt: skip
    """The mix draws of (view, index), in the order of docs/cache-format.md §5.3.1.

    NumPy's legacy ``RandomState`` (its streams are frozen by NumPy's compatibility policy; timm's
    ``Mixup`` draws from the same generator type), seeded with the two 32-bit halves of
    :func:`mix_seed` (``init_by_array``).
    """
    seed = mix_seed(cache_seed, view, index)
    rs = _generator(seed)
    partner = int(rs.randint(0, num_samples))
    if not rs.random_sample() < params.mix_prob:
        return MixDraw(index, "none", np.float32(1.0))
    cutmix = params.kind == "cutmix" or (
        params.kind == "mixup-cutmix" and rs.random_sample() < params.switch_prob
    )
    alpha = params.cutmix_alpha if cutmix else params.mixup_alpha
    lam = float(rs.beta(alpha, alpha))
    if not cutmix:
        return MixDraw(partner, "mixup", np.float32(lam))
    cut_h, cut_w = cutmix_size(lam, height, width)
    cy = int(rs.randint(0, height))
    cx = int(rs.randint(0, width))
    box, effective = cutmix_box(cut_h, cut_w, cy, cx, height, width)
    return MixDraw(partner, "cutmix", effective, box)


def cutmix_size(lam: float, height: int, width: int) -> tuple[int, int]:
    """timm's ``rand_bbox`` cut size: ``int(H * sqrt(1 - lam))``, ``int(W * sqrt(1 - lam))``."""
    ratio = float(np.sqrt(1.0 - lam))
    return int(height * ratio), int(width * ratio)


def cutmix_box(
    cut_h: int, cut_w: int, cy: int, cx: int, height: int, width: int
) -> tuple[tuple[int, int, int, int], np.float32]:
    """timm's ``rand_bbox`` (margin 0) box around the centre (cy, cx), clipped to the image, and
    ``cutmix_bbox_and_lam(correct_lam=True)``'s lambda: ``1 - box area / (H * W)``, as float32.

    The box is ``[y0, y1) x [x0, x1)`` with ``y0 = clip(cy - cut_h // 2, 0, H)``,
    ``y1 = clip(cy + (cut_h + 1) // 2, 0, H)`` (x likewise; timm 1.0's rule, a cut of exactly
    ``cut_h`` rows before clipping): clipped at the border, possibly empty.
    """
    y0, y1 = min(max(cy - cut_h // 2, 0), height), min(max(cy + (cut_h + 1) // 2, 0), height)
    x0, x1 = min(max(cx - cut_w // 2, 0), width), min(max(cx + (cut_w + 1) // 2, 0), width)
    effective = 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)
    return (y0, y1, x0, x1), np.float32(effective)


def apply_mix(image: torch.Tensor, partner: torch.Tensor, draw: MixDraw) -> torch.Tensor:
    """uint8 ``[C, H, W]`` sample and partner views -> the mixed uint8 view ``[C, H, W]``.

    mixup: ``rint(f32(x_i) * l + f32(x_j) * m)`` with ``l = lam`` and ``m = float32(1) - l``, every
    operation a separate IEEE float32 operation (no fused multiply-add), ``rint`` rounding halves to
    even (timm's ``FastCollateMixup`` does the same ``np.rint`` of a float32 blend), clipped to
    [0, 255]. cutmix: ``x_i`` with the box's pixels replaced by ``x_j``'s. A partner equal to the
    sample itself, or no mixing, leaves ``x_i`` unchanged.
    """
    if draw.kind == "none":
        return image
    if draw.kind == "cutmix":
        assert draw.box is not None
        y0, y1, x0, x1 = draw.box
        out = image.clone()
        out[:, y0:y1, x0:x1] = partner[:, y0:y1, x0:x1]
        return out
    lam = np.float32(draw.lam)
    rest = np.float32(1.0) - lam
    a = image.numpy().astype(np.float32) * lam  # [C, H, W] float32
    b = partner.numpy().astype(np.float32) * rest
    mixed = np.clip(np.rint(a + b), 0, 255).astype(np.uint8)
    return torch.from_numpy(mixed)


class MixedRecipe(Recipe):
    """A base recipe whose views are mixed with a partner's view of the same view number.

    ``self(image, ...)`` is the base recipe's (unmixed) view; :class:`kdcache.data.SeededViews`
    draws the partner with :meth:`draw` and mixes the two views with :func:`apply_mix`, since
    mixing needs a second image of the dataset.
    """

    name = "mixed"  # replaced per instance by "<base>+<kind>"

    def __init__(self, spec: DatasetSpec, base: Recipe, mix: MixParams) -> None:
        super().__init__(spec)
        self.base = base
        self.mix = mix
        self.name = f"{base.name}+{mix.kind}"  # type: ignore[misc]  # names the instance

    def params(self) -> dict[str, Any]:
        return {**self.base.params(), **self.mix.to_dict()}

    def __call__(self, image: torch.Tensor, *, sample_seed: int, view: int) -> torch.Tensor:
        return self.base(image, sample_seed=sample_seed, view=view)

    def draw(self, cache_seed: int, view: int, index: int, num_samples: int) -> MixDraw:
        size = self.spec.image_size
        return draw_mix(self.mix, cache_seed, view, index, num_samples, size, size)


def create_mixed_recipe(name: str, spec: DatasetSpec, params: dict[str, Any]) -> MixedRecipe:
    """``"<base>+<kind>"`` with the base recipe's parameters and the kind's own (flat)."""
    base_name, _, kind = name.partition("+")
    if kind not in MIX_KINDS:
        raise ConfigError(
            f"unknown mixing {kind!r} in recipe {name!r}; write <base>+mixup, <base>+cutmix or "
            "<base>+mixup-cutmix"
        )
    mix_params = {k: params.pop(k) for k in list(params) if k in MIX_PARAM_NAMES}
    wrong = sorted(set(mix_params) - set(_KIND_PARAMS[kind]))
    if wrong:
        raise ConfigError(
            f"recipe {name!r} has no parameter(s) {', '.join(wrong)}; its mixing takes "
            f"{', '.join(_KIND_PARAMS[kind])}"
        )
    if params.get("exhaustive"):
        raise ConfigError(
            f"recipe {name!r}: a mixed view has no finite set of views (the partner and lambda are "
            "drawn per sample), so exhaustive=True is impossible; drop `exhaustive`"
        )
    base = create_base_recipe(base_name, spec, **params)
    return MixedRecipe(spec, base, MixParams(kind=kind, **mix_params))  # type: ignore[arg-type]
