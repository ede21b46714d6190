"""``kdcache verify``: prove a cache is complete, intact, and replays on this machine.

Checks, in order (each yields a :class:`Check`; one failing does not stop the others):

1. ``metadata``: the self-description parses, the format version is readable, the fingerprint
   matches the identity fields (done by :func:`open_cache`).
2. ``complete``: every (view, block) is marked in the completeness record.
3. ``chunks``: every chunk of every marked block decodes (crc32c), is present, holds only finite
   values and, from format 1.2 on, hashes to the digest recorded for its (array, view, block); in
   a sparse cache, each row's kept probabilities sum to at most 1 (within the stored precision) at
   every recorded temperature.
4. ``figures``: the teacher top-1 / top-5 in the attributes equal the per-block hit counts.
   ``labels``: the labels array hashes to its recorded ``labels_sha256`` (format 1.3); an older
   cache's labels are reported unchecked unless the data is given (then compared with it).
5. ``dataset``: the local data's fingerprint equals the cache's (needs the data; without
   ``data_dir``, for a dataset that needs one, 5-7 are reported as skipped, which is not a failure).
6. ``replay``: a sample of (view, index) pairs regenerated here hashes to the recorded input hash.
7. ``teacher`` (optional): the teacher re-run on the sample gives the cached logits.

A remote cache is verified at its origin: its objects are read from the store, never from the
local chunk copies (which are a cache of the origin, not a witness of it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch

from kdcache.cache.location import CacheLocation, parse_location
from kdcache.cache.reader import CacheReader, open_cache
from kdcache.cache.scan import bad_blocks_detail, block_problems, figure_problems
from kdcache.cache.sparse import KEPT_MASS_TOLERANCE
from kdcache.data import SourceDataset
from kdcache.errors import ConfigError, KdcacheError
from kdcache.seeding import derived_seed
from kdcache.views import SeededViews

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    skipped: bool = False  # could not run with the inputs given (ok stays True)


@dataclass
class VerifyReport:
    location: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def skipped(self) -> list[str]:
        return [c.name for c in self.checks if c.skipped]

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))

    def skip(self, name: str, detail: str) -> None:
        self.checks.append(Check(name, True, detail, skipped=True))


def replay_sample(reader: CacheReader, count: int, salt: int = 0) -> np.ndarray:
    """A deterministic sample of ``count`` (view, index) pairs, int64 [M, 2]."""
    ident = reader.identity
    V, N = ident.augmentation.num_views, ident.dataset.num_samples
    total = V * N
    rng = np.random.default_rng(derived_seed(ident.augmentation.seed, salt, 0x7E51F7))
    flat = rng.choice(total, size=min(count, total), replace=False)
    return np.stack([flat // N, flat % N], axis=1).astype(np.int64)


def _check_chunks(reader: CacheReader, report: VerifyReport) -> None:
    """Read every chunk of every marked block; the reader checks presence, finiteness, digest."""
    ident = reader.identity
    bad = block_problems(reader)
    detail = (
        f"{int(reader.done_mask().sum())} blocks decode with valid checksums and finite values; "
        f"{reader.integrity_note()}"
    )
    if ident.storage.exact_sparse:  # what the kept-mass check proved, in the OK line
        temps = ", ".join(f"{t:g}" for t in ident.storage.temperatures or ())
        detail += (
            f"; every row's kept top-{ident.storage.topk} mass is at most 1 + "
            f"{KEPT_MASS_TOLERANCE:g} at T = {temps} (normalisers consistent with the kept values)"
        )
    report.add("chunks", not bad, detail if not bad else bad_blocks_detail(bad))


def _check_figures(reader: CacheReader, report: VerifyReport) -> None:
    """The derived figures of the self-description against the per-block counts."""
    if reader.meta.teacher_top1 is None:
        return  # incomplete: no figures recorded yet
    try:
        problems = figure_problems(reader)
    except KdcacheError as exc:
        report.add("figures", False, str(exc))
        return
    report.add(
        "figures",
        not problems,
        "teacher top-1/top-5 in the metadata equal the per-block hit counts"
        if not problems
        else "the metadata was edited: " + "; ".join(problems),
    )


def verify_cache(
    location: str | os.PathLike[str] | CacheLocation,
    *,
    data_dir: str | None = None,
    replay: int = 64,
    teacher_weights: str | None = None,
) -> VerifyReport:
    """Run every check that the given inputs allow; see the module docstring.

    Raises:
        ConfigError: ``replay`` < 0 (the checks' own failures are reported, never raised).
    """
    if isinstance(replay, bool) or not isinstance(replay, int) or replay < 0:
        raise ConfigError(f"replay must be a number of views >= 0 (0: none), got {replay!r}")
    where = parse_location(location)
    report = VerifyReport(where.raw)
    try:
        # A remote cache is checked at its origin: no local copies (cache_dir "off").
        reader = open_cache(where, cache_dir="off" if where.is_remote else None)
    except KdcacheError as exc:
        report.add("metadata", False, str(exc))
        return report
    report.add(
        "metadata",
        True,
        f"format {reader.meta.format_version}, fingerprint {reader.meta.fingerprint[:16]}",
    )
    try:
        reader.require_complete()
        report.add("complete", True, f"all {reader.done_mask().size} blocks written")
    except KdcacheError as exc:
        report.add("complete", False, str(exc))
    _check_chunks(reader, report)
    _check_figures(reader, report)
    labels = _check_labels(reader, report)
    if replay > 0:
        _check_replay(reader, report, data_dir, replay, teacher_weights, labels)
    elif labels is not None and reader.meta.labels_sha256 is None:
        _unchecked_labels(reader, report)
    return report


def _check_labels(reader: CacheReader, report: VerifyReport) -> np.ndarray | None:
    """The labels array against its recorded digest (format 1.3); returns the labels, or None
    when they are unreadable or wrong (reported). An older cache's labels are returned
    unchecked: only the data can vouch for them (:func:`_check_replay`)."""
    try:
        labels = reader.labels()
    except KdcacheError as exc:
        report.add("labels", False, str(exc))
        return None
    if reader.meta.labels_sha256 is not None:
        report.add("labels", True, f"{len(labels)} labels match their recorded sha256")
    return labels


def _unchecked_labels(reader: CacheReader, report: VerifyReport) -> None:
    report.skip(
        "labels",
        f"unchecked: format {reader.meta.format_version} records no digest of the labels; pass "
        "--data-dir (and --replay > 0) to check them against the data",
    )


def _check_replay(
    reader: CacheReader,
    report: VerifyReport,
    data_dir: str | None,
    count: int,
    teacher_weights: str | None,
    labels: np.ndarray | None,
) -> None:
    from kdcache.augment import create_recipe
    from kdcache.data import load_dataset

    ident = reader.identity
    try:
        source = load_dataset(ident.dataset.name, data_dir, ident.dataset.split)
    except KdcacheError as exc:
        if labels is not None and reader.meta.labels_sha256 is None:
            _unchecked_labels(reader, report)
        if data_dir is None:  # not a fault of the cache: the check was not possible here
            report.skip(
                "replay",
                f"no data to regenerate views from ({exc}); give `data_dir` to prove the views "
                "replay here",
            )
        else:
            report.add("dataset", False, f"cannot load the data to replay: {exc}")
        return
    local = source.fingerprint()
    if local != ident.dataset.fingerprint:
        report.add(
            "dataset",
            False,
            f"local {ident.dataset.name}/{ident.dataset.split} has "
            f"fingerprint {local[:16]}, the cache was made from {ident.dataset.fingerprint[:16]}",
        )
        if labels is not None and reader.meta.labels_sha256 is None:
            _unchecked_labels(reader, report)
        return
    report.add("dataset", True, f"{ident.dataset.name}/{ident.dataset.split} fingerprint matches")
    if labels is not None:  # the data's labels are the ones its fingerprint covers
        same = bool(np.array_equal(labels, source.labels))
        report.add(
            "labels",
            same,
            "the cache's labels equal the data's"
            if same
            else "the cache's labels array differs from the data's labels (edited or damaged)",
        )
    recipe = create_recipe(ident.augmentation.recipe, source.spec, **ident.augmentation.params)
    items = replay_sample(reader, count)
    views = SeededViews(source, recipe, ident.augmentation.seed, items)
    mismatches = []
    unreadable = 0
    for k in range(len(items)):
        view, index = (int(x) for x in items[k])
        block, row = divmod(index, ident.storage.chunk_rows)
        recorded = _readable(reader.read_input_hashes, view, block)
        if recorded is None:
            unreadable += 1  # a missing or damaged block: the complete / chunks checks name it
            continue
        item = views[k]
        if item["input_hash"] != int(recorded[row]) or not _same_mix(reader, item, block, row):
            mismatches.append(f"(view {view}, index {index})")
    if unreadable == len(items):
        report.add("replay", False, "no sampled view lies in a readable block")
    elif mismatches:
        report.add(
            "replay",
            False,
            f"{len(mismatches)} of {len(items)} regenerated images differ from "
            f"what the teacher saw, e.g. {', '.join(mismatches[:3])}. The augmentation does not "
            f"replay here: compare library versions with `kdcache info` "
            f"(cache: {reader.meta.versions})",
        )
    else:
        skipped = f" ({unreadable} in unreadable blocks skipped)" if unreadable else ""
        regenerated = f"{len(items) - unreadable} sampled views regenerate bit-exactly"
        report.add("replay", True, regenerated + skipped)
    if teacher_weights is not None:
        _check_teacher(reader, report, source, views, items, teacher_weights)


def _check_teacher(
    reader: CacheReader,
    report: VerifyReport,
    source: SourceDataset,
    views: SeededViews,
    items: np.ndarray,
    teacher_weights: str,
) -> None:
    from kdcache.models import build_model, weights_sha256
    from kdcache.models.preprocess import recorded_preprocessing

    ident = reader.identity
    sha = weights_sha256(teacher_weights)
    if ident.teacher.weights_sha256 and sha != ident.teacher.weights_sha256:
        report.add(
            "teacher",
            False,
            f"{teacher_weights} (sha256 {sha[:16]}) is not the cache's "
            f"teacher weights ({ident.teacher.weights_sha256[:16]})",
        )
        return
    model = build_model(
        ident.teacher.name,
        ident.dataset.num_classes,
        in_chans=source.spec.in_chans,
        weights=teacher_weights,
        ema=ident.teacher.weights_ema,
    ).eval()
    preprocessing = recorded_preprocessing(ident.teacher.preprocessing, source.spec)
    images = torch.stack([views[k]["image"] for k in range(len(items))])
    with torch.inference_mode():
        live = model(preprocessing(images)).float().numpy()  # [M, C]
    worst = 0.0
    for k, (view, index) in enumerate(items):
        block, row = divmod(int(index), ident.storage.chunk_rows)
        if ident.storage.mode == "dense":
            dense = _readable(reader.read_dense, int(view), block)
            if dense is None:
                continue  # named by the chunks check
            worst = max(worst, float(np.abs(dense[row].astype(np.float32) - live[k]).max()))
        else:
            sparse = _readable(reader.read_sparse, int(view), block)
            if sparse is None:
                continue
            kept = sparse.indices[row].astype(np.int64)
            diff = sparse.values[row].astype(np.float32) - live[k][kept]
            worst = max(worst, float(np.abs(diff).max()))
    # float16 storage rounds to ~1e-3 relative; device/kernel differences add a little more.
    scale = float(np.abs(live).max()) or 1.0
    tol = (2e-3 if ident.storage.dtype == "float16" else 1e-4) * max(scale, 1.0)
    report.add(
        "teacher",
        worst <= tol,
        f"re-ran the teacher on {len(items)} views: max |cached - live| "
        f"= {worst:.3g} (tolerance {tol:.3g})",
    )


def _same_mix(reader: CacheReader, item: dict, block: int, row: int) -> bool:
    """A mixed view's regenerated partner and lambda equal the cache's (True when not mixed)."""
    if "partner" not in item:
        return True
    stored = _readable(reader.read_mix, int(item["view"]), block)
    if stored is None:
        return True  # named by the chunks check
    partners, lambdas = stored
    return int(partners[row]) == item["partner"] and bool(lambdas[row] == item["lam"].item())


def _readable(read: Callable[[int, int], T], view: int, block: int) -> T | None:
    """``read(view, block)``, or None when the block is missing or damaged (reported elsewhere)."""
    try:
        return read(view, block)
    except KdcacheError:
        return None
