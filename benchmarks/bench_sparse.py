"""Sparse (top-K) caches: bytes per view, the kept-mass bound, and each loss's error against dense.

    python benchmarks/bench_sparse.py [--data-dir ../shared/data] [--write-docs]

1. The real ResNet-56 teacher's float32 logits on two seeded ``cifar`` views of the CIFAR-100 test
   split (10,000 images each), computed once.
2. Bytes per sample per view: the same logits written through the cache store in each mode
   (measured, zstd + crc32c as stored) for C = 100; for C = 1000 the raw layout size (no real
   1000-class teacher here), next to dense float16 and TinyViT's 4 + 4K bytes (float16 value +
   int16 index per kept class).
3. The kept-mass bound: the largest ``sum_kept p - 1`` over all rows at each stored temperature
   (format 1.2 stores float32 values and normalisers).
4. Loss error, sparse against dense, at K = 5, 10, 20, 50: the teacher is view 0; the "student" is
   the same teacher's logits on view 1 (a correlated stand-in for a trained student: no trained
   CIFAR-100 student is available here). `--batches` batches of 256 (default 20), float64; relative
   error of the batch value and of the gradient w.r.t. the student logits, worst and mean over
   batches. KD is exact given the cache (K kept classes + one tail bucket); DKD, RLD and LDRLD use
   the uniform-tail completion (``--sparse-approx``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._docs import write_section  # noqa: E402
from kdcache.augment import create_recipe  # noqa: E402
from kdcache.cache import schema  # noqa: E402
from kdcache.cache.sparse import SparseRows, sparse_rows_from_logits  # noqa: E402
from kdcache.cache.writer import open_for_writing  # noqa: E402
from kdcache.data import load_dataset, normalize  # noqa: E402
from kdcache.extract import sparse_temperatures  # noqa: E402
from kdcache.losses import build_objective  # noqa: E402
from kdcache.losses.sparse import SparseTeacher  # noqa: E402
from kdcache.models import build_model  # noqa: E402
from kdcache.views import SeededViews  # noqa: E402

WEIGHTS = "teachers/resnet56_cifar100_020118.pth"
KS = (5, 10, 20, 50)
LOSSES = ("kd", "dkd", "rld", "ldrld")


def teacher_logits(data_dir: Path, views: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """float32 logits ``[views, N, 100]`` of the real teacher and the labels ``[N]``."""
    source = load_dataset("cifar100", data_dir, "test")
    recipe = create_recipe("cifar", source.spec)
    model = build_model("resnet56", 100, weights=str(data_dir / WEIGHTS)).eval()
    n = len(source)
    out = np.empty((views, n, 100), np.float32)
    for v in range(views):
        items = np.stack([np.full(n, v, np.int64), np.arange(n)], axis=1)
        seeded = SeededViews(source, recipe, 0, items)
        with torch.inference_mode():
            for k in range(0, n, 500):
                x = torch.stack([seeded[j]["image"] for j in range(k, min(k + 500, n))])
                out[v, k : k + len(x)] = model(normalize(x, source.spec)).float().numpy()
    return out, np.asarray(source.labels, dtype=np.int64)


def stored_bytes_per_row(logits: np.ndarray, labels: np.ndarray, k: int | None) -> float:
    n, c = logits.shape
    storage = (
        schema.StorageInfo("dense", "float16", 1024)
        if k is None
        else schema.StorageInfo(
            "sparse", "float32", 1024, topk=k, temperatures=sparse_temperatures()
        )  # fmt: skip
    )
    ident = schema.CacheIdentity(
        teacher=schema.TeacherInfo("resnet56", None, 0),
        dataset=schema.DatasetInfo("cifar100", "test", n, c, "0" * 64),
        augmentation=schema.AugmentationInfo("cifar", {}, 0, 1),
        storage=storage,
    )
    meta = schema.CacheMeta(identity=ident)
    with tempfile.TemporaryDirectory() as tmp:
        writer = open_for_writing(tmp, meta, labels, create=True)
        for block in range(meta.num_blocks):
            rows = meta.block_rows(block)
            writer.write_block(0, block, logits[rows], np.zeros(rows.stop - rows.start, np.int64),
                               0, 0, labels=labels[rows])  # fmt: skip
        arrays = ("logits",) if k is None else (
            schema.TOPK_VALUES, schema.TOPK_INDICES, schema.LSE_AT_T, schema.TAIL_LSE_AT_T,
            schema.LABEL_LOGIT, schema.LOGIT_MEAN, schema.LOGIT_STD)  # fmt: skip
        total = sum(f.stat().st_size for a in arrays for f in (Path(tmp) / a).rglob("*")
                    if f.is_file() and f.name != "zarr.json")  # fmt: skip
    return total / n


def raw_bytes_per_row(c: int, k: int | None, n_temps: int) -> int:
    if k is None:
        return 2 * c
    index = 2 if c <= 32767 else 4
    return k * (4 + index) + 2 * 4 * n_temps + 3 * 4


def storage_table(logits: np.ndarray, labels: np.ndarray) -> str:
    n_temps = len(sparse_temperatures())
    lines = [
        "| K | C = 100 stored (measured) | C = 100 raw | C = 1000 raw | TinyViT 4 + 4K |",
        "| --- | --- | --- | --- | --- |",
    ]
    for k in (None, 5, 10, 20, 50, 100):
        name = "dense fp16" if k is None else str(k)
        measured = stored_bytes_per_row(logits, labels, k)
        tiny = "" if k is None else str(4 + 4 * k)
        lines.append(
            f"| {name} | {measured:.1f} | {raw_bytes_per_row(100, k, n_temps)} | "
            f"{raw_bytes_per_row(1000, k, n_temps)} | {tiny} |"
        )
    return "\n".join(lines)


def kept_mass_bound(logits: np.ndarray, labels: np.ndarray) -> str:
    temps = sparse_temperatures()
    lines = ["| K | " + " | ".join(f"max excess at T = {t:g}" for t in temps) + " |",
             "| --- |" + " --- |" * len(temps)]  # fmt: skip
    for k in KS:
        rows = sparse_rows_from_logits(logits, labels, k, temps)
        cells = [f"{float(np.expm1(rows.kept_log_mass(t)).max()):.2e}" for t in temps]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def loss_errors(teacher: np.ndarray, student: np.ndarray, labels: np.ndarray, batches: int) -> str:
    temps = sparse_temperatures()
    lines = ["| loss | K | value error, mean | value error, worst | gradient error, mean | "
             "gradient error, worst |", "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    y_all = torch.from_numpy(labels)
    for loss in LOSSES:
        dense_obj = build_objective(loss, warmup_epochs=0)
        sparse_obj = build_objective(loss, warmup_epochs=0, sparse_approx=True)
        for k in KS:
            rows = sparse_rows_from_logits(teacher, labels, k, temps)
            value_err, grad_err = [], []
            for start in range(0, batches * 256, 256):
                sel = slice(start, start + 256)
                part = SparseRows(
                    values=rows.values[sel], indices=rows.indices[sel], temperatures=temps,
                    lse=rows.lse[sel], tail_lse=rows.tail_lse[sel],  # type: ignore[index]
                    label_logit=rows.label_logit[sel])  # type: ignore[index]  # fmt: skip
                sparse_t = SparseTeacher.from_rows(part, 100)
                s = torch.from_numpy(student[sel]).double().requires_grad_(True)
                t = torch.from_numpy(teacher[sel]).double()
                y = y_all[sel]
                dense = dense_obj.loss(s, t, y)  # type: ignore[misc]
                (g_dense,) = torch.autograd.grad(dense, s)
                _, parts = sparse_obj(s, sparse_t, y, epoch=1.0)
                approx = float(parts["distill"]) / sparse_obj.distill_weight
                s2 = s.detach().requires_grad_(True)
                total, _ = sparse_obj(s2, sparse_t, y, epoch=1.0)
                ce_only = torch.nn.functional.cross_entropy(s2, y) * sparse_obj.ce_weight
                (g_sparse,) = torch.autograd.grad((total - ce_only) / sparse_obj.distill_weight, s2)
                want = float(dense.detach())
                value_err.append(abs(approx - want) / max(abs(want), 1e-30))
                grad_err.append(_rel(g_sparse, g_dense))
            lines.append(
                f"| {loss}{' (exact)' if loss == 'kd' else ' (approx.)'} | {k} | "
                f"{np.mean(value_err):.2%} | {np.max(value_err):.2%} | "
                f"{np.mean(grad_err):.2%} | {np.max(grad_err):.2%} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--batches", type=int, default=20, help="Batches of 256 for the errors.")
    args = parser.parse_args()
    torch.set_num_threads(2)
    saved = REPO / "bench_out" / "sparse_teacher_logits.npz"  # gitignored; reused by re-runs
    if saved.exists():
        with np.load(saved) as f:
            logits, labels = f["logits"], f["labels"]
    else:
        logits, labels = teacher_logits(args.data_dir)
        saved.parent.mkdir(exist_ok=True)
        np.savez(saved, logits=logits, labels=labels)
    teacher, student = logits[0], logits[1]
    outside = ~(np.argsort(-teacher, 1, kind="stable")[:, :10] == labels[:, None]).any(1)
    storage = storage_table(teacher, labels)
    bound = kept_mass_bound(teacher, labels)
    errors = loss_errors(teacher, student, labels, args.batches)
    cmd = "`python benchmarks/bench_sparse.py --write-docs`"
    intro = (
        f"{cmd}: the real ResNet-56's logits on a seeded `cifar` view of the CIFAR-100 test split "
        f"(N = 10,000; the true label is outside the teacher's top-10 in {outside.mean():.1%} of "
        "rows)."
    )
    storage_text = (
        f"{intro}\n\nBytes per sample per view. Sparse rows (format 1.2): float32 values, int16 "
        f"indices (int32 above 32,767 classes), and float32 log-sum-exp and tail log-sum-exp at "
        f"T = {', '.join(f'{t:g}' for t in sparse_temperatures())}, label logit, row mean and "
        'std. "Stored" is on disk after zstd + crc32c.\n\n' + storage
    )
    bound_text = (
        f"{intro}\n\nLargest excess of the kept probabilities' sum over 1, over all rows "
        "(`verify` flags a row above 1e-5):\n\n" + bound
    )
    error_text = (
        f"{intro} The student stand-in is the teacher's logits on a second seeded view. "
        "Relative error of the distillation term (value) and of its gradient w.r.t. the student "
        f"logits, sparse against dense, over {args.batches} batches of 256 (float64):\n\n" + errors
    )
    print(storage_text, bound_text, error_text, sep="\n\n")
    if args.write_docs:
        write_section(
            REPO / "docs" / "benchmarks.md", "Sparse caches: bytes per view", storage_text
        )
        write_section(REPO / "docs" / "benchmarks.md", "Sparse caches: kept-mass bound", bound_text)
        write_section(REPO / "docs" / "losses.md", "Sparse caches: measured error", error_text,
                      header="")  # fmt: skip


if __name__ == "__main__":
    main()
