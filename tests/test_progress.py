"""Progress output: the schedule up front, epoch summaries, plain lines off a terminal."""

from __future__ import annotations

import io

from click.testing import CliRunner

from kdcache.cli import main
from kdcache.cli.progress import CountProgress, Meter


def cli(args: list[object]) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def test_off_a_terminal_progress_is_plain_lines_with_total_and_eta() -> None:
    stream = io.StringIO()  # not a TTY, like a log file
    meter = Meter("epoch 1/3", 1000, stream=stream, interval=0.0)
    for _ in range(4):
        meter.update(250, loss=1.5, lr=0.05)
    meter.note("evaluating on 359 images")
    meter.close()
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 5
    assert lines[0].startswith("epoch 1/3: 250/1000 img (25%) [")
    assert "<" in lines[0] and "loss=1.5" in lines[0] and "lr=0.05" in lines[0]  # ETA, postfix
    assert lines[-1].endswith("evaluating on 359 images]")


def test_off_a_terminal_plain_lines_are_rate_limited() -> None:
    stream = io.StringIO()
    meter = Meter("extract", 100, stream=stream, interval=3600.0)
    for _ in range(10):
        meter.update(10)
    # One line at the first update (the log shows the phase started, with its total), then none
    # until the interval has passed.
    assert stream.getvalue().splitlines() == [stream.getvalue().splitlines()[0]]
    assert stream.getvalue().startswith("extract: 10/100 img (10%)")


def test_extraction_progress_shows_what_an_earlier_run_already_did() -> None:
    stream = io.StringIO()
    progress = CountProgress("extract", stream=stream)
    progress.start(total=2000, done=1500)
    assert progress._meter is not None
    progress._meter.interval = 0.0
    progress(100)
    assert stream.getvalue().startswith("extract (1,500 already done): 1600/2000 img (80%)")


def test_train_prints_its_schedule_and_each_epoch_without_carriage_returns(tmp_path) -> None:
    code, output = cli(["train", "--dataset", "digits", "--student", "resnet8", "--epochs", "2",
                        "--max-samples", "64", "--workers", "0", "--device", "cpu",
                        "--out", tmp_path / "run"])  # fmt: skip
    assert code == 0, output
    lines = output.splitlines()
    [schedule] = [line for line in lines if line.startswith("train: ")]
    assert schedule.startswith("train: resnet8, loss ce (ce 1): 2 epochs, batch 64, SGD lr 0.05")
    assert schedule.endswith("after epochs 1 (cifar protocol)")
    assert any(line.startswith("epoch 1/2: loss ") and "test top-1" in line for line in lines)
    assert any(line.startswith("epoch 2/2: loss ") for line in lines)
    assert any("evaluating on" in line for line in lines)  # the evaluation is visible
    assert "\r" not in output
    assert "for 2 epochs" in output


def test_an_unknown_loss_lists_ce_suggests_and_draws_no_bar_first(tmp_path) -> None:
    code, output = cli(["train", "--dataset", "digits", "--student", "resnet8", "--loss", "dkdd",
                        "--out", tmp_path / "run"])  # fmt: skip
    assert code == 1
    assert "ce, " in output and "Did you mean dkd" in output
    assert output.startswith("Error:") and "img" not in output and "\r" not in output
    assert not (tmp_path / "run").exists()


def test_one_epoch_reads_in_the_singular(tmp_path) -> None:
    code, output = cli(["train", "--dataset", "digits", "--student", "resnet8", "--epochs", "1",
                        "--max-samples", "64", "--workers", "0", "--device", "cpu",
                        "--no-progress", "--out", tmp_path / "run"])  # fmt: skip
    assert code == 0, output
    assert "for 1 epoch:" in output and "evaluating" not in output
