"""Sparse (top-K) teacher rows: what a row stores and how it is computed. numpy only, no IO.

A dense row is the teacher's C logits. A sparse row keeps the K largest (values and class
indices) plus what exact sparse distillation needs and cannot re-derive from them
(``docs/cache-format.md`` §Sparse rows):

- ``LSE(z / T)`` over all C classes, for each recorded temperature T: ``log p_c = z_c / T - LSE``
  at that temperature only (``LSE(z / T)`` is not ``LSE(z) / T``);
- the log-sum-exp of the classes *not* kept, at each T: the mass of the one "tail" bucket in log
  space, so that a tail whose mass is tiny (or 0 when K = C) is exact, never ``1 - sum(p)``;
- the teacher's logit at the true label (outside the top-K in ~6% of real CIFAR-100 rows);
- the row mean and Bessel-corrected std of z (logit standardisation).

Everything is computed in float64 from the float32 logits and stored as float32: the kept values
are the float32 logits themselves, so ties are ordered by value, then by lower class index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SparseRows:
    """``R`` sparse teacher rows; arrays are float32 unless said otherwise.

    ``tail_lse``, ``label_logit``, ``logit_mean`` and ``logit_std`` are None for format 1.0/1.1
    caches, which stored only the top-K and ``LSE(z)`` at T = 1.
    """

    values: np.ndarray  # [R, K] the K largest logits, descending
    indices: np.ndarray  # [R, K] their class indices (int16 or int32)
    temperatures: tuple[float, ...]  # nT, ascending
    lse: np.ndarray  # [R, nT] LSE(z / T) over all classes
    tail_lse: np.ndarray | None = None  # [R, nT] LSE(z / T) over the C - K classes not kept
    label_logit: np.ndarray | None = None  # [R]
    logit_mean: np.ndarray | None = None  # [R]
    logit_std: np.ndarray | None = None  # [R]

    @property
    def exact(self) -> bool:
        """Whether the rows carry the tail, label logit and row statistics (format >= 1.2)."""
        return self.tail_lse is not None

    def temperature_column(self, temperature: float) -> int:
        """Column of ``lse`` / ``tail_lse`` for ``temperature``; ValueError if not recorded."""
        for i, t in enumerate(self.temperatures):
            if t == float(temperature):
                return i
        raise ValueError(
            f"temperature {temperature:g} is not recorded in this sparse cache (it stores the "
            f"log-sum-exp at T = {', '.join(f'{t:g}' for t in self.temperatures)})"
        )

    def kept_log_mass(self, temperature: float) -> np.ndarray:
        """``log sum_{kept} p_c`` at ``temperature``, [R] float64 (<= 0 up to rounding)."""
        col = self.temperature_column(temperature)
        scaled = self.values.astype(np.float64) / temperature
        return _logsumexp(scaled, axis=1) - self.lse[:, col].astype(np.float64)


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    peak = np.max(x, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):  # log(0) = -inf for an all -inf row (empty tail)
        out = np.log(np.sum(np.exp(x - peak), axis=axis, keepdims=True)) + peak
    return np.squeeze(out, axis=axis)


def sparse_rows_from_logits(
    logits: np.ndarray,
    labels: np.ndarray,
    k: int,
    temperatures: tuple[float, ...],
    index_dtype: str = "int32",
    dtype: type[np.floating] = np.float32,
) -> SparseRows:
    """The sparse form of logits ``[R, C]`` with true labels ``[R]`` (format 1.2).

    ``dtype`` is the stored precision (float32 in a cache; float64 only for exactness tests).
    """
    z_stored = np.asarray(logits, dtype=dtype)
    rows, classes = z_stored.shape
    # Stable sort of the negated stored values: ties keep the lower class index first.
    order = np.argsort(-z_stored, axis=1, kind="stable")
    kept = order[:, :k]  # [R, K]
    z = z_stored.astype(np.float64)
    tail_mask = np.ones((rows, classes), dtype=bool)
    np.put_along_axis(tail_mask, kept, False, axis=1)
    lse = np.empty((rows, len(temperatures)), np.float64)
    tail = np.empty((rows, len(temperatures)), np.float64)
    for col, t in enumerate(temperatures):
        scaled = z / t
        lse[:, col] = _logsumexp(scaled, axis=1)
        tail[:, col] = _logsumexp(np.where(tail_mask, scaled, -np.inf), axis=1)
    return SparseRows(
        values=np.take_along_axis(z_stored, kept, axis=1),
        indices=kept.astype(index_dtype),
        temperatures=tuple(temperatures),
        lse=lse.astype(dtype),
        tail_lse=tail.astype(dtype),
        label_logit=np.take_along_axis(z_stored, labels.astype(np.int64)[:, None], axis=1)[:, 0],
        logit_mean=z.mean(axis=1).astype(dtype),
        logit_std=(z.std(axis=1, ddof=1) if classes > 1 else np.zeros(rows)).astype(dtype),
    )


# The kept probabilities' sum may exceed 1 only by float32 rounding of the stored values and
# log-sum-exps; measured on the real CIFAR-100 ResNet-56 rows (docs/cache-format.md) the excess
# stays below 1e-6. `verify` flags a row whose kept mass exceeds 1 by more than this bound.
KEPT_MASS_TOLERANCE = 1e-5


def kept_mass_violations(rows: SparseRows) -> int:
    """Rows whose kept mass exceeds 1 + :data:`KEPT_MASS_TOLERANCE` at any recorded T."""
    bad = np.zeros(len(rows.values), dtype=bool)
    for t in rows.temperatures:
        excess = np.expm1(rows.kept_log_mass(t))  # kept mass - 1
        bad |= ~(excess <= KEPT_MASS_TOLERANCE)  # NaN counts as a violation
    return int(bad.sum())
