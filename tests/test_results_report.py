"""experiments/cifar100/report.py writes commands a reader can run in a checkout: no machine's
absolute paths, the dataset root as DATA."""

from __future__ import annotations

from pathlib import Path

from experiments.cifar100.report import REPO, readable_commands


def test_commands_name_the_data_as_DATA_and_the_work_folder_relatively(tmp_path: Path) -> None:
    data = tmp_path / "shared" / "data"
    inside = REPO / "experiments" / "cifar100" / "work"
    log = f"kdcache train --cache {inside}/cache --data-dir {data} --weights {data}/t.pth"
    assert readable_commands(log, inside, data) == (
        "kdcache train --cache experiments/cifar100/work/cache --data-dir DATA --weights DATA/t.pth"
    )
    outside = tmp_path / "elsewhere"
    assert readable_commands(f"--out {outside}/ce", outside, data) == "--out WORK/ce"


def test_the_published_results_hold_no_absolute_paths() -> None:
    text = (REPO / "docs" / "results.md").read_text()
    commands = text.split("## Exact commands", 1)[1].split("```")[1]  # the fenced block
    assert "--data-dir DATA" in commands
    assert not [w for w in commands.split() if w.startswith("/") or w.startswith("--out=/")]
