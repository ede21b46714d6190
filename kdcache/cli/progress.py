"""Progress a person reads: tqdm bars on a terminal, periodic plain lines in a log file.

On a terminal (stderr is a TTY) each epoch gets its own tqdm bar with its total, ETA, running loss
and learning rate, and the epoch summary is written above it with ``tqdm.write`` (so neither
overwrites the other). When stderr is not a terminal (a log file, a batch system) carriage-return
bars would pile up on one line: a plain line is written every ``interval`` seconds instead, in
tqdm's own format (``tqdm.format_meter``). Bars are created on the first report, never before the
library has checked its arguments.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from tqdm import tqdm

from kdcache.training.progress import format_epoch

PLAIN_INTERVAL_S = 30.0  # seconds between plain progress lines when stderr is not a terminal
_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%) [{elapsed}<{remaining}, {rate_fmt}{postfix}]"  # noqa: E501


class Meter:
    """One counted phase (an epoch, an extraction): a tqdm bar, or plain lines, or nothing."""

    def __init__(
        self,
        desc: str,
        total: int | None,
        *,
        initial: int = 0,
        unit: str = "img",
        enabled: bool = True,
        stream: IO[str] | None = None,
        interval: float = PLAIN_INTERVAL_S,
    ) -> None:
        self.desc, self.total, self.n, self.unit = desc, total, initial, unit
        self.initial = initial
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.postfix = ""
        self.unit_scale = total is None or total >= 10_000  # "50.0k", but "359" not "359.0"
        self._start = time.monotonic()
        self._last_line = float("-inf")  # off a terminal, the first update prints at once
        self._bar: tqdm | None = None
        self._plain = enabled and not _is_terminal(self.stream)
        if enabled and not self._plain:
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit,
                             unit_scale=self.unit_scale, dynamic_ncols=True, mininterval=0.5,
                             leave=False, file=self.stream)  # fmt: skip

    def update(self, n: int, **postfix: Any) -> None:
        self.n += n
        if postfix:
            self.postfix = ", ".join(f"{k}={_fmt(v)}" for k, v in postfix.items())
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix_str(self.postfix, refresh=False)
            self._bar.update(n)
        elif self._plain and time.monotonic() - self._last_line >= self.interval:
            self._line()

    def note(self, text: str) -> None:
        """Show a phase change (``evaluating ...``) at once."""
        self.postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=True)
        elif self._plain:
            self._line()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def _line(self) -> None:
        self._last_line = now = time.monotonic()
        elapsed = now - self._start
        line = tqdm.format_meter(
            self.n,
            self.total,
            elapsed,
            prefix=self.desc,
            unit=self.unit,
            unit_scale=self.unit_scale,
            rate=(self.n - self.initial) / elapsed if elapsed > 0 else None,
            postfix=self.postfix or None,
            bar_format=_FORMAT if self.total else None,
        )
        print(line, file=self.stream, flush=True)


class TrainProgress:
    """The CLI's :class:`kdcache.training.progress.TrainReporter`: the run's description and each
    epoch's summary on stdout (always), a bar or plain lines per epoch on stderr (unless
    ``bars`` is False)."""

    def __init__(self, *, bars: bool = True, stream: IO[str] | None = None) -> None:
        self.bars = bars
        self.stream = stream
        self._meter: Meter | None = None
        self._epochs = 0
        self._loss_sum = 0.0
        self._seen = 0

    def run_started(self, description: str) -> None:
        tqdm.write(f"train: {description}")

    def epoch_started(self, epoch: int, epochs: int, samples: int) -> None:
        self._epochs, self._loss_sum, self._seen = epochs, 0.0, 0
        self._meter = Meter(f"epoch {epoch}/{epochs}", samples, enabled=self.bars,
                            stream=self.stream)  # fmt: skip

    def step(self, samples: int, loss: float, lr: float) -> None:
        self._loss_sum += loss * samples
        self._seen += samples
        if self._meter is not None:
            self._meter.update(samples, loss=self._loss_sum / self._seen, lr=lr)

    def evaluating(self, epoch: int, samples: int) -> None:
        if self._meter is not None:
            self._meter.note(f"evaluating on {samples:,} images")

    def epoch_finished(self, record: dict[str, Any]) -> None:
        if self._meter is not None:
            self._meter.close()
            self._meter = None
        tqdm.write(format_epoch(record, self._epochs))

    def close(self) -> None:
        if self._meter is not None:
            self._meter.close()


class CountProgress:
    """``progress(n)`` for extraction: a :class:`Meter` created by ``start(total, done)`` (or at
    the first update), so the bar shows the total, the ETA and what an earlier run already did."""

    def __init__(
        self,
        desc: str,
        *,
        enabled: bool = True,
        unit: str = "img",
        stream: IO[str] | None = None,
    ) -> None:
        self.desc, self.enabled, self.unit, self.stream = desc, enabled, unit, stream
        self._meter: Meter | None = None

    def start(self, total: int, done: int = 0) -> None:
        desc = f"{self.desc} ({done:,} already done)" if done else self.desc
        self._meter = Meter(desc, total, initial=done, unit=self.unit, enabled=self.enabled,
                            stream=self.stream)  # fmt: skip

    def __call__(self, n: int) -> None:
        if self._meter is None:
            self._meter = Meter(self.desc, None, unit=self.unit, enabled=self.enabled,
                                stream=self.stream)  # fmt: skip
        self._meter.update(n)
        if self._meter.total is not None and self._meter.n >= self._meter.total:
            self._meter.close()  # done: what is printed next must not run into the bar

    def close(self) -> None:
        if self._meter is not None:
            self._meter.close()


def _is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
