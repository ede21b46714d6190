"""benchmarks/gpu_check.py runs end to end at its tiny size on CPU, so it works when a GPU comes;
its time budget skips (never fakes) what does not fit."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks import gpu_check
from benchmarks._budget import Budget


def _checks(budget: Budget) -> tuple[gpu_check.Checks, dict[str, Any]]:
    report: dict[str, Any] = {"train": [], "array": {}}
    return gpu_check.Checks(report, budget, lambda: None), report


def test_what_does_not_fit_the_budget_is_recorded_as_skipped_not_run() -> None:
    checks, report = _checks(Budget(10.0))
    ran = []
    for guess in (1.0, 60.0):
        item = gpu_check.Item("train", {"guess": guess}, "k", lambda g=guess: g,
                              lambda g=guess: ran.append(g) or {"images_per_s": 1.0})  # fmt: skip
        checks.attempt(item)
    assert ran == [1.0]
    assert report["train"][0]["status"] == "measured"
    skipped = report["train"][1]
    assert skipped["status"] == "skipped"
    assert "time budget" in skipped["reason"] and "images_per_s" not in skipped


def test_a_measurement_running_past_the_budget_is_stopped_and_the_rest_skipped() -> None:
    budget = Budget(0.3)
    checks, report = _checks(budget)
    with budget.hard_stop():
        for _ in range(2):
            checks.attempt(gpu_check.Item("train", {}, "k", lambda: 0.0,
                                          lambda: time.sleep(5) or {}))  # fmt: skip
    assert budget.elapsed() < 3
    assert [r["reason"] for r in report["train"]] == [
        "interrupted: the time budget ran out", "time budget: spent"]  # fmt: skip


def test_a_failing_measurement_is_recorded_and_the_next_one_runs() -> None:
    checks, report = _checks(Budget(None))

    def boom() -> dict[str, Any]:
        raise RuntimeError("no kernel image")

    checks.attempt(gpu_check.Item("array", {}, "a", lambda: 0.0, boom))
    checks.attempt(gpu_check.Item("train", {}, "t", lambda: 0.0, lambda: {"x": 1}))
    assert report["array"]["status"] == "failed" and "no kernel image" in report["array"]["error"]
    assert report["train"][0]["status"] == "measured"


@pytest.mark.slow
def test_the_gpu_check_runs_on_cpu_and_reports_every_figure(tmp_path: Path) -> None:
    report = gpu_check.main(["--out", str(tmp_path), "--tiny", "--device", "cpu"])
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == report
    assert [c["case"] for c in report["cases"]] == [
        "digits_resnet8",
        "digits_mixed",
        "jpeg_test_resnet",
    ]
    for case in report["cases"]:
        # On CPU the determinism contract holds: the verdicts must come out true here.
        assert case["bytes_independent_of_batch_size"] and case["cached_equals_online"]
        assert case["train_steps"] > 0 and case["first_differing_step"] is None
        assert case["cached_repeat_identical"]
        for key in ("extract_images_per_s", "bare_forward_images_per_s",
                    "train_cached_images_per_s", "train_online_images_per_s",
                    "train_ce_images_per_s"):  # fmt: skip
            assert case[key] > 0, key
    # Every batch x mode x step x stream, the eager ones measured, the compiled ones skipped
    # with the reason (compiling on the CPU is too slow for --tiny).
    runs = {(r["batch"], r["mode"], r["compiled"], r["stream"]): r for r in report["train"]}
    assert len(runs) == len(report["train"]) == 2 * 3 * 2 * 2
    for (_, _, compiled, _), r in runs.items():
        if compiled:
            assert r["status"] == "skipped" and "torch.compile" in r["reason"]
        else:
            assert r["status"] == "measured" and r["images_per_s"] > 0
            assert r["steps_per_epoch"] == report["samples_per_epoch"] // r["batch"]
    array = report["array"]
    assert array["status"] == "measured"
    assert [s["loss"] for s in array["students"]] == ["ce", "kd", "dkd", "rld", "ldrld"]
    assert all(s["images_per_s"] > 0 for s in array["students"])
    assert array["aggregate_images_per_s"] > 0
    assert array["alone"]["equal"] and array["alone"]["steps"] > 0  # CPU: bit-identical
    floors = [f for f in report["kernel_floor"] if f["status"] == "measured"]
    assert len(floors) == 2 and all(f["busy_ms_per_step"] > 0 for f in floors)
    assert all(f["kernels_per_step"] > 0 and f["floor_images_per_s"] > 0 for f in floors)
    goals = {g["goal"]: g for g in report["goals"]}
    assert len(goals) == 5 and all(g["value"] is not None for g in goals.values())
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.count("| digits_resnet8") == 1 and table.count("| jpeg_test_resnet") == 1
    assert "| from the cache / CE-only |" in table and "Array of 5 students" in table
