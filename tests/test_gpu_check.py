"""benchmarks/gpu_check.py runs end to end at its tiny size on CPU, so it works when a GPU comes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import gpu_check


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
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.count("| digits_resnet8") == 1 and table.count("| jpeg_test_resnet") == 1
