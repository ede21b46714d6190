"""benchmarks/bench_stream.py runs end to end at its tiny size (its identity check included)."""

from __future__ import annotations

import pytest

from benchmarks import bench_stream


@pytest.mark.slow
def test_the_stream_benchmark_runs_and_reports_every_mode(capsys: pytest.CaptureFixture) -> None:
    report = bench_stream.main(["--tiny", "--batch-sizes", "64", "100"])
    assert sorted(report["rates"]) == [64, 100]
    for rates in report["rates"].values():
        assert len(rates) == 6 and all(value > 0 for value in rates.values())
    assert all(value > 0 for value in report["costs"].values())
    table = capsys.readouterr().out
    assert table.count("| device views, later epochs") == 3 and "| seeded views, 2 workers" in table
