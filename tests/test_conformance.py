"""An independent reader of docs/cache-format.md: regenerate a cache's views from the page alone.

Everything the page specifies (dataset loading and splits, the dataset fingerprint, sample seeds,
every recipe's draws, the input hash) is implemented here again **without importing kdcache's
augmentation, data or seeding code**: only hashlib, pickle, NumPy, torch/torchvision, Pillow, timm
and scikit-learn (the digits' source). Where the page names a torchvision transform as equivalent,
this reader uses that transform (with torch's global RNG seeded) instead of re-deriving it, so it
checks the page's equivalence claims too. kdcache is used only as a black box, through its CLI, to
make the caches, which are read with zarr directly.

For each cache: the dataset fingerprint, the labels, and every (view, sample) input hash must equal
what this reader computes; dense and sparse caches of the same recipe must agree on the top-K, the
log-sum-exp and the hit counts (§2). The digits split is covered whole for every recipe and both
storage modes; real CIFAR-100 (when ../shared/data has it) for every recipe on a sample of rows.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import math
import os
import pickle
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from tests.conftest import DATA_DIR, require_shared_data
from tests.make_test_vectors import DOC, doc_block

# --- §5.1 sample seed and §5.4 input hash ---------------------------------------------------------


def le64(x: int) -> bytes:
    return x.to_bytes(8, "little")


def sample_seed(s: int, v: int, i: int) -> int:
    digest = hashlib.sha256(b"kdcache-v1" + le64(s) + le64(v) + le64(i)).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def input_hash(u8: np.ndarray) -> int:
    header = ("u8:" + ",".join(str(d) for d in u8.shape) + ";").encode("ascii")
    digest = hashlib.blake2b(header + np.ascontiguousarray(u8).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


# --- §5.2 datasets and §4.2 dataset fingerprint ---------------------------------------------------


@dataclass
class Split:
    name: str
    split: str
    pixels: np.ndarray  # uint8 [N, C, H, W]
    labels: np.ndarray  # int64 [N]
    classes: list[str]
    mean: tuple[float, ...]

    def fingerprint(self) -> str:
        header = {
            "classes": self.classes,
            "identity": "pixels-u8:" + ",".join(str(d) for d in self.pixels.shape),
            "n": len(self.labels),
            "name": self.name,
            "split": self.split,
        }
        h = hashlib.sha256(b"kdcache-dataset-v1\n")
        h.update(json.dumps(header, sort_keys=True, separators=(",", ":")).encode("ascii"))
        h.update(b"\n")
        h.update(self.labels.astype("<i8").tobytes())
        h.update(np.ascontiguousarray(self.pixels).tobytes())
        return h.hexdigest()


@functools.cache
def load_digits_split(split: str) -> Split:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = np.asarray(bunch.images).round().astype(np.int64)  # [1797, 8, 8], 0..16
    pixels = ((raw * 255 + 8) // 16).astype(np.uint8)[:, None]
    keys = [hashlib.sha256(b"kdcache-digits-split-v1" + le64(i)).digest() for i in range(1797)]
    test = sorted(sorted(range(1797), key=keys.__getitem__)[: 1797 // 5])
    idx = test if split == "test" else sorted(set(range(1797)) - set(test))
    labels = np.asarray(bunch.target, dtype=np.int64)[idx]
    return Split("digits", split, pixels[idx], labels, [str(c) for c in range(10)], (0.3053,))


def load_cifar100_split(split: str) -> Split:
    folder = DATA_DIR / "cifar-100-python"
    with open(folder / split, "rb") as f:
        d = pickle.load(f, encoding="latin1")
    with open(folder / "meta", "rb") as f:
        classes = pickle.load(f, encoding="latin1")["fine_label_names"]
    pixels = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    labels = np.asarray(d["fine_labels"], dtype=np.int64)
    return Split("cifar100", split, pixels, labels, classes, (0.5071, 0.4865, 0.4409))


# --- §5.3 recipes ---------------------------------------------------------------------------------


class GlobalRng:
    """Seed Python's, NumPy's (mod 2**32) and torch's CPU global RNGs; restore them on exit."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self) -> None:
        self.saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        random.seed(self.seed)
        np.random.seed(self.seed % 2**32)
        torch.default_generator.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        random.setstate(self.saved[0])
        np.random.set_state(self.saved[1])
        torch.set_rng_state(self.saved[2])


def view_none(img: torch.Tensor, size: int, crop_pct: float) -> torch.Tensor:
    import torchvision.transforms.v2.functional as tvf

    r = round(size / crop_pct)
    if min(img.shape[-2:]) != r:
        img = tvf.resize(img, [r], antialias=True)
    if tuple(img.shape[-2:]) != (size, size):
        img = tvf.center_crop(img, [size, size])
    return img


def view_cifar(img: torch.Tensor, size: int, padding: int, seed: int) -> torch.Tensor:
    # The page: torchvision's RandomCrop(S, padding=P) + RandomHorizontalFlip, global RNG seeded.
    import torchvision.transforms as T

    with GlobalRng(seed):
        out = T.RandomHorizontalFlip(0.5)(T.RandomCrop(size, padding=padding)(img))
    return out


def view_cifar_exhaustive(img: np.ndarray, size: int, padding: int, v: int) -> np.ndarray:
    positions = 2 * padding + 1
    dy, dx, flip = v // 2 // positions, v // 2 % positions, v % 2
    canvas = np.pad(img, ((0, 0), (padding, padding), (padding, padding)))
    out = canvas[:, dy : dy + size, dx : dx + size]
    return out[:, :, ::-1] if flip else out


def view_imagenet(img: torch.Tensor, size: int, scale, ratio, seed: int) -> torch.Tensor:  # noqa: ANN001
    import torchvision.transforms as T
    import torchvision.transforms.v2.functional as tvf

    with GlobalRng(seed):
        top, left, h, w = T.RandomResizedCrop.get_params(img, scale=list(scale), ratio=list(ratio))
        flip = bool(torch.rand(1) < 0.5)
    out = tvf.resized_crop(img, top, left, h, w, [size, size], antialias=True)
    return out.flip(-1) if flip else out


@functools.cache
def timm_randaugment(config: str, size: int, fill: tuple[int, ...]):  # noqa: ANN201
    """timm's transform with the page's hparams (built once: construction draws nothing)."""
    from PIL import Image
    from timm.data.auto_augment import rand_augment_transform

    hparams = {
        "translate_const": int(0.45 * size),
        "img_mean": fill[0] if len(fill) == 1 else fill,
        "interpolation": Image.Resampling.BILINEAR,
    }
    return rand_augment_transform(config, hparams)


def view_randaugment(img: torch.Tensor, data: Split, params: dict, seed: int) -> np.ndarray:
    from PIL import Image

    size = data.pixels.shape[-1]
    if params["base"] == "cifar":
        base = view_cifar(img, size, 4, seed)
    else:
        base = view_imagenet(img, size, (0.08, 1.0), (3 / 4, 4 / 3), seed)
    fill = tuple(min(255, round(255 * m)) for m in data.mean)
    hwc = base.permute(1, 2, 0).numpy()
    pil = Image.fromarray(hwc[..., 0] if hwc.shape[-1] == 1 else hwc)
    with GlobalRng(seed):
        pil = timm_randaugment(params["config"], size, fill)(pil)
    out = np.asarray(pil)
    return (out[..., None] if out.ndim == 2 else out).transpose(2, 0, 1)


# --- §5.3.1 mixed recipes -------------------------------------------------------------------------

MIX_KEYS = ("mixup_alpha", "cutmix_alpha", "switch_prob", "mix_prob")


def mix_draws(aug: dict, n: int, size: int, v: int, i: int) -> tuple[int, str, float, tuple]:
    """(partner, kind, lambda as float32, box) of (v, i), from the page's rules."""
    digest = hashlib.sha256(b"kdcache-mix-v1" + le64(aug["seed"]) + le64(v) + le64(i)).digest()
    seed = int.from_bytes(digest[:8], "little") & (2**63 - 1)
    rs = np.random.RandomState(np.array([seed & 0xFFFFFFFF, seed >> 32], dtype=np.uint32))
    suffix, p = aug["recipe"].split("+")[1], aug["params"]
    j = int(rs.randint(0, n))
    if not rs.random_sample() < p["mix_prob"]:
        return i, "none", np.float32(1.0), ()
    switch = suffix == "mixup-cutmix" and rs.random_sample() < p["switch_prob"]
    cutmix = suffix == "cutmix" or switch
    a = p["cutmix_alpha"] if cutmix else p["mixup_alpha"]
    lam = float(rs.beta(a, a))
    if not cutmix:
        return j, "mixup", np.float32(lam), ()
    cut = int(size * np.sqrt(1 - lam))
    cy, cx = int(rs.randint(0, size)), int(rs.randint(0, size))
    y0, y1 = np.clip([cy - cut // 2, cy + (cut + 1) // 2], 0, size)
    x0, x1 = np.clip([cx - cut // 2, cx + (cut + 1) // 2], 0, size)
    return j, "cutmix", np.float32(1 - (y1 - y0) * (x1 - x0) / float(size * size)), (y0, y1, x0, x1)


def regenerate(data: Split, aug: dict, v: int, i: int) -> np.ndarray:
    """The uint8 view [C, S, S] of sample i in view v, from the page's rules."""
    if "+" in aug["recipe"]:
        base_params = {k: x for k, x in aug["params"].items() if k not in MIX_KEYS}
        base_aug = {**aug, "recipe": aug["recipe"].split("+")[0], "params": base_params}
        x_i = regenerate(data, base_aug, v, i)
        j, kind, lam, box = mix_draws(aug, len(data.labels), data.pixels.shape[-1], v, i)
        if kind == "none" or j == i:
            return x_i
        x_j = regenerate(data, base_aug, v, j)
        if kind == "cutmix":
            y0, y1, x0, x1 = box
            out = x_i.copy()
            out[:, y0:y1, x0:x1] = x_j[:, y0:y1, x0:x1]
            return out
        blend = x_i.astype(np.float32) * lam + x_j.astype(np.float32) * (np.float32(1) - lam)
        return np.clip(np.rint(blend), 0, 255).astype(np.uint8)
    recipe, params, size = aug["recipe"], aug["params"], data.pixels.shape[-1]
    img = torch.from_numpy(data.pixels[i].copy())
    seed = sample_seed(aug["seed"], v, i)
    if recipe == "none":
        out = view_none(img, size, params["crop_pct"])
    elif recipe == "cifar" and params["exhaustive"]:
        return view_cifar_exhaustive(data.pixels[i], size, params["padding"], v)
    elif recipe == "cifar":
        out = view_cifar(img, size, params["padding"], seed)
    elif recipe == "imagenet":
        out = view_imagenet(img, size, params["scale"], params["ratio"], seed)
    elif recipe == "randaugment":
        return view_randaugment(img, data, params, seed)
    else:
        raise AssertionError(f"the page defines no recipe {recipe!r}")
    return out.numpy()


# --- §4.1 canonical JSON, written from the page's rules (not with json.dumps) --------------------


def canonical_float(x: float) -> str:
    assert x == x and abs(x) != float("inf"), "NaN and infinities are not allowed"
    sign = "-" if math.copysign(1.0, x) < 0 else ""  # the sign bit: -0.0 too
    if x == 0:
        digits, e = "0", 0
    else:
        for p in range(1, 18):  # the shortest %.{p-1}e that round-trips
            text = f"{abs(x):.{p - 1}e}"
            if float(text) == abs(x):
                break
        mantissa, exp = text.split("e")
        digits, e = mantissa.replace(".", "").rstrip("0") or "0", int(exp)
    if -4 <= e < 16:
        if e < 0:
            body = "0." + "0" * (-e - 1) + digits
        else:
            whole = (digits + "0" * (e + 1))[: e + 1]
            frac = digits[e + 1 :]
            body = whole + "." + (frac or "0")
    else:
        body = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        body += "e" + ("-" if e < 0 else "+") + f"{abs(e):02d}"
    return sign + body


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}  # fmt: skip


def canonical_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            units = ch.encode("utf-16-be")  # one unit, or a surrogate pair above U+FFFF
            out += [f"\\u{int.from_bytes(units[k : k + 2], 'big'):04x}"
                    for k in range(0, len(units), 2)]  # fmt: skip
    return '"' + "".join(out) + '"'


def canonical(value: object) -> str:
    if value is True or value is False:
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return canonical_float(value)
    if isinstance(value, str):
        return canonical_string(value)
    if isinstance(value, list):
        return "[" + ",".join(canonical(v) for v in value) + "]"
    assert isinstance(value, dict)
    members = sorted(value.items())  # str order is code point order
    return "{" + ",".join(canonical_string(k) + ":" + canonical(v) for k, v in members) + "}"


def fingerprint(attrs: dict) -> str:
    identity = {k: attrs[k] for k in ("teacher", "dataset", "augmentation", "storage")}
    return hashlib.sha256(canonical(identity).encode("ascii")).hexdigest()


def _code_cells(block: str) -> list[list[str]]:
    """The backquoted cells of a vectors table's rows."""
    return [re.findall(r"`([^`]*)`", row) for row in block.splitlines()
            if row.startswith("| `")]  # fmt: skip


def test_canonical_json_reproduces_the_published_texts() -> None:
    rows = _code_cells(doc_block(DOC.read_text(), "json"))
    floats = [r for r in rows if r[0].startswith(("0x", "-0x"))]
    others = [r for r in rows if not r[0].startswith(("0x", "-0x"))]
    assert len(floats) >= 12 and len(others) >= 5
    for hex_bits, text in floats:
        assert canonical(float.fromhex(hex_bits)) == text, hex_bits
    for literal, text in others:
        value = ast.literal_eval(literal)
        assert canonical(value) == text, literal
        assert canonical(json.loads(text)) == text  # parsing keeps int / float apart


def test_the_published_identity_hashes_to_its_fingerprint() -> None:
    lines = doc_block(DOC.read_text(), "fingerprint").splitlines()
    text = next(line for line in lines if line.startswith("identity ")).split(" ", 1)[1]
    digest = next(line for line in lines if line.startswith("sha256 ")).split()[1]
    identity = json.loads(text)
    assert canonical(identity) == text  # the stored form is the canonical form
    assert hashlib.sha256(text.encode("ascii")).hexdigest() == digest
    assert any(isinstance(t, float) for t in identity["storage"]["temperatures"])
    assert identity["dataset"]["fingerprint"] == load_digits_split("train").fingerprint()


# --- §3.1 block digests, from the page's formula ----------------------------------------------

# §3.1's record order per storage mode (the mixed arrays appended in a mixed recipe's cache).
DIGEST_ORDER = {
    "dense": ["logits", "input_hash", "block_top1_correct", "block_top5_correct"],
    "sparse": ["topk_values", "topk_indices", "logsumexp_t", "tail_logsumexp_t", "label_logit",
               "logit_mean", "logit_std", "input_hash", "block_top1_correct",
               "block_top5_correct"],
}  # fmt: skip


def block_digest(name: str, v: int, b: int, start: int, stop: int, values: np.ndarray) -> bytes:
    prefix = b"kdcache-block-v1\x00" + name.encode("ascii") + b"\x00"
    prefix += b"".join(x.to_bytes(8, "little", signed=False) for x in (v, b, start, stop))
    data = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes()
    return hashlib.sha256(prefix + data).digest()


def test_block_digests_reproduce_the_published_vectors() -> None:
    block = doc_block(DOC.read_text(), "digests")
    rows = [r for r in block.splitlines() if r.startswith("| `")]
    assert len(rows) >= 6
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        name, dtype, values, digest = cells[0].strip("`"), cells[1], cells[2].strip("`"), cells[3]
        array = np.array(ast.literal_eval(values), dtype=dtype)
        assert block_digest(name, 1, 2, 8, 12, array).hex() == digest.strip("`"), name
    header = re.search(r"in hex: `([0-9a-f]+)`", block).group(1)  # type: ignore[union-attr]
    expected = b"kdcache-block-v1\x00logits\x00" + bytes.fromhex(
        "0100000000000000020000000000000008000000000000000c00000000000000"
    )
    assert bytes.fromhex(header) == expected


def check_block_digests(group: zarr.Group, attrs: dict) -> None:
    """§3.1 on a whole cache: every marked block's record, recomputed from the decoded values."""
    storage, aug = attrs["storage"], attrs["augmentation"]
    names = DIGEST_ORDER[storage["mode"]] + (["mix_partner", "mix_lambda"]
                                             if "+" in aug["recipe"] else [])  # fmt: skip
    n, rows_per = attrs["dataset"]["num_samples"], storage["chunk_rows"]
    records = np.asarray(group["block_digest"][:])  # [V, nb, A, 32]
    assert records.shape[2:] == (len(names), 32)
    arrays = {name: np.asarray(group[name][:]) for name in names}
    for v in range(aug["num_views"]):
        for b in range(records.shape[1]):
            start, stop = b * rows_per, min((b + 1) * rows_per, n)
            for slot, name in enumerate(names):
                per_block = name.startswith("block_")
                values = arrays[name][v, b] if per_block else arrays[name][v, start:stop]
                got = block_digest(name, v, b, start, stop, np.asarray(values))
                assert got == records[v, b, slot].tobytes(), (name, v, b)


# --- §2.1 sparse rows, from the page's rules ---------------------------------------------------


def sparse_row(z32: np.ndarray, label: int, k: int, temps: list[float]) -> dict[str, list[float]]:
    order = sorted(range(len(z32)), key=lambda c: (-float(z32[c]), c))  # stable, ties: lower first
    kept = order[:k]
    z = [float(x) for x in z32]

    def lse(values: list[float]) -> float:
        if not values:
            return float("-inf")
        m = max(values)
        return m + math.log(math.fsum(math.exp(x - m) for x in values))

    mean = math.fsum(z) / len(z)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in z) / (len(z) - 1)) if len(z) > 1 else 0.0
    f32 = lambda xs: [float(np.float32(x)) for x in xs]  # noqa: E731  rounded once to float32
    return {
        "topk_indices": kept,
        "topk_values": f32([z[c] for c in kept]),
        "logsumexp_t": f32([lse([x / t for x in z]) for t in temps]),
        "tail_logsumexp_t": f32(
            [lse([z[c] / t for c in range(len(z)) if c not in kept]) for t in temps]
        ),  # fmt: skip
        "label_logit": f32([z[label]]),
        "logit_mean": f32([mean]),
        "logit_std": f32([std]),
        "hits": [int(order[0] == label), int(label in order[: min(5, len(z))])],
    }


def test_sparse_rows_reproduce_the_published_vectors() -> None:
    text = doc_block(DOC.read_text(), "sparse")
    rows = re.split(r"^row \d+: ", text, flags=re.M)[1:]
    assert len(rows) == 2
    for row in rows:
        head, *fields = row.strip("`\n").splitlines()
        z = np.array(ast.literal_eval(head.split(" = ")[1].split(" (float32)")[0]), np.float32)
        label = int(head.rsplit("label ", 1)[1])
        expected = sparse_row(z, label, 3, [1.0, 4.0])
        for line in fields:
            name, _, rest = line.strip().partition(" ")
            if name == "top-1":
                hits = [int(x) for x in re.findall(r"hit (\d)", line)]
                assert hits == expected["hits"], line
                continue
            values = ast.literal_eval(rest.strip().split("   ")[0])
            values = list(values) if isinstance(values, tuple) else [values]
            assert values == expected[name], (name, values, expected[name])


# --- §5.2 imagefolder and §5.3 `none` with a resize, from the page's rules --------------------

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def netpbm(channels: int, w: int, h: int) -> bytes:
    pixels = bytes((37 * c + 11 * y + 5 * x) % 256
                   for y in range(h) for x in range(w) for c in range(channels))  # fmt: skip
    return (b"P6" if channels == 3 else b"P5") + f"\n{w} {h}\n255\n".encode() + pixels


def scan_imagefolder(root: Path, split: str) -> tuple[str, list[str], list[tuple[str, int, int]]]:
    """(recorded split, classes, [(relative path, size, label)]) by the page's rules."""
    folder = root / split
    if split == "test" and not folder.is_dir() and (root / "val").is_dir():
        split, folder = "val", root / "val"
    class_root = root / "train" if (root / "train").is_dir() else folder
    classes = sorted(p.name for p in class_root.iterdir() if p.is_dir() and p.name[0] != ".")
    samples = []
    for label, name in enumerate(classes):
        for dirpath, _, files in os.walk(folder / name, followlinks=True):
            for file in files:
                path = Path(dirpath) / file
                if os.path.splitext(file)[1].lower() in IMAGE_EXTENSIONS and path.is_file():
                    relative = path.relative_to(folder).as_posix()
                    samples.append((relative, path.stat().st_size, label))
    return split, classes, sorted(samples)


def test_imagefolder_and_none_with_a_resize_reproduce_the_published_vectors(tmp_path) -> None:
    from PIL import Image

    tree = {"train/cat/a.ppm": netpbm(3, 5, 4), "train/cat/B.PPM": netpbm(3, 10, 12),
            "train/cat/sub/c.pgm": netpbm(1, 7, 6), "train/cat/.x/d.ppm": netpbm(3, 3, 3),
            "train/cat/notes.txt": b"not an image", "train/cat.ppm": netpbm(3, 2, 2),
            "train/.git/e.ppm": netpbm(3, 2, 2), "train/dog/f.ppm": netpbm(3, 9, 9),
            "train/empty/README": b"", "val/dog/g.ppm": netpbm(3, 8, 8)}  # fmt: skip
    for rel, data in tree.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    text = doc_block(DOC.read_text(), "imagefolder")
    published = re.split(r"^imagefolder ", text, flags=re.M)[1:]
    assert len(published) == 2
    for split, section in zip(("train", "test"), published, strict=True):
        recorded, classes, samples = scan_imagefolder(tmp_path, split)
        lines = section.splitlines()
        assert lines[0] == f"{recorded}:"
        header = {"classes": classes, "identity": "files", "n": len(samples),
                  "name": "imagefolder", "split": recorded}  # fmt: skip
        h = hashlib.sha256(b"kdcache-dataset-v1\n" + canonical(header).encode("ascii") + b"\n")
        h.update(np.array([s[2] for s in samples], dtype="<i8").tobytes())
        for path, size, _ in samples:
            h.update(f"{path}\t{size}\n".encode())
        assert lines[1].split(None, 1)[1] == canonical(header)
        assert lines[2].split()[1] == h.hexdigest()
        rows = [line for line in lines if line.strip().startswith("sample ")]
        assert len(rows) == len(samples)
        for (path, size, label), line in zip(samples, rows, strict=True):
            with Image.open(tmp_path / recorded / path) as img:
                image = torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)
            view = view_none(image, 8, 0.875).numpy()
            assert view.shape == (3, 8, 8)
            expected = (f"{path}\t{size}  label {label}  [C,H,W]={list(image.shape)}  "
                        f"none-view input_hash {input_hash(view)}")  # fmt: skip
            assert line.split(": ", 1)[1] == expected


# --- making and checking caches -------------------------------------------------------------------

RECIPES = [
    ("none", []),
    ("cifar", []),
    # Views 0..5: dx 0..2 with and without the flip (the vectors cover dy > 0 and view 161).
    ("cifar-exhaustive", ["--recipe", "cifar", "--exhaustive", "--views", "6"]),
    ("imagenet", []),
    ("randaugment", []),
    ("cifar+mixup-cutmix", []),
]


TINY_TEACHER = """
import torch.nn as nn


def build(num_classes, in_chans=3, **kwargs):
    pool = nn.AdaptiveAvgPool2d(4)
    return nn.Sequential(pool, nn.Flatten(), nn.Linear(in_chans * 16, num_classes))
"""


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, Path]]:
    """A tiny linear teacher (the views, not the logits, are under test) per dataset."""
    folder = tmp_path_factory.mktemp("teacher")
    (folder / "tiny.py").write_text(TINY_TEACHER)
    spec = f"{folder / 'tiny.py'}:build"
    out = {}
    for name, classes, chans in (("digits", 10, 1), ("cifar100", 100, 3)):
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(chans * 16, classes)
        )
        torch.save(model.state_dict(), folder / f"{name}.pth")
        out[name] = (spec, folder / f"{name}.pth")
    return out


def extract(
    out: Path, teacher: tuple[str, Path], dataset: list[str], recipe: str, extra: list[str]
) -> Path:
    from kdcache.cli import main

    dtype = [] if "--topk" in extra else ["--dtype", "float32"]  # sparse: always float32
    args = [
        "extract", "--teacher", teacher[0], "--weights", str(teacher[1]), *dataset,
        "--recipe", recipe, "--views", "2", "--seed", "11", *dtype,
        "--chunk-rows", "4096", "--batch-size", "512", "--workers", "0", "--no-progress",
        *extra, "--out", str(out),
    ]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out


def check_cache(root: Path, data: Split, rows: np.ndarray) -> dict:
    """Check a cache against the reader; returns its attributes."""
    group = zarr.open_group(str(root), mode="r")
    attrs = group.attrs["kdcache"]
    ds, aug = attrs["dataset"], attrs["augmentation"]
    assert (ds["name"], ds["split"], ds["num_samples"]) == (data.name, data.split, len(data.labels))
    assert ds["fingerprint"] == data.fingerprint()
    assert attrs["fingerprint"] == fingerprint(attrs)  # §4.1, with the page's serialiser
    assert np.array_equal(group["labels"][:], data.labels)
    assert attrs["labels_sha256"] == hashlib.sha256(data.labels.astype("<i8").tobytes()).hexdigest()
    check_block_digests(group, attrs)
    assert attrs["complete"] and np.asarray(group["block_done"][:]).all()
    hashes = np.asarray(group["input_hash"][:])  # [V, N]
    for v in range(aug["num_views"]):
        expected = [input_hash(regenerate(data, aug, v, int(i))) for i in rows]
        mismatched = [int(i) for i, e in zip(rows, expected, strict=True) if hashes[v, i] != e]
        assert not mismatched, f"{aug['recipe']} view {v}: samples {mismatched[:10]} differ"
        if "+" in aug["recipe"]:  # §5.3.1: the stored partner and lambda
            n, size = len(data.labels), data.pixels.shape[-1]
            draws = [mix_draws(aug, n, size, v, int(i)) for i in rows]
            assert np.array_equal(np.asarray(group["mix_partner"][v])[rows], [d[0] for d in draws])
            assert np.array_equal(np.asarray(group["mix_lambda"][v])[rows], [d[2] for d in draws])
    return attrs


def check_dense_against_sparse(dense: Path, sparse: Path) -> None:
    """§2: top-K of the float32 logits (ties by lower index), log-sum-exp, the same hit counts."""
    d, s = zarr.open_group(str(dense), mode="r"), zarr.open_group(str(sparse), mode="r")
    logits = np.asarray(d["logits"][:])  # [V, N, C] float32
    k = s.attrs["kdcache"]["storage"]["topk"]
    order = np.argsort(-logits, axis=-1, kind="stable")[..., :k]
    assert np.array_equal(np.asarray(s["topk_indices"][:]), order)
    assert np.array_equal(np.asarray(s["topk_values"][:]), np.take_along_axis(logits, order, -1))
    z = logits.astype(np.float64)
    kept = np.zeros(z.shape, dtype=bool)
    np.put_along_axis(kept, order, True, axis=-1)
    temps = s.attrs["kdcache"]["storage"]["temperatures"]  # §2.1: one column per temperature
    for col, t in enumerate(temps):
        lse = np.log(np.exp(z / t).sum(-1))
        tail = np.log(np.where(kept, 0.0, np.exp(z / t)).sum(-1))
        np.testing.assert_allclose(np.asarray(s["logsumexp_t"][..., col]), lse, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(s["tail_logsumexp_t"][..., col]), tail, rtol=1e-6)
    labels_z = np.take_along_axis(logits, np.asarray(d["labels"][:])[None, :, None], -1)[..., 0]
    assert np.array_equal(np.asarray(s["label_logit"][:]), labels_z)
    np.testing.assert_allclose(np.asarray(s["logit_std"][:]), z.std(-1, ddof=1), rtol=1e-6)
    for name in ("block_top1_correct", "block_top5_correct"):
        assert np.array_equal(np.asarray(d[name][:]), np.asarray(s[name][:]))
    labels = np.asarray(d["labels"][:])
    top1 = (order[..., 0] == labels).sum(-1)  # [V]
    assert np.array_equal(np.asarray(d["block_top1_correct"][:]).sum(-1), top1)
    n = len(labels)
    assert d.attrs["kdcache"]["teacher_top1"] == [round(100 * float(t) / n, 4) for t in top1]


def test_reader_reproduces_the_published_vectors() -> None:
    # The page's own vectors (§5.6) from the page's own rules: the digits rows.
    data = load_digits_split("train")
    assert data.fingerprint() in doc_block(DOC.read_text(), "digits")
    table = [r for r in doc_block(DOC.read_text(), "digits").splitlines() if r.startswith("| ")]
    checked = 0
    for row in table[2:]:
        recipe, seed, view, index, s, _drawn, expected = (
            c.strip() for c in row.strip("|").split("|")
        )
        seed, view, index = int(seed), int(view), int(index)
        assert sample_seed(seed, view, index) == int(s)
        exhaustive = recipe.endswith("--exhaustive")
        name = recipe.split()[0]
        params = {
            "none": {"crop_pct": 1.0},
            "cifar": {"padding": 4, "exhaustive": exhaustive},
            "imagenet": {"scale": [0.08, 1.0], "ratio": [3 / 4, 4 / 3]},
            "randaugment": {"config": "rand-m9-mstd0.5", "base": "cifar"},
        }[name.split("+")[0]]
        if "+" in name:  # §5.3.1 defaults
            params = {**params, "mixup_alpha": 0.8, "cutmix_alpha": 1.0, "switch_prob": 0.5,
                      "mix_prob": 1.0}  # fmt: skip
        aug = {"recipe": name, "params": params, "seed": seed}
        assert input_hash(regenerate(data, aug, view, index)) == int(expected), row
        checked += 1
    assert checked >= 32


@pytest.mark.parametrize(("label", "extra"), RECIPES, ids=[r[0] for r in RECIPES])
def test_digits_caches_conform(tmp_path, teachers, label, extra) -> None:
    data = load_digits_split("test")
    dataset = ["--dataset", "digits", "--split", "test"]
    recipe = extra[1] if extra else label
    rest = extra[2:] if extra else []
    dense = extract(tmp_path / "dense", teachers["digits"], dataset, recipe, rest)
    sparse = extract(
        tmp_path / "sparse", teachers["digits"], dataset, recipe, [*rest, "--topk", "3"]
    )
    rows = np.arange(len(data.labels))
    attrs = check_cache(dense, data, rows)
    assert check_cache(sparse, data, rows)["augmentation"] == attrs["augmentation"]
    check_dense_against_sparse(dense, sparse)


@pytest.mark.slow
@pytest.mark.realdata
def test_cifar100_caches_conform(tmp_path, teachers) -> None:
    require_shared_data()
    data = load_cifar100_split("test")
    dataset = ["--dataset", "cifar100", "--data-dir", str(DATA_DIR), "--split", "test"]
    rows = np.random.default_rng(0).choice(len(data.labels), 150, replace=False)
    for k, (label, extra) in enumerate(RECIPES):
        recipe = extra[1] if extra else label
        rest = extra[2:] if extra else []
        mode = ["--topk", "5"] if k % 2 else []  # every recipe, both modes across the set
        out = extract(tmp_path / label, teachers["cifar100"], dataset, recipe, [*rest, *mode])
        check_cache(out, data, rows)
