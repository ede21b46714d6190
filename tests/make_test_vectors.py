"""Generate the test vectors of ``docs/cache-format.md`` (§9) with kdcache's own code.

    PYTHONPATH=. python tests/make_test_vectors.py            # print the blocks
    PYTHONPATH=. python tests/make_test_vectors.py --write    # rewrite them in the doc

Each block sits between ``<!-- vectors:NAME:begin -->`` and ``<!-- vectors:NAME:end -->`` in the
doc. ``tests/test_spec_vectors.py`` regenerates every block and fails when the doc differs, so the
published vectors can never go stale; ``tests/test_conformance.py`` recomputes them from the page's
rules alone. The ``cifar100`` block needs ``../shared/data`` (real CIFAR-100).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "cache-format.md"
CIFAR_DIR = REPO.parent / "shared" / "data"

# (seed, view, index) tuples shown for the seed derivation: small, large and > 2**32 seeds.
SEED_TUPLES = [(0, 0, 0), (0, 1, 0), (0, 0, 1), (7, 3, 100), (2**32 + 5, 2, 12345), (2**63, 9, 7)]
# (seed, view, index) tuples shown for every recipe.
RECIPE_TUPLES = [(0, 0, 0), (0, 1, 0), (7, 3, 100), (2**32 + 5, 2, 300)]
EXHAUSTIVE_VIEWS = [0, 1, 19, 161]  # (dy, dx, flip) = (0,0,0), (0,0,1), (1,0,1), (8,8,1)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, tuple | list):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    return str(value)


@contextlib.contextmanager
def _recording_timm_ops(record: list[str]) -> Iterator[None]:
    """Record each timm RandAugment op that runs: its name and level arguments, or 'skipped'."""
    from timm.data import auto_augment

    original = auto_augment.AugmentOp.__call__

    def call(self: Any, img: Any) -> Any:
        fn = self.aug_fn
        seen: list[tuple[Any, ...]] = []

        def traced(image: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append(args)
            return fn(image, *args, **kwargs)

        self.aug_fn = traced
        try:
            out = original(self, img)
        finally:
            self.aug_fn = fn
        record.append(f"{self.name}{_fmt(seen[0])}" if seen else f"{self.name} skipped")
        return out

    auto_augment.AugmentOp.__call__ = call  # type: ignore[method-assign]
    try:
        yield
    finally:
        auto_augment.AugmentOp.__call__ = original  # type: ignore[method-assign]


def _draws(recipe: Any, image: torch.Tensor, seed: int, view: int) -> tuple[str, torch.Tensor]:
    """(the recipe's drawn parameters as text, the augmented image)."""
    from kdcache.augment.base import generator

    name = recipe.name
    if "+" in name:
        raise ValueError(f"{name}: mixed recipes go through _mixed_draws")
    if name == "none":
        return "-", recipe(image, sample_seed=seed, view=view)
    if name == "cifar":
        text = "dy,dx,flip=" + _fmt(recipe.geometry(sample_seed=seed, view=view))
        return text, recipe(image, sample_seed=seed, view=view)
    if name == "imagenet":
        gen = generator(seed)
        box = recipe.box(int(image.shape[-2]), int(image.shape[-1]), gen)
        flip = bool(torch.rand(1, generator=gen).item() < 0.5)
        text = "top,left,h,w=" + _fmt(box) + " flip=" + _fmt(flip)
        return text, recipe(image, sample_seed=seed, view=view)
    if name == "randaugment":
        base_text, _ = _draws(recipe._base, image, seed, view)
        ops: list[str] = []
        with _recording_timm_ops(ops):
            out = recipe(image, sample_seed=seed, view=view)
        return base_text + "; " + "; ".join(ops), out
    raise ValueError(name)


def _mixed_draws(
    recipe: Any, source: Any, cache_seed: int, view: int, index: int
) -> tuple[str, torch.Tensor]:
    """A mixed recipe's draws as text (§5.3.1), and the mixed view."""
    from kdcache.augment.mix import apply_mix, mix_seed
    from kdcache.seeding import sample_seed

    def base(i: int) -> tuple[str, torch.Tensor]:
        return _draws(recipe.base, source.image(i), sample_seed(cache_seed, view, i), view)

    text, x_i = base(index)
    draw = recipe.draw(cache_seed, view, index, len(source))
    partner_text, x_j = base(draw.partner)
    text += f"; mix_seed={mix_seed(cache_seed, view, index)}"
    text += f"; partner={draw.partner} ({partner_text})"
    text += f"; {draw.kind} lambda={float(draw.lam)!r}"
    if draw.box is not None:
        text += " box=" + _fmt(draw.box)
    mixed = x_i if draw.partner == index else apply_mix(x_i, x_j, draw)
    return text, mixed


def _recipe_rows(source: Any, recipes: list[tuple[str, dict[str, Any]]]) -> list[str]:
    from kdcache.augment import create_recipe
    from kdcache.seeding import input_hash, sample_seed

    rows = [
        "| recipe | seed | view | index | sample_seed | drawn | input_hash |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, params in recipes:
        recipe = create_recipe(name, source.spec, **params)
        label = name + (" --exhaustive" if params.get("exhaustive") else "")
        tuples = (
            [(0, v, (37 * v) % len(source)) for v in EXHAUSTIVE_VIEWS]
            if params.get("exhaustive")
            else RECIPE_TUPLES
        )
        for seed, view, index in tuples:
            s = sample_seed(seed, view, index)
            if "+" in name:
                text, out = _mixed_draws(recipe, source, seed, view, index)
            else:
                text, out = _draws(recipe, source.image(index), s, view)
            rows.append(
                f"| {label} | {seed} | {view} | {index} | {s} | {text} | {input_hash(out)} |"
            )
    return rows


def _fingerprint_rows(sources: list[Any]) -> list[str]:
    rows = []
    for src in sources:
        kind, _ = src._identity()
        header = {
            "name": src.spec.name,
            "split": src.split,
            "n": len(src),
            "classes": list(src.class_names),
            "identity": kind,
        }
        line = json.dumps(header, sort_keys=True, separators=(",", ":"))
        if len(line) > 160:  # CIFAR-100's 100 class names: show the ends
            line = line[:100] + " ... " + line[-60:]
        rows += [
            f"{src.spec.name} {src.split}:",
            f"    header   {line}",
            f"    sha256   {src.fingerprint()}",
        ]
    return rows


def block_seeds() -> str:
    from kdcache.seeding import sample_seed

    rows = [
        "| seed s | view v | index i | sample_seed(s, v, i) | NumPy seed (mod 2**32) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for seed, view, index in SEED_TUPLES:
        s = sample_seed(seed, view, index)
        rows.append(f"| {seed} | {view} | {index} | {s} | {s % 2**32} |")
    return "\n".join(rows)


def block_digits() -> str:
    from kdcache.data import load_dataset
    from kdcache.data.datasets import digits_split_indices

    train = load_dataset("digits", None, "train")
    test = load_dataset("digits", None, "test")
    lines = ["```text", *_fingerprint_rows([train, test])]
    lines.append(
        "test indices, first 10: " + _fmt(digits_split_indices(1797, "test")[:10].tolist())
    )
    lines.append(
        "train sample 0, row 3 of its 8x8 uint8 pixels: " + _fmt(train.pixels[0, 0, 3].tolist())
    )
    lines.append("```")
    lines.append("")
    lines += _recipe_rows(train, _RECIPES)
    return "\n".join(lines)


def block_cifar100() -> str:
    from kdcache.data import load_dataset

    train = load_dataset("cifar100", CIFAR_DIR, "train")
    test = load_dataset("cifar100", CIFAR_DIR, "test")
    lines = ["```text", *_fingerprint_rows([train, test]), "```", ""]
    lines += _recipe_rows(train, _RECIPES)
    return "\n".join(lines)


_RECIPES: list[tuple[str, dict[str, Any]]] = [
    ("none", {}),
    ("cifar", {}),
    ("cifar", {"exhaustive": True}),
    ("imagenet", {}),
    ("randaugment", {}),
    ("cifar+mixup", {}),
    ("cifar+cutmix", {}),
    ("imagenet+mixup-cutmix", {}),
]
BLOCKS: dict[str, Callable[[], str]] = {
    "seeds": block_seeds,
    "digits": block_digits,
    "cifar100": block_cifar100,
}


def block_pattern(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- vectors:{name}:begin -->\n)(.*?)(<!-- vectors:{name}:end -->)", re.DOTALL
    )


def doc_block(text: str, name: str) -> str | None:
    """The body of block ``name`` in the doc's text, without its final newline (None: no block)."""
    match = block_pattern(name).search(text)
    return match.group(2).removesuffix("\n") if match else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the blocks in the doc")
    args = parser.parse_args()
    text = DOC.read_text()
    for name, make in BLOCKS.items():
        if name == "cifar100" and not (CIFAR_DIR / "cifar-100-python" / "train").is_file():
            print(f"skipping {name}: {CIFAR_DIR} has no CIFAR-100", file=sys.stderr)
            continue
        body = make()
        if args.write:
            if doc_block(text, name) is None:
                print(f"{DOC} has no vectors:{name} block", file=sys.stderr)
                return 1
            text = block_pattern(name).sub(
                lambda m, b=body: m.group(1) + b + "\n" + m.group(3), text
            )
        else:
            print(f"<!-- vectors:{name} -->\n{body}\n")
    if args.write:
        DOC.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
