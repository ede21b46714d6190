"""A benchmark's time budget: run what fits, record the rest as skipped (never as measured).

``Budget(seconds)`` answers, before each measurement, whether its estimated cost still fits
(:meth:`Budget.refusal`), learns each kind of measurement's cost from the ones already made
(:meth:`Budget.note`, :meth:`Budget.estimate`), and :meth:`Budget.hard_stop` raises
:class:`OutOfTime` in the main thread when the budget is spent whatever the estimates said, so a
one-shot call on a lent GPU ends in time with what it has measured written down.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator


class OutOfTime(BaseException):  # noqa: N818 - not an error of the code: the clock ran out
    """The budget ran out in the middle of a measurement (a BaseException: library code that
    catches ``Exception`` lets it through)."""


class Budget:
    """``seconds`` from construction (None: no limit)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.started = time.perf_counter()
        self._costs: dict[str, float] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return float("inf") if self.seconds is None else self.seconds - self.elapsed()

    def note(self, kind: str, seconds: float) -> None:
        """What a measurement of ``kind`` cost (the latest one counts)."""
        self._costs[kind] = seconds

    def estimate(self, kind: str, default: float) -> float:
        """The cost of the last measurement of ``kind``, else ``default``."""
        return self._costs.get(kind, default)

    def refusal(self, estimate: float) -> str | None:
        """Why a measurement estimated at ``estimate`` seconds does not fit (None: it fits)."""
        left = self.left()
        if estimate <= left:
            return None
        return f"time budget: needs about {estimate:.0f} s, {max(left, 0):.0f} s left"

    @contextlib.contextmanager
    def hard_stop(self) -> Iterator[None]:
        """Raise :class:`OutOfTime` when the budget is spent (main thread with SIGALRM only)."""
        usable = (self.seconds is not None and hasattr(signal, "SIGALRM")
                  and threading.current_thread() is threading.main_thread())  # fmt: skip
        if not usable:
            yield
            return

        def ring(signum: int, frame: object) -> None:
            raise OutOfTime(f"the {self.seconds:.0f} s budget ran out")

        previous = signal.signal(signal.SIGALRM, ring)
        signal.setitimer(signal.ITIMER_REAL, max(self.left(), 0.001))
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
