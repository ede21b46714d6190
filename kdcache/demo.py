"""``kdcache demo``: the whole pipeline offline on scikit-learn's bundled digits, in minutes on CPU.

1. train a teacher with cross-entropy (how teachers are made);
2. extract its logits for several seeded views into a cache, and verify the cache;
3. train the same student from the cache with LDRLD, and with cross-entropy alone;
4. return a table comparing them.

Every step goes through the same library functions as the CLI commands.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdcache.extract import ExtractConfig, run_extract
from kdcache.training.config import TrainConfig
from kdcache.training.loop import run_train
from kdcache.verify import verify_cache

log = logging.getLogger(__name__)


# The CIFAR crop with 1 pixel of padding: pad 4 would shift an 8x8 digit by half its width.
RECIPE_PARAMS = {"padding": 1}


@dataclass(frozen=True)
class DemoRow:
    name: str
    top1: float
    top5: float
    seconds: float


@dataclass(frozen=True)
class DemoSettings:
    teacher: str = "resnet20"
    student: str = "resnet8"
    teacher_epochs: int = 30
    student_epochs: int = 20
    views: int = 4
    batch_size: int = 64
    seed: int = 0
    workers: int = 0  # digits images are tiny: worker processes cost more than they save


def run_demo(
    out: Path,
    settings: DemoSettings = DemoSettings(),
    say: Callable[[str], None] = log.info,
    progress: Callable[[str], Any] | None = None,
) -> list[DemoRow]:
    """Run the pipeline under ``out`` (resumes finished steps); returns the comparison rows.

    ``progress(step)``, if given, makes the progress reporter of each step (``"train"`` or
    ``"extract"``: a :class:`kdcache.training.progress.TrainReporter` or a ``progress(n)``
    callable), so that a long step shows it is moving.
    """

    def reporter(step: str) -> Any:
        return progress(step) if progress is not None else None

    out.mkdir(parents=True, exist_ok=True)
    common: dict[str, Any] = dict(
        batch_size=settings.batch_size, workers=settings.workers, device="auto", seed=settings.seed
    )
    views: dict[str, Any] = dict(recipe="cifar", recipe_params=dict(RECIPE_PARAMS))
    rows: list[DemoRow] = []

    def train(step: int, name: str, config: TrainConfig) -> None:
        say(f"[{step}/4] {name}")
        done = Path(config.out) / "last.pt"
        started = time.perf_counter()
        if done.is_file():  # a finished step of an earlier demo run: evaluate, don't retrain
            from kdcache.training.evaluation import evaluate_checkpoint

            top1, top5, _ = evaluate_checkpoint(str(done), None, None, workers=0)
        else:
            result = run_train(config, progress=reporter("train"))
            # The demo evaluates every epoch (eval_every defaults to 1): the figures are there.
            assert result.final_top1 is not None and result.final_top5 is not None
            top1, top5 = result.final_top1, result.final_top5
        rows.append(DemoRow(name, top1, top5, time.perf_counter() - started))

    teacher_dir = out / "teacher"
    train(
        1,
        f"teacher {settings.teacher}: cross-entropy",
        TrainConfig(
            student=settings.teacher,
            out=str(teacher_dir),
            dataset="digits",
            loss="ce",
            **views,
            epochs=settings.teacher_epochs,
            **common,
        ),
    )

    cache = out / "cache"
    say(f"[2/4] extract {settings.views} views of the teacher's logits into {cache}")
    started = time.perf_counter()
    run_extract(
        ExtractConfig(
            teacher=settings.teacher,
            weights=str(teacher_dir / "last.pt"),
            dataset="digits",
            recipe="cifar",
            recipe_params=dict(RECIPE_PARAMS),
            views=settings.views,
            seed=settings.seed,
            out=str(cache),
            batch_size=256,
            workers=0,
            chunk_rows=256,
        ),
        progress=reporter("extract"),
    )
    report = verify_cache(str(cache), replay=32)
    if not report.ok:
        raise RuntimeError(f"the demo cache failed verification: {report.checks}")
    extract_seconds = time.perf_counter() - started
    say(f"      cache verified in {extract_seconds:.1f} s (extract + verify)")

    train(
        3,
        f"student {settings.student}: LDRLD from the cache",
        TrainConfig(
            student=settings.student,
            out=str(out / "student_ldrld"),
            cache=str(cache),
            loss="ldrld",
            loss_params={"k": 5},
            epochs=settings.student_epochs,
            **common,
        ),
    )
    train(
        4,
        f"student {settings.student}: cross-entropy only",
        TrainConfig(
            student=settings.student,
            out=str(out / "student_ce"),
            dataset="digits",
            loss="ce",
            **views,
            epochs=settings.student_epochs,
            **common,
        ),
    )
    return rows


def format_table(rows: list[DemoRow]) -> str:
    lines = [f"{'run':<44} {'top-1':>7} {'top-5':>7} {'time':>8}", "-" * 69]
    lines += [f"{r.name:<44} {r.top1:>6.2f}% {r.top5:>6.2f}% {r.seconds:>7.1f}s" for r in rows]
    return "\n".join(lines)
