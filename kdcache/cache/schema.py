"""Cache format version 1: the metadata as frozen dataclasses, no IO.

The normative description is ``docs/cache-format.md``; this module is its executable form. Every
record round-trips through ``to_dict`` / ``from_dict`` (plain JSON types) and validates what it is
given, so a malformed cache fails at open time with a message instead of deep inside training.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np

from kdcache.errors import CacheError, ConfigError, FormatVersionError

FORMAT_MAJOR = 1
FORMAT_MINOR = 2  # 1.1: + producers; 1.2: + block_digest (older caches read without them)
FORMAT_VERSION = f"{FORMAT_MAJOR}.{FORMAT_MINOR}"
ATTRS_KEY = "kdcache"  # the group attribute that holds the whole self-description

StorageMode = Literal["dense", "sparse"]
LogitDtype = Literal["float16", "float32"]

# Array names inside the zarr group (docs/cache-format.md §Arrays).
LOGITS = "logits"  # [V, N, C]  dense mode
TOPK_VALUES = "topk_values"  # [V, N, K] sparse mode
TOPK_INDICES = "topk_indices"  # [V, N, K] sparse mode
LOGSUMEXP = "logsumexp"  # [V, N]    sparse mode, float32
LABELS = "labels"  # [N]       int64
INPUT_HASH = "input_hash"  # [V, N]    int64
BLOCK_DONE = "block_done"  # [V, n_blocks] uint8, one chunk per block: the completeness record
BLOCK_TOP1 = "block_top1_correct"  # [V, n_blocks] int64, teacher top-1 hits per block
BLOCK_TOP5 = "block_top5_correct"  # [V, n_blocks] int64, teacher top-5 hits per block
# [V, n_blocks, A, 32] uint8 (format 1.2): sha256 of each of the block's A chunks, bound to
# (array, view, block); one chunk per block, written before the mark (docs/cache-format.md §3.1).
BLOCK_DIGEST = "block_digest"
DIGESTS_SINCE = (1, 2)  # the first format version that records block digests
# Two figures agree if they differ by less than the attributes' rounding (4 decimals).
_FIGURE_TOLERANCE = 6e-5


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise CacheError(f"malformed cache metadata: {message}")


@dataclass(frozen=True)
class TeacherInfo:
    name: str
    weights_sha256: str | None  # None: randomly initialised teacher (tests, demos)
    num_params: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TeacherInfo:
        _require(isinstance(d.get("name"), str), "teacher.name must be a string")
        _require(isinstance(d.get("num_params"), int), "teacher.num_params must be an integer")
        return cls(
            name=d["name"], weights_sha256=d.get("weights_sha256"), num_params=d["num_params"]
        )


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    split: str
    num_samples: int
    num_classes: int
    fingerprint: str  # sha256 of labels + sample identities (kdcache.data)
    spec: dict[str, Any] = field(default_factory=dict)  # normalisation, image size, channels

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetInfo:
        for key in ("name", "split", "fingerprint"):
            _require(isinstance(d.get(key), str), f"dataset.{key} must be a string")
        for key in ("num_samples", "num_classes"):
            _require(isinstance(d.get(key), int) and d[key] > 0, f"dataset.{key} must be > 0")
        return cls(
            name=d["name"],
            split=d["split"],
            num_samples=d["num_samples"],
            num_classes=d["num_classes"],
            fingerprint=d["fingerprint"],
            spec=dict(d.get("spec", {})),
        )


@dataclass(frozen=True)
class AugmentationInfo:
    recipe: str
    params: dict[str, Any]
    seed: int
    num_views: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AugmentationInfo:
        _require(isinstance(d.get("recipe"), str), "augmentation.recipe must be a string")
        _require(isinstance(d.get("seed"), int) and d["seed"] >= 0, "augmentation.seed >= 0")
        _require(isinstance(d.get("num_views"), int) and d["num_views"] >= 1, "num_views >= 1")
        return cls(
            recipe=d["recipe"],
            params=dict(d.get("params", {})),
            seed=d["seed"],
            num_views=d["num_views"],
        )


@dataclass(frozen=True)
class StorageInfo:
    mode: StorageMode
    dtype: LogitDtype
    chunk_rows: int
    topk: int | None = None  # sparse mode only

    def __post_init__(self) -> None:
        if self.mode not in ("dense", "sparse"):
            raise ConfigError(f"storage mode must be 'dense' or 'sparse', got {self.mode!r}")
        if self.dtype not in ("float16", "float32"):
            raise ConfigError(f"--dtype must be float16 or float32, got {self.dtype!r}")
        if self.chunk_rows < 1:
            raise ConfigError(f"--chunk-rows must be >= 1, got {self.chunk_rows}")
        if self.mode == "sparse" and (self.topk is None or self.topk < 1):
            raise ConfigError(f"sparse mode needs --topk >= 1, got {self.topk}")
        if self.mode == "dense" and self.topk is not None:
            raise ConfigError("--topk is only meaningful in sparse mode")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StorageInfo:
        try:
            return cls(
                mode=d["mode"],
                dtype=d["dtype"],
                chunk_rows=int(d["chunk_rows"]),
                topk=d.get("topk"),
            )
        except (KeyError, ConfigError) as exc:
            raise CacheError(f"malformed cache metadata: storage: {exc}") from exc


@dataclass(frozen=True)
class CacheIdentity:
    """Everything that determines the cache's bytes: two caches with equal identity are equal."""

    teacher: TeacherInfo
    dataset: DatasetInfo
    augmentation: AugmentationInfo
    storage: StorageInfo

    def to_dict(self) -> dict[str, Any]:
        return {
            "teacher": asdict(self.teacher),
            "dataset": asdict(self.dataset),
            "augmentation": asdict(self.augmentation),
            "storage": asdict(self.storage),
        }

    def fingerprint(self) -> str:
        """sha256 of the identity's canonical JSON (sorted keys, no spaces): names the cache."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def differences(self, other: CacheIdentity) -> list[str]:
        """Human-readable ``field: ours != theirs`` lines, for mismatch errors."""
        return _dict_differences(self.to_dict(), other.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CacheIdentity:
        for key in ("teacher", "dataset", "augmentation", "storage"):
            _require(isinstance(d.get(key), dict), f"missing section {key!r}")
        return cls(
            teacher=TeacherInfo.from_dict(d["teacher"]),
            dataset=DatasetInfo.from_dict(d["dataset"]),
            augmentation=AugmentationInfo.from_dict(d["augmentation"]),
            storage=StorageInfo.from_dict(d["storage"]),
        )


@dataclass(frozen=True)
class CacheMeta:
    """The full self-description stored under the group attribute ``kdcache``."""

    identity: CacheIdentity
    format_version: str = FORMAT_VERSION
    versions: dict[str, str] = field(default_factory=dict)  # libraries that affect the bytes
    created: str = ""  # ISO 8601 UTC
    # How the teacher's forward ran (device, precision, ...): not part of the identity, since
    # every producer computes the same logits up to the last bits, but a consumer should see it.
    # One entry per distinct configuration that wrote blocks (a resume elsewhere appends one).
    producers: tuple[dict[str, str], ...] = ()
    # Filled in when the last block is written (absent while incomplete):
    complete: bool = False
    teacher_top1: list[float] | None = None  # per view, percent
    teacher_top5: list[float] | None = None

    @property
    def fingerprint(self) -> str:
        return self.identity.fingerprint()

    def with_producers(self, producers: tuple[dict[str, str], ...]) -> CacheMeta:
        """This metadata with any of ``producers`` it does not list yet appended."""
        new = tuple(p for p in producers if p not in self.producers)
        return replace(self, producers=self.producers + new) if new else self

    @property
    def num_blocks(self) -> int:
        """Blocks (chunks of rows) per view."""
        n, rows = self.identity.dataset.num_samples, self.identity.storage.chunk_rows
        return -(-n // rows)

    @property
    def has_block_digests(self) -> bool:
        """Whether this cache records a position-bound digest of every block (format >= 1.2)."""
        return format_tuple(self.format_version) >= DIGESTS_SINCE

    def figures_from_counts(
        self, top1_hits: np.ndarray, top5_hits: np.ndarray
    ) -> tuple[list[float], list[float]]:
        """Teacher top-1 / top-5 per view (percent, 4 decimals) from hits [V, n_blocks]."""
        n = self.identity.dataset.num_samples
        return (
            [round(float(x), 4) for x in np.asarray(top1_hits).sum(axis=1) * 100.0 / n],
            [round(float(x), 4) for x in np.asarray(top5_hits).sum(axis=1) * 100.0 / n],
        )

    def figure_mismatches(self, top1_hits: np.ndarray, top5_hits: np.ndarray) -> list[str]:
        """Where the recorded teacher_top1/top5 disagree with the per-block hit counts [V, nb].

        Empty when they agree, or when the cache records no figures yet (incomplete).
        """
        if self.teacher_top1 is None:
            return []
        top1, top5 = self.figures_from_counts(top1_hits, top5_hits)
        out = []
        for name, recorded, counted in (
            ("teacher_top1", self.teacher_top1, top1),
            ("teacher_top5", self.teacher_top5 or [], top5),
        ):
            if (
                not isinstance(recorded, list)
                or len(recorded) != len(counted)
                or any(
                    not isinstance(r, int | float) or abs(r - c) > _FIGURE_TOLERANCE
                    for r, c in zip(recorded, counted, strict=False)
                )
            ):
                out.append(f"{name} records {recorded} but the per-block hit counts give {counted}")
        return out

    def block_rows(self, block: int) -> slice:
        rows = self.identity.storage.chunk_rows
        return slice(block * rows, min((block + 1) * rows, self.identity.dataset.num_samples))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format_version": self.format_version, "fingerprint": self.fingerprint}
        d.update(self.identity.to_dict())
        d.update(versions=dict(self.versions), created=self.created, complete=self.complete)
        d["producers"] = [dict(p) for p in self.producers]
        if self.teacher_top1 is not None:
            d["teacher_top1"] = list(self.teacher_top1)
            d["teacher_top5"] = list(self.teacher_top5 or [])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CacheMeta:
        check_format_version(d.get("format_version"))
        identity = CacheIdentity.from_dict(d)
        recorded = d.get("fingerprint")
        if recorded is not None and recorded != identity.fingerprint():
            raise CacheError(
                "cache metadata was edited: its recorded fingerprint does not match its identity "
                f"fields (recorded {recorded[:12]}, computed {identity.fingerprint()[:12]})"
            )
        return cls(
            identity=identity,
            format_version=d["format_version"],
            versions=dict(d.get("versions", {})),
            created=str(d.get("created", "")),
            producers=tuple(dict(p) for p in d.get("producers", [])),
            complete=bool(d.get("complete", False)),
            teacher_top1=d.get("teacher_top1"),
            teacher_top5=d.get("teacher_top5"),
        )


def format_tuple(version: str) -> tuple[int, int]:
    """``"1.2"`` -> ``(1, 2)``; a version without a minor part counts as minor 0."""
    parts = version.split(".")
    minor = parts[1] if len(parts) > 1 and parts[1].isdigit() else "0"
    return int(parts[0]), int(minor)


def check_format_version(version: object) -> None:
    """Refuse a missing or newer major version with a message naming what is needed."""
    if not isinstance(version, str) or not version.split(".")[0].isdigit():
        raise CacheError(
            f"not a kdcache cache (no valid '{ATTRS_KEY}.format_version' attribute: {version!r})"
        )
    major = int(version.split(".")[0])
    if major > FORMAT_MAJOR:
        raise FormatVersionError(
            f"this cache uses format version {version}, but this kdcache reads format "
            f"{FORMAT_MAJOR}.x only: upgrade kdcache to a release that reads format {major}"
        )


def _dict_differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        name = f"{prefix}{key}"
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(_dict_differences(va, vb, name + "."))
        elif va != vb:
            out.append(f"{name}: {va!r} != {vb!r}")
    return out
