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
# 1.1: + producers (1.0 caches read with none recorded)
# 1.2: + block_digest (position-bound chunk digests); teacher_model (how the teacher's name
#      resolved); teacher.preprocessing and teacher.weights_ema (1.0/1.1: the dataset's
#      normalisation, no EMA); sparse rows exact at every recorded temperature (1.0/1.1 sparse
#      caches read with LSE at T = 1 only). Older caches read without each of these.
# 1.3: + labels_sha256 (the labels array's digest; older caches: their labels are unchecked
#      unless the data is at hand)
FORMAT_MINOR = 3
FORMAT_VERSION = f"{FORMAT_MAJOR}.{FORMAT_MINOR}"
ATTRS_KEY = "kdcache"  # the group attribute that holds the whole self-description

StorageMode = Literal["dense", "sparse"]
LogitDtype = Literal["float16", "float32"]

# Array names inside the zarr group (docs/cache-format.md §Arrays).
LOGITS = "logits"  # [V, N, C]  dense mode
TOPK_VALUES = "topk_values"  # [V, N, K] sparse mode
TOPK_INDICES = "topk_indices"  # [V, N, K] sparse mode
LOGSUMEXP = "logsumexp"  # [V, N]    sparse mode 1.0/1.1 only: LSE(z) at T = 1, float32
# Sparse mode from format 1.2 (docs/cache-format.md §Sparse rows), all float32:
LSE_AT_T = "logsumexp_t"  # [V, N, nT] LSE(z / T) for each recorded temperature T
TAIL_LSE_AT_T = "tail_logsumexp_t"  # [V, N, nT] LSE over the classes NOT kept (-inf when K = C)
LABEL_LOGIT = "label_logit"  # [V, N] the teacher's logit at the true label
LOGIT_MEAN = "logit_mean"  # [V, N] row mean of z (logit standardisation)
LOGIT_STD = "logit_std"  # [V, N] row std of z, Bessel-corrected (N - 1), as the losses use
LABELS = "labels"  # [N]       int64
INPUT_HASH = "input_hash"  # [V, N]    int64
BLOCK_DONE = "block_done"  # [V, n_blocks] uint8, one chunk per block: the completeness record
BLOCK_TOP1 = "block_top1_correct"  # [V, n_blocks] int64, teacher top-1 hits per block
BLOCK_TOP5 = "block_top5_correct"  # [V, n_blocks] int64, teacher top-5 hits per block
# [V, n_blocks, A, 32] uint8 (format 1.2): sha256 of each of the block's A chunks, bound to
# (array, view, block); one chunk per block, written before the mark (docs/cache-format.md §3.1).
BLOCK_DIGEST = "block_digest"
# Caches of a mixed recipe ("<base>+mixup" ...) only (docs/cache-format.md §5.3.1): per (view,
# sample) the partner index and the effective lambda (the weight of the sample's own label).
MIX_PARTNER = "mix_partner"  # [V, N] int64, fill -1
MIX_LAMBDA = "mix_lambda"  # [V, N] float32, fill NaN
MIX_ARRAYS = (MIX_PARTNER, MIX_LAMBDA)
DIGESTS_SINCE = (1, 2)  # the first format version that records block digests
LABELS_DIGEST_SINCE = (1, 3)  # the first format version that records labels_sha256
IDENTITY_SECTIONS = ("teacher", "dataset", "augmentation", "storage")
# Two figures agree if they differ by less than the attributes' rounding (4 decimals).
_FIGURE_TOLERANCE = 6e-5


SPARSE_ROW_STATS = (LABEL_LOGIT, LOGIT_MEAN, LOGIT_STD)  # [V, N] each, sparse mode 1.2


def data_arrays(storage: StorageInfo) -> tuple[str, ...]:
    """The per-view arrays that hold the teacher's outputs in this storage mode."""
    if storage.mode == "dense":
        return (LOGITS,)
    if storage.exact_sparse:
        return (TOPK_VALUES, TOPK_INDICES, LSE_AT_T, TAIL_LSE_AT_T, *SPARSE_ROW_STATS)
    return (TOPK_VALUES, TOPK_INDICES, LOGSUMEXP)  # format 1.0 / 1.1


def canonical_json(value: Any) -> bytes:
    """The identity's canonical serialisation (docs/cache-format.md §4.1), as ASCII bytes.

    Python's ``json.dumps`` with sorted keys, no whitespace, ``ensure_ascii`` and no NaN or
    infinity: the bytes every cache's fingerprint was computed from since format 1.0.
    """
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:  # NaN or infinity: JSON has no such number
        raise CacheError(f"malformed cache metadata: {exc}") from exc
    return text.encode("ascii")


def identity_fingerprint(identity: dict[str, Any]) -> str:
    """sha256 hex of an identity object's canonical JSON (the four sections, as stored)."""
    return hashlib.sha256(canonical_json(identity)).hexdigest()


def labels_digest(labels: np.ndarray) -> str:
    """sha256 hex of the labels as little-endian int64 (``labels_sha256``, format 1.3)."""
    return hashlib.sha256(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest()


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise CacheError(f"malformed cache metadata: {message}")


@dataclass(frozen=True)
class TeacherInfo:
    name: str
    weights_sha256: str | None  # None: randomly initialised teacher (tests, demos)
    num_params: int
    # 1.2: how the uint8 view was converted for the teacher (kdcache.models.preprocess
    # Preprocessing.to_dict); None in older caches, which used the dataset's normalisation.
    preprocessing: dict[str, Any] | None = None
    weights_ema: bool = False  # 1.2: the checkpoint's EMA weights were the teacher

    def to_dict(self) -> dict[str, Any]:
        # The 1.2 fields are left out when unset, so that 1.0 / 1.1 identities (and with them
        # their recorded fingerprints) stay exactly what they were.
        d = asdict(self)
        if self.preprocessing is None:
            del d["preprocessing"]
        if not self.weights_ema:
            del d["weights_ema"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TeacherInfo:
        _require(isinstance(d.get("name"), str), "teacher.name must be a string")
        _require(isinstance(d.get("num_params"), int), "teacher.num_params must be an integer")
        pre = d.get("preprocessing")
        _require(pre is None or isinstance(pre, dict), "teacher.preprocessing must be a mapping")
        return cls(
            name=d["name"],
            weights_sha256=d.get("weights_sha256"),
            num_params=d["num_params"],
            preprocessing=dict(pre) if pre is not None else None,
            weights_ema=bool(d.get("weights_ema", False)),
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

    @property
    def mixed(self) -> bool:
        """Whether each view mixes its sample with a partner (the cache holds the mix arrays)."""
        return "+" in self.recipe

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
    # Sparse mode, format >= 1.2: the temperatures whose log-sum-exp each row stores, ascending.
    # None: a 1.0/1.1 sparse cache (only LSE(z) at T = 1, no tail, label logit or row stats).
    temperatures: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("dense", "sparse"):
            raise ConfigError(f"storage mode must be 'dense' or 'sparse', got {self.mode!r}")
        if self.dtype not in ("float16", "float32"):
            raise ConfigError(f"`dtype` must be float16 or float32, got {self.dtype!r}")
        if self.chunk_rows < 1:
            raise ConfigError(f"`chunk_rows` must be >= 1, got {self.chunk_rows}")
        if self.mode == "sparse" and (self.topk is None or self.topk < 1):
            raise ConfigError(f"sparse mode needs `topk` >= 1, got {self.topk}")
        if self.mode == "dense" and self.topk is not None:
            raise ConfigError("`topk` is only meaningful in sparse mode")
        if self.temperatures is not None:
            if self.mode != "sparse":
                raise ConfigError("stored temperatures are only meaningful in sparse mode")
            if not self.temperatures or any(
                not isinstance(t, float) or not t > 0 or t == float("inf")
                for t in self.temperatures
            ):
                raise ConfigError(
                    f"sparse temperatures must be finite numbers > 0, got {self.temperatures}"
                )
            if self.dtype != "float32":
                raise ConfigError("sparse rows (format 1.2) store float32 values only")
            if list(self.temperatures) != sorted(set(self.temperatures)):
                raise ConfigError(
                    f"sparse temperatures must be distinct and ascending: {self.temperatures}"
                )

    @property
    def exact_sparse(self) -> bool:
        """A format >= 1.2 sparse cache: rows exact at each of :attr:`temperatures`."""
        return self.mode == "sparse" and self.temperatures is not None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.temperatures is None:
            # Absent, not null: the identity (so the fingerprint) of 1.0/1.1 caches is unchanged.
            del d["temperatures"]
        else:
            d["temperatures"] = list(self.temperatures)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StorageInfo:
        try:
            return cls(
                mode=d["mode"],
                dtype=d["dtype"],
                chunk_rows=int(d["chunk_rows"]),
                topk=d.get("topk"),
                temperatures=_parse_temperatures(d.get("temperatures")),
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
            "teacher": self.teacher.to_dict(),
            "dataset": asdict(self.dataset),
            "augmentation": asdict(self.augmentation),
            "storage": self.storage.to_dict(),
        }

    def fingerprint(self) -> str:
        """sha256 of the identity's canonical JSON (sorted keys, no spaces): names the cache."""
        return identity_fingerprint(self.to_dict())

    def differences(self, other: CacheIdentity) -> list[str]:
        """Human-readable ``field: ours != theirs`` lines, for mismatch errors."""
        return _dict_differences(self.to_dict(), other.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CacheIdentity:
        for key in IDENTITY_SECTIONS:
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
    # How the teacher's name resolved: {"source": zoo|timm|file, "architecture", "spec"}. Not part
    # of the identity (``teacher.name`` already holds the canonical spec, which resolves to it).
    teacher_model: dict[str, str] | None = None
    # Format 1.3: sha256 of the labels array's values (labels_digest); None in older caches.
    # Not part of the identity: the dataset's fingerprint already covers the labels.
    labels_sha256: str | None = None
    # Filled in when the last block is written (absent while incomplete):
    complete: bool = False
    teacher_top1: list[float] | None = None  # per view, percent
    teacher_top5: list[float] | None = None

    @property
    def fingerprint(self) -> str:
        return self.identity.fingerprint()

    def with_labels_digest(self, labels: np.ndarray) -> CacheMeta:
        """This metadata recording ``labels``' digest when its format records one (1.3)."""
        if format_tuple(self.format_version) < LABELS_DIGEST_SINCE:
            return self
        return replace(self, labels_sha256=labels_digest(labels))

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

    def labels_problem(self, labels: np.ndarray) -> str | None:
        """What is wrong with the ``labels`` array read from this cache, or None.

        Format 1.3 records the labels' digest, so any change is caught; an older cache can only
        be checked for its shape and for rows that read as the fill value (-1: a deleted chunk).
        """
        n = self.identity.dataset.num_samples
        if labels.shape != (n,) or labels.dtype != np.int64:
            return f"holds {labels.dtype} {list(labels.shape)}, not the int64 [{n}] labels"
        if self.labels_sha256 is not None:
            if labels_digest(labels) != self.labels_sha256:
                return (
                    f"does not hold the labels recorded for it (sha256 "
                    f"{labels_digest(labels)[:12]}, recorded {self.labels_sha256[:12]}): "
                    "edited, truncated or deleted"
                )
        elif (labels < 0).any() or (labels >= self.identity.dataset.num_classes).any():
            return "holds values outside 0..C-1 (-1: a deleted chunk)"
        return None

    def block_rows(self, block: int) -> slice:
        rows = self.identity.storage.chunk_rows
        return slice(block * rows, min((block + 1) * rows, self.identity.dataset.num_samples))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format_version": self.format_version, "fingerprint": self.fingerprint}
        d.update(self.identity.to_dict())
        d.update(versions=dict(self.versions), created=self.created, complete=self.complete)
        d["producers"] = [dict(p) for p in self.producers]
        if self.teacher_model is not None:
            d["teacher_model"] = dict(self.teacher_model)
        if self.labels_sha256 is not None:
            d["labels_sha256"] = self.labels_sha256
        if self.teacher_top1 is not None:
            d["teacher_top1"] = list(self.teacher_top1)
            d["teacher_top5"] = list(self.teacher_top5 or [])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CacheMeta:
        version = d.get("format_version")
        check_format_version(version)
        identity = CacheIdentity.from_dict(d)
        _require_canonical_identity(d, identity, str(version))
        recorded = str(d.get("fingerprint"))
        _require(isinstance(d.get("fingerprint"), str), "no recorded 'fingerprint'")
        if recorded != identity.fingerprint():
            raise CacheError(
                "cache metadata was edited: its recorded fingerprint does not match its identity "
                f"fields (recorded {recorded[:12]}, computed {identity.fingerprint()[:12]})"
            )
        labels_sha256 = d.get("labels_sha256")
        if format_tuple(str(version)) >= LABELS_DIGEST_SINCE or labels_sha256 is not None:
            _require(
                isinstance(labels_sha256, str) and len(labels_sha256) == 64,
                f"format {version} records the labels' digest: 'labels_sha256' must be a sha256 "
                f"hex string, got {labels_sha256!r}",
            )
        return cls(
            identity=identity,
            format_version=d["format_version"],
            versions=dict(d.get("versions", {})),
            created=str(d.get("created", "")),
            producers=tuple(dict(p) for p in d.get("producers", [])),
            teacher_model=dict(d["teacher_model"])
            if isinstance(d.get("teacher_model"), dict)
            else None,
            labels_sha256=labels_sha256,
            complete=bool(d.get("complete", False)),
            teacher_top1=d.get("teacher_top1"),
            teacher_top5=d.get("teacher_top5"),
        )


def _require_canonical_identity(d: dict[str, Any], identity: CacheIdentity, version: str) -> None:
    """Refuse an identity whose stored form is not exactly what this kdcache would write for it.

    The fingerprint is the hash of the identity *as stored* (docs/cache-format.md §4.1), and
    kdcache reads it into its own model: a key it does not know, a missing one, or a value it
    would write differently (``1`` for ``1.0``, ``"weights_ema": false``) would make the two
    disagree, so such an identity is refused rather than read with the key silently ignored.
    """
    stored = {key: d[key] for key in IDENTITY_SECTIONS}
    if canonical_json(stored) == canonical_json(identity.to_dict()):
        return
    diffs = _canonical_differences(stored, identity.to_dict())
    newer = format_tuple(version) > (FORMAT_MAJOR, FORMAT_MINOR)
    why = (
        f"the cache is of format {version}, newer than this kdcache's {FORMAT_VERSION}: upgrade "
        "kdcache to read it"
        if newer
        else "the metadata was edited by hand or by another tool; fetch an intact copy"
    )
    raise CacheError(
        "malformed cache metadata: its identity is not in the form this kdcache writes "
        f"(docs/cache-format.md §4.3): {'; '.join(diffs[:6])}. Unknown, missing or re-typed "
        f"identity keys change what the fingerprint covers, so they are refused: {why}."
    )


def _canonical_differences(stored: Any, parsed: Any, prefix: str = "") -> list[str]:
    """Where ``stored`` and ``parsed`` serialise differently: ``path: stored X, expected Y``."""
    if isinstance(stored, dict) and isinstance(parsed, dict):
        out: list[str] = []
        for key in sorted(set(stored) | set(parsed)):
            name = f"{prefix}{key}"
            if key not in parsed:
                out.append(f"unexpected key {name}")
            elif key not in stored:
                out.append(f"{name} missing")
            else:
                out.extend(_canonical_differences(stored[key], parsed[key], name + "."))
        return out
    if canonical_json(stored) != canonical_json(parsed):
        return [
            f"{prefix.rstrip('.')} is stored as {canonical_json(stored).decode()}, "
            f"expected {canonical_json(parsed).decode()}"
        ]
    return []


def _parse_temperatures(raw: object) -> tuple[float, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(
        isinstance(t, int | float) and not isinstance(t, bool) for t in raw
    ):
        raise ConfigError(f"storage.temperatures must be a list of numbers, got {raw!r}")
    return tuple(float(t) for t in raw)


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
