"""experiments/cifar100: the protocol's commands, the report from kept runs, the data split for a
device, and the runner end to end at a tiny size on CPU (digits, resnet8)."""

from __future__ import annotations

import hashlib
import json
import signal
import statistics
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from experiments.cifar100 import commands, protocol, records, report, run, split_data

# -- protocol and commands --------------------------------------------------------------------


def _config(method: str) -> dict:
    import yaml

    return yaml.safe_load((protocol.CONFIG_DIR / f"{method}_{protocol.PAIR}.yaml").read_text())


def test_methods_need_own_flags_only_where_configs_differ_from_loss_defaults() -> None:
    methods = {m.name: m for m in protocol.load_methods(list(protocol.METHODS))}
    dkd_beta = _config("dkd")["loss_params"]["beta"]
    assert methods["dkd"].extra_args == ("--loss-param", f"beta={dkd_beta}")
    warmup = _config("ldrld")["lr-warmup-epochs"]
    assert methods["ldrld"].extra_args == ("--lr-warmup-epochs", str(warmup))
    assert [n for n, m in methods.items() if not m.needs_own_command] == ["ce", "kd", "rld"]


def test_solver_is_the_configs_shared_solver() -> None:
    args = protocol.solver_args()
    flags = dict(zip(args[::2], args[1::2], strict=True))
    kd = _config("kd")
    for key in ("epochs", "batch-size", "lr", "weight-decay", "momentum"):
        assert flags[f"--{key}"] == str(kd[key])


def test_solver_refuses_configs_that_disagree(tmp_path: Path) -> None:
    for name, epochs in (("kd", 240), ("dkd", 200)):
        (tmp_path / f"{name}_pair.yaml").write_text(f"loss: {name}\nepochs: {epochs}\n")
    with pytest.raises(protocol.ProtocolError, match="disagree on epochs"):
        protocol.solver_args(tmp_path, "pair")


def test_config_key_the_runner_would_drop_is_refused(tmp_path: Path) -> None:
    (tmp_path / "kd_pair.yaml").write_text("loss: kd\nlabel-smoothing: 0.1\n")
    with pytest.raises(protocol.ProtocolError, match="label-smoothing"):
        protocol.load_methods(["kd"], tmp_path, "pair")


def _setup(tmp_path: Path, **kw: object) -> commands.TrainSetup:
    return commands.TrainSetup(cache=tmp_path / "cache", data_dir=tmp_path / "data",
                               student="resnet20", solver=("--epochs", "240"), workers=4,
                               **kw)  # type: ignore[arg-type]  # fmt: skip


def test_one_array_command_per_seed_carries_each_methods_settings(tmp_path: Path) -> None:
    methods = protocol.load_methods(list(protocol.METHODS))
    groups = commands.plan_groups(methods, sequential=False)
    assert [[m.name for m in g] for g in groups] == [list(protocol.METHODS)]
    setup = _setup(tmp_path, stream="auto", compile=True)
    args = commands.train_args(setup, groups[0], seed=2, out=tmp_path / "o", time_limit=300,
                               resume=True)  # fmt: skip
    assert args[0] == "train"
    opts = " ".join(args)
    for part in ("--sweep", "--seed 2", "--student resnet20", "--time-limit 300",
                 "--stream auto", "--compile", "--resume", "--epochs 240"):  # fmt: skip
        assert part in opts
    assert "--loss" not in args and "--loss-param" not in args
    entries = {e["name"]: e for e in yaml.safe_load((tmp_path / "o" / "sweep.yaml").read_text())}
    assert list(entries) == list(protocol.METHODS)
    assert entries["dkd"]["loss_params"]["beta"] == _config("dkd")["loss_params"]["beta"]
    assert entries["ldrld"]["lr_warmup_epochs"] == _config("ldrld")["lr-warmup-epochs"]
    assert entries["kd"] == {"name": "kd", "loss": "kd"}
    dkd = commands.train_args(setup, [methods[2]], seed=2, out=tmp_path / "d", time_limit=None,
                              resume=False)  # fmt: skip
    assert "--loss dkd " in " ".join(dkd) and "--loss-param beta=" in " ".join(dkd)
    assert "--time-limit" not in dkd and "--resume" not in dkd
    assert [len(g) for g in commands.plan_groups(methods, sequential=True)] == [1] * 5


def _fake_kdcache(monkeypatch: pytest.MonkeyPatch, code: str) -> None:
    monkeypatch.setattr(commands, "kdcache_command", lambda args: [sys.executable, "-c", code])


def test_command_past_its_deadline_is_interrupted(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_kdcache(monkeypatch, "import time; time.sleep(60)")
    outcome = commands.run_until(["train"], time.monotonic() + 1)
    assert outcome.cut and outcome.code != 0 and outcome.seconds < 30


def test_command_that_ignores_the_interrupt_is_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    # 5 s: the child has long set its handler when the interrupt comes.
    _fake_kdcache(monkeypatch, "import signal, time; signal.signal(signal.SIGINT, "
                  "signal.SIG_IGN); time.sleep(60)")  # fmt: skip
    outcome = commands.run_until(["train"], time.monotonic() + 5, stop_grace=1)
    assert outcome.cut and outcome.code == -signal.SIGKILL and outcome.seconds < 30


def test_command_within_its_deadline_is_not_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_kdcache(monkeypatch, "raise SystemExit(3)")
    outcome = commands.run_until(["train"], time.monotonic() + 60)
    assert (outcome.code, outcome.cut) == (3, False)


# -- the report from kept runs ----------------------------------------------------------------

CARD = "NVIDIA H100 80GB HBM3"


def _kept_run(runs: Path, seed: int, method: str, top1: list[float], planned: int = 240) -> None:
    folder = records.kept_folder(runs, CARD, seed, method)
    folder.mkdir(parents=True)
    run_json = {
        "config": {"loss": method, "seed": seed, "loss_params": {}, "lr_warmup_epochs": 0.0},
        "models": {"student": {"architecture": "resnet20"},
                   "teacher": {"architecture": "resnet56"}},
        "schedule": {"epochs": planned, "batch_size": 64, "lr": 0.05, "weight_decay": 0.0005,
                     "milestones": [150, 180, 210], "lr_decay": 0.1, "opt": "sgd",
                     "momentum": 0.9},
        "dataset": {"name": "cifar100"},
    }  # fmt: skip
    (folder / "run.json").write_text(json.dumps(run_json))
    lines = [json.dumps({"epoch": i + 1, "test_top1": t, "epoch_seconds": 1.5})
             for i, t in enumerate(top1)]  # fmt: skip
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def _curve(seed: int, shift: float, epochs: int = 240) -> list[float]:
    # Distinct per seed and method; the best epoch is not the last one.
    return [40 + shift + seed * 0.37 + 0.1 * i - (0.5 if i == epochs - 1 else 0)
            for i in range(epochs)]  # fmt: skip


def test_report_table_is_computed_from_metrics_and_marks_partial_runs(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    curves = {(s, m): _curve(s, shift) for s in (0, 1) for m, shift in (("ce", 0.0), ("kd", 1.3))}
    for (seed, method), top1 in curves.items():
        _kept_run(runs, seed, method, top1)
    _kept_run(runs, 2, "kd", _curve(2, 1.3, epochs=37))  # cut short: 37 of 240 epochs
    card = runs / records.card_slug(CARD)
    (card / records.RUNNER).write_text(json.dumps({"card": CARD, "teacher_test_top1": 66.42}))
    log = [{"step": "extract cache", "command": "kdcache extract ...", "seconds": 90.0,
            "exit": 0}, {"step": "train", "command": "kdcache train ...", "seconds": 420.0,
            "exit": 0, "cut_by_budget": True}]  # fmt: skip
    (card / records.COMMANDS).write_text("".join(json.dumps(e) + "\n" for e in log))
    doc = tmp_path / "docs" / "results.md"

    report.write_report(runs, doc)

    text = doc.read_text()
    published = report.load_published()[0]["top1"]
    last = {m: [curves[(s, m)][-1] for s in (0, 1)] for m in ("ce", "kd")}
    best = {m: [max(curves[(s, m)]) for s in (0, 1)] for m in ("ce", "kd")}
    for m in ("ce", "kd"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {m} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == "2"  # the partial seed 2 of kd is not counted
        mean_last, mean_best = statistics.mean(last[m]), statistics.mean(best[m])
        assert cells[2] == f"{mean_last:.2f} ± {statistics.stdev(last[m]):.2f}"
        assert cells[3] == f"{mean_best:.2f} ± {statistics.stdev(best[m]):.2f}"
        assert cells[5] == f"{published[m]:.2f}"
    kd_gain = statistics.mean(last["kd"]) - statistics.mean(last["ce"])
    pub_gain = published["kd"] - published["ce"]
    assert f"| {kd_gain:+.2f} | {published['kd']:.2f} | {pub_gain:+.2f} |" in text
    assert f"kd seed 2 ({CARD}): partial, 37 of 240 epochs" in text
    assert "66.42%" in text and f"{report.load_published()[0]['teacher_top1']:.2f}%" in text
    assert "ce < kd" in text
    assert f"**{(90 + 420) / 60:.1f} device-minutes**" in text and ", cut" in text
    assert (doc.parent / "results_cifar100_resnet56_resnet20_240ep.png").stat().st_size > 0


def test_report_names_the_card_a_run_records(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _kept_run(runs, 0, "kd", _curve(0, 0.0, epochs=5))
    run_json = records.kept_folder(runs, CARD, 0, "kd") / "run.json"
    data = json.loads(run_json.read_text())
    run_json.write_text(json.dumps({**data, "device": {"name": "Other GPU"}}))
    doc = tmp_path / "results.md"
    report.write_report(runs, doc)
    assert "kd seed 0 (Other GPU): partial, 5 of 240 epochs" in doc.read_text()


def test_an_arrays_own_record_is_not_a_run(tmp_path: Path) -> None:
    _kept_run(tmp_path, 0, "kd", [50.0])
    (tmp_path / "run.json").write_text(json.dumps({"config": {"loss": "ce,kd", "seed": 0}}))
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "run.json").write_text(json.dumps({"students": 2}))
    assert [r.method for r in records.find_runs(tmp_path)] == ["kd"]


def test_report_keeps_other_sections(tmp_path: Path) -> None:
    doc = tmp_path / "results.md"
    doc.write_text("# R\n\n## " + report.ACCURACY + "\n\nold\n\n## CPU budget\n\nkept text\n")
    report.write_report(tmp_path / "no_runs", doc)
    text = doc.read_text()
    assert "kept text" in text and "old" not in text and "No run of the protocol" in text


# -- the data split for a device --------------------------------------------------------------


def _data_dir(root: Path, files: dict[str, bytes]) -> Path:
    rows = [
        f"| {path} | {len(data):,} | {hashlib.md5(data).hexdigest()} | "
        f"{hashlib.sha256(data).hexdigest()} |"
        for path, data in files.items()
    ]
    root.mkdir(parents=True)
    (root / "README.md").write_text("| path | bytes | md5 | sha256 |\n|---|---:|---|---|\n"
                                    + "\n".join(rows) + "\n")  # fmt: skip
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return root


def test_split_and_join_round_trip(tmp_path: Path) -> None:
    files = {"set/train": bytes(range(256)) * 10, "teachers/t.pth": b"weights"}
    data = _data_dir(tmp_path / "data", files)
    manifest = split_data.split(data, tmp_path / "parts", part_bytes=1000)
    parts = {e["path"]: e["parts"] for e in manifest["files"]}
    assert len(parts["set/train"]) == 3 and len(parts["teachers/t.pth"]) == 1
    assert all((tmp_path / "parts" / p).stat().st_size <= 1000 for p in parts["set/train"])
    joined = split_data.join(tmp_path / "parts", tmp_path / "out")
    assert {p.relative_to(tmp_path / "out").as_posix() for p in joined} == set(files)
    for path, content in files.items():
        assert (tmp_path / "out" / path).read_bytes() == content
    assert split_data.join(tmp_path / "parts", tmp_path / "out") == joined  # again: a no-op


def test_join_refuses_a_damaged_part(tmp_path: Path) -> None:
    data = _data_dir(tmp_path / "data", {"train": b"x" * 3000})
    split_data.split(data, tmp_path / "parts", part_bytes=1000)
    part = tmp_path / "parts" / "train.part1"
    part.write_bytes(b"y" + part.read_bytes()[1:])
    with pytest.raises(split_data.DataError, match="train: the joined parts"):
        split_data.join(tmp_path / "parts", tmp_path / "out")
    assert not (tmp_path / "out" / "train").exists()
    (tmp_path / "parts" / "train.part2").unlink()
    with pytest.raises(split_data.DataError, match=r"parts missing .*train\.part2"):
        split_data.join(tmp_path / "parts", tmp_path / "out")


def test_split_refuses_a_file_that_is_not_the_listed_one(tmp_path: Path) -> None:
    data = _data_dir(tmp_path / "data", {"train": b"abc"})
    (data / "train").write_bytes(b"abd")
    with pytest.raises(split_data.DataError, match="does not match"):
        split_data.split(data, tmp_path / "parts")


# -- the runner end to end, tiny, on CPU ------------------------------------------------------


def test_runner_with_no_budget_left_runs_nothing_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run.main(["--dataset", "digits", "--teacher", "resnet8", "--student", "resnet8",
                     "--teacher-weights", str(tmp_path / "none.pth"), "--budget-minutes", "0.001",
                     "--seeds", "0", "--methods", "ce", "--work", str(tmp_path / "w"),
                     "--runs", str(tmp_path / "runs")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "extract cache: not started (budget spent)" in out
    assert "seed 0 ce     not started" in out
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sequential", "array"])
def test_runner_and_report_end_to_end_tiny(
    tmp_path: Path, digits_teacher_weights: Path, mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if mode == "array" and not commands.train_has_option("--time-limit"):
        pytest.skip("this kdcache train has no student arrays / --time-limit yet")
    runs, work = tmp_path / "runs", tmp_path / "work"
    argv = ["--dataset", "digits", "--teacher", "resnet8", "--student", "resnet8",
            "--teacher-weights", str(digits_teacher_weights), "--views", "2", "--epochs", "2",
            "--methods", "ce,kd", "--seeds", "0", "--workers", "0", "--work", str(work),
            "--runs", str(runs), "--archive", str(tmp_path / "out" / "runs.tar.gz"),
            *(["--sequential"] if mode == "sequential" else [])]  # fmt: skip
    assert run.main(argv) == 0
    (card,) = [p for p in runs.iterdir() if p.is_dir()]
    for method in ("ce", "kd"):
        kept = card / "seed0" / method
        assert sorted(p.name for p in kept.iterdir()) == sorted(records.KEPT)
        assert records.read_run(kept).finished and records.read_run(kept).method == method
    trains = [e for e in records.read_jsonl(card / records.COMMANDS) if e["step"] == "train"]
    assert trains and all(e["exit"] == 0 for e in trains)
    with tarfile.open(tmp_path / "out" / "runs.tar.gz") as tar:
        assert f"{card.name}/seed0/kd/metrics.jsonl" in tar.getnames()
    assert "seed 0 kd     finished 2/2 epochs" in capsys.readouterr().out

    # Again: everything is finished, so nothing is trained a second time.
    assert run.main(argv) == 0
    again = [e for e in records.read_jsonl(card / records.COMMANDS) if e["step"] == "train"]
    assert again == trains

    # KD cut short after its first epoch (what a --time-limit stop leaves), then the report.
    metrics = card / "seed0" / "kd" / "metrics.jsonl"
    metrics.write_text(metrics.read_text().splitlines()[0] + "\n")
    doc = tmp_path / "docs" / "results.md"
    report.write_report(runs, doc)
    text = doc.read_text()
    ce = records.read_run(card / "seed0" / "ce")
    assert f"| ce | 1 | {ce.last_top1:.2f} | {ce.best_top1:.2f} |" in text
    assert "| kd | 0 | - | - |" in text
    assert "kd seed 0" in text and "partial, 1 of 2 epochs" in text
    assert "### digits: resnet8 -> resnet8, 2 epochs" in text
    assert (doc.parent / "results_digits_resnet8_resnet8_2ep.png").is_file()
