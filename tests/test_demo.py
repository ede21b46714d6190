"""The built-in default job runs end to end and reports every stage."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from kdcache.cli import main


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline_and_prints_the_table(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--teacher-epochs", "2", "--student-epochs", "1",
            "--views", "2"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    for row in ("teacher resnet20: cross-entropy", "student resnet8: LDRLD from the cache",
                "student resnet8: cross-entropy only"):  # fmt: skip
        assert row in result.output
    assert (out / "cache" / "zarr.json").is_file()
    assert (out / "student_ldrld" / "run.json").is_file()
    # A second run reuses the finished steps and reports the same accuracies (times differ).
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0
    assert table_without_times(again.output) == table_without_times(result.output)


def table_without_times(output: str) -> list[str]:
    return [line.rsplit(maxsplit=1)[0] for line in output.splitlines()[-3:]]
