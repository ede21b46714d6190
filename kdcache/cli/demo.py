"""``kdcache demo``: the built-in default job (offline, CPU, a few minutes)."""

from __future__ import annotations

from pathlib import Path

import click

from kdcache.cache import bounds
from kdcache.cli._common import int_option, user_errors


@click.command("demo")
@click.option(
    "--out",
    default="runs/demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Working directory (runs/ is in the repository's .gitignore); finished steps are "
    "reused when re-run.",
)
@int_option("--teacher-epochs", 1, 10_000, default=30)
@int_option("--student-epochs", 1, 10_000, default=20)
@int_option("--views", 1, bounds.MAX_VIEWS, default=4)
def demo_command(out: str, teacher_epochs: int, student_epochs: int, views: int) -> None:
    """Teacher -> cache -> students on the bundled digits dataset, then a comparison table."""
    from kdcache.cli.progress import CountProgress, TrainProgress
    from kdcache.demo import DemoSettings, format_table, run_demo

    def progress(step: str) -> TrainProgress | CountProgress:
        return TrainProgress() if step == "train" else CountProgress("extract")

    settings = DemoSettings(
        teacher_epochs=teacher_epochs, student_epochs=student_epochs, views=views
    )
    with user_errors():
        rows = run_demo(Path(out), settings, say=click.echo, progress=progress)
    click.echo("")
    click.echo(format_table(rows))
