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
    lines.append("dataset.spec " + json.dumps(train.spec.to_dict(), sort_keys=True))
    lines.append("```")
    lines.append("")
    lines += _recipe_rows(train, _RECIPES)
    return "\n".join(lines)


def block_cifar100() -> str:
    from kdcache.data import load_dataset

    train = load_dataset("cifar100", CIFAR_DIR, "train")
    test = load_dataset("cifar100", CIFAR_DIR, "test")
    lines = ["```text", *_fingerprint_rows([train, test])]
    lines += ["dataset.spec " + json.dumps(train.spec.to_dict(), sort_keys=True), "```", ""]
    lines += _recipe_rows(train, _RECIPES)
    return "\n".join(lines)


# §4.1: doubles (as IEEE-754 hex, exact in any language) and the canonical text of each.
JSON_FLOATS = [1.0, 4.0, 0.5071, 0.1 + 0.2, 1.3333333333333333, 0.0001, 1e-05, 1.5e-07,
               123456789.0, 1234567890123456.0, 1e16, 2.5e20, 5e-324, -0.0, -2.75]  # fmt: skip
JSON_OTHERS: list[Any] = [
    2**63,
    -7,
    True,
    None,
    'caf\u00e9\t"x/\U0001f600',
    [1, 1.0],
    {"b": 1, "a": {}},
]


def block_json() -> str:
    from kdcache.cache.schema import canonical_json

    rows = ["| double (IEEE-754 hex) | canonical text |", "| --- | --- |"]
    rows += [f"| `{x.hex()}` | `{canonical_json(x).decode()}` |" for x in JSON_FLOATS]
    rows += ["", "| value (Python) | canonical text |", "| --- | --- |"]
    rows += [f"| `{v!r}` | `{canonical_json(v).decode()}` |" for v in JSON_OTHERS]
    return "\n".join(rows)


def _example_identity() -> Any:
    """The identity `kdcache extract` writes for a sparse imagenet+mixup cache of the digits
    (teacher weights stood in for by a fixed digest): floats in every section."""
    from kdcache.augment import create_recipe
    from kdcache.cache import schema
    from kdcache.data import load_dataset
    from kdcache.extract import sparse_temperatures
    from kdcache.models import build_model, count_parameters
    from kdcache.models.preprocess import Preprocessing

    source = load_dataset("digits", None, "train")
    spec = source.spec
    recipe = create_recipe("imagenet+mixup", spec)
    return schema.CacheIdentity(
        teacher=schema.TeacherInfo(
            name="resnet8",
            weights_sha256="ab" * 32,
            num_params=count_parameters(build_model("resnet8", 10, in_chans=1)),
            preprocessing=Preprocessing.from_dataset(spec).to_dict(),
        ),
        dataset=schema.DatasetInfo(
            name=spec.name,
            split=source.split,
            num_samples=len(source),
            num_classes=spec.num_classes,
            fingerprint=source.fingerprint(),
            spec=spec.to_dict(),
        ),  # fmt: skip
        augmentation=schema.AugmentationInfo(
            recipe=recipe.name, params=recipe.params(), seed=2**32 + 5, num_views=4
        ),
        storage=schema.StorageInfo(
            mode="sparse",
            dtype="float32",
            chunk_rows=256,
            topk=3,
            temperatures=sparse_temperatures(),
        ),  # fmt: skip
    )


def block_fingerprint() -> str:
    from kdcache.cache.schema import canonical_json

    identity = _example_identity()
    return "\n".join([
        "```text",
        "identity " + canonical_json(identity.to_dict()).decode(),
        f"sha256   {identity.fingerprint()}",
        "```",
    ])  # fmt: skip


def block_digests() -> str:
    """§3.1 for small blocks of every dtype (view 1, block 2 of rows [8, 12); the values shown)."""
    import numpy as np

    from kdcache.cache.digest import block_digest

    rows = slice(8, 12)
    cases: list[tuple[str, np.ndarray]] = [
        (
            "logits",
            np.array(
                [[1.5, -2.0, 0.25], [0.0, 65504.0, -0.125], [3.0, 3.0, -1.0], [0.5, -0.5, 2.0]],
                dtype=np.float16,
            ),
        ),  # fmt: skip
        ("topk_values", np.array([[2.5, 1.0], [-0.75, -1.5], [7.0, 7.0], [0.1, 0.05]], np.float32)),
        ("topk_indices", np.array([[3, 0], [1, 2], [0, 4], [2, 1]], dtype=np.int16)),
        ("input_hash", np.array([-6039292589969293677, 1, 0, 2**62], dtype=np.int64)),
        ("mix_lambda", np.array([1.0, 0.5927619934082031, 0.0, 0.8125], dtype=np.float32)),
        ("block_top1_correct", np.array(3, dtype=np.int64)),
    ]
    out = ["| array | dtype | values [rows 8..11] | sha256 |", "| --- | --- | --- | --- |"]
    for name, values in cases:
        shown = values.tolist()
        digest = block_digest(name, 1, 2, rows, values).hex()
        out.append(f"| `{name}` | {values.dtype} | `{shown}` | `{digest}` |")
    header = b"kdcache-block-v1\0logits\0" + b"".join(
        x.to_bytes(8, "little") for x in (1, 2, 8, 12)
    )
    out += ["", f"The header of the first row, in hex: `{header.hex()}`."]
    return "\n".join(out)


SPARSE_LOGITS = [[2.0, -1.0, 3.5, 3.5, 0.0, -7.25, 1.0, 3.5],
                 [0.1, 0.2, 0.3, -0.4, 10.0, 0.3, -50.0, 1e-3]]  # fmt: skip
SPARSE_LABELS = [5, 2]


def block_sparse() -> str:
    """§2.1: a sparse row from float32 logits, K = 3, at T = 1 and 4."""
    import numpy as np

    from kdcache.cache.sparse import sparse_rows_from_logits
    from kdcache.extract_writer import topk_hits

    z = np.array(SPARSE_LOGITS, dtype=np.float32)
    labels = np.array(SPARSE_LABELS)
    rows = sparse_rows_from_logits(z, labels, 3, (1.0, 4.0))

    def f32(values: Any) -> str:
        return "(" + ", ".join(repr(float(v)) for v in np.ravel(values)) + ")"

    out = ["```text"]
    for r in range(len(z)):
        top1, top5 = topk_hits(z[r : r + 1], labels[r : r + 1])
        out += [
            f"row {r}: z = {f32(z[r])} (float32), label {labels[r]}",
            f"    topk_indices      {tuple(int(i) for i in rows.indices[r])}",
            f"    topk_values       {f32(rows.values[r])}",
            f"    logsumexp_t       {f32(rows.lse[r])}   (T = 1, 4)",
            f"    tail_logsumexp_t  {f32(rows.tail_lse[r])}",  # type: ignore[index]
            f"    label_logit       {f32(rows.label_logit[r])}",  # type: ignore[index]
            f"    logit_mean        {f32(rows.logit_mean[r])}",  # type: ignore[index]
            f"    logit_std         {f32(rows.logit_std[r])}",  # type: ignore[index]
            f"    top-1 hit {top1}, top-5 hit {top5}",
        ]
    out.append("```")
    return "\n".join(out)


# §5.2 imagefolder: a tree built from these rules (relative path -> image [C, H, W] or bytes).
def imagefolder_tree() -> dict[str, Any]:
    """Each image's pixels are ``(37 * c + 11 * y + 5 * x) % 256`` at [c, y, x]; P6 (RGB) or P5
    (grey) binary netpbm files, whose bytes are fixed by the header and the pixels."""

    def image(channels: int, h: int, w: int) -> bytes:
        kind = b"P6" if channels == 3 else b"P5"
        pixels = bytes((37 * c + 11 * y + 5 * x) % 256
                       for y in range(h) for x in range(w) for c in range(channels))  # fmt: skip
        return kind + f"\n{w} {h}\n255\n".encode() + pixels

    return {
        "train/cat/a.ppm": image(3, 4, 5),
        "train/cat/B.PPM": image(3, 12, 10),
        "train/cat/sub/c.pgm": image(1, 6, 7),
        "train/cat/.x/d.ppm": image(3, 3, 3),
        "train/cat/notes.txt": b"not an image",
        "train/cat.ppm": image(3, 2, 2),
        "train/.git/e.ppm": image(3, 2, 2),
        "train/dog/f.ppm": image(3, 9, 9),
        "train/empty/README": b"",
        "val/dog/g.ppm": image(3, 8, 8),
    }


def block_imagefolder() -> str:
    import tempfile

    from kdcache.augment import create_recipe
    from kdcache.data import load_dataset
    from kdcache.seeding import input_hash

    out = ["```text"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for rel, data in imagefolder_tree().items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        (root / "train" / "empty").mkdir(exist_ok=True)
        for split in ("train", "test"):
            src = load_dataset("imagefolder", root, split, image_size=8)
            recipe = create_recipe("none", src.spec)
            out += _fingerprint_rows([src])
            for i in range(len(src)):
                view = recipe(src.image(i), sample_seed=0, view=0)
                out.append(
                    f"    sample {i}: {src.relpaths[i]}\t{src.sizes[i]}  label {src.labels[i]}"  # type: ignore[attr-defined]
                    f"  [C,H,W]={list(src.image(i).shape)}  none-view input_hash {input_hash(view)}"
                )
        out.append("dataset.spec " + json.dumps(src.spec.to_dict(), sort_keys=True))
    out.append("```")
    return "\n".join(out)


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
    "json": block_json,
    "fingerprint": block_fingerprint,
    "digests": block_digests,
    "sparse": block_sparse,
    "imagefolder": block_imagefolder,
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
