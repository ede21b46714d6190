"""configs/: one YAML per published setting; each parses to the paper's numbers and starts a run."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from kdcache.cli import main
from kdcache.losses.objective import build_objective
from kdcache.training.config import TrainConfig, load_yaml_settings, resolve_schedule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL = sorted(CONFIGS.rglob("*.yaml"))
IDS = [str(p.relative_to(CONFIGS)) for p in ALL]
# Starting a run costs a few seconds each: two in the quick loop, the others marked slow.
QUICK = {"cifar100/ldrld_res32x4_res8x4.yaml", "imagenet/rld_r34_r18.yaml"}
STARTS = [
    pytest.param(p, id=i, marks=() if i in QUICK else pytest.mark.slow)
    for p, i in zip(ALL, IDS, strict=True)
]

# The solvers the configs must carry (mdistiller's CIFAR-100 and ImageNet settings).
SOLVERS = {
    "cifar100": dict(epochs=240, lr=0.05, batch_size=64, weight_decay=5e-4,
                     milestones=(150, 180, 210), dataset="cifar100"),
    "imagenet": dict(epochs=100, lr=0.2, batch_size=512, weight_decay=1e-4,
                     milestones=(30, 60, 90), dataset="imagefolder"),
}  # fmt: skip
# loss -> {pair: loss hyper-parameters} from docs/losses.md's "Published per-pair settings".
LOSS_PARAMS = {
    ("kd", "res32x4_res8x4"): {"temperature": 4},
    ("kd", "res56_res20"): {"temperature": 4},
    ("dkd", "res32x4_res8x4"): {"alpha": 1.0, "beta": 8.0, "temperature": 4},
    ("dkd", "res56_res20"): {"alpha": 1.0, "beta": 2.0, "temperature": 4},
    ("rld", "res32x4_res8x4"): {"alpha": 1.0, "beta": 8.0, "temperature": 4},
    ("rld", "res56_res20"): {"alpha": 1.0, "beta": 8.0, "temperature": 4},
    ("ldrld", "res32x4_res8x4"): {"k": 7, "temperature": 4, "alpha": 10.5, "beta": 7.0},
    ("ldrld", "res56_res20"): {"k": 7, "temperature": 4, "alpha": 10.5, "beta": 7.0},
    ("dkd", "r34_r18"): {"alpha": 1.0, "beta": 0.5, "temperature": 1},
    ("rld", "r34_r18"): {"alpha": 1.0, "beta": 0.5, "temperature": 1, "alpha_temperature": 1.0},
}


def test_the_published_settings_are_all_there() -> None:
    names = {(p.parent.name, p.stem) for p in ALL}
    for loss in ("kd", "dkd", "rld", "ldrld"):
        for pair in ("res32x4_res8x4", "res56_res20"):
            assert ("cifar100", f"{loss}_{pair}") in names
    assert ("imagenet", "rld_r34_r18") in names


@pytest.mark.parametrize("path", ALL, ids=IDS)
def test_each_config_resolves_to_the_papers_solver_and_loss(path: Path) -> None:
    config = TrainConfig.from_dict(load_yaml_settings(str(path)))
    solver = SOLVERS[path.parent.name]
    schedule = resolve_schedule(config, str(solver["dataset"]), 50_000)
    assert (schedule.epochs, schedule.lr, schedule.batch_size) == (
        solver["epochs"], solver["lr"], solver["batch_size"])  # fmt: skip
    assert schedule.weight_decay == solver["weight_decay"]
    assert schedule.milestones == solver["milestones"] and schedule.lr_decay == 0.1
    assert (schedule.opt, schedule.momentum, schedule.sched) == ("sgd", 0.9, "step")
    loss, _, pair = path.stem.partition("_")
    assert config.loss == loss and config.loss_params == LOSS_PARAMS[(loss, pair)]
    objective = build_objective(loss, warmup_epochs=schedule.warmup_epochs,
                                ce_weight=config.ce_weight, distill_weight=config.distill_weight,
                                **config.loss_params)  # fmt: skip
    if loss == "kd":
        assert (objective.ce_weight, objective.distill_weight) == (0.1, 0.9)
    if loss in ("dkd", "rld"):  # the loss warm-up: 20 epochs of 240 (CIFAR), 1 of 100 (ImageNet)
        assert objective.warmup_epochs == (20 if path.parent.name == "cifar100" else 1)
    else:
        assert objective.warmup_epochs == 0
    assert schedule.lr_warmup_epochs == (20 if loss == "ldrld" else 0)
    assert (config.student, config.cache) != (None, None)


WARMED = [p for p in ALL if p.stem.startswith(("dkd", "rld"))]


@pytest.mark.parametrize("path", WARMED, ids=[str(p.relative_to(CONFIGS)) for p in WARMED])
def test_a_configs_loss_warm_up_scales_with_epochs_as_the_flags_do(path: Path) -> None:
    settings = {**load_yaml_settings(str(path)), "epochs": 24}
    dataset = SOLVERS[path.parent.name]["dataset"]
    schedule = resolve_schedule(TrainConfig.from_dict(settings), str(dataset), 50_000)
    assert schedule.warmup_epochs == (2 if path.parent.name == "cifar100" else 0.24)


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory: pytest.TempPathFactory, digits_teacher_weights: Path) -> Path:
    out = tmp_path_factory.mktemp("cache") / "digits"
    args = ["extract", "--teacher", "resnet8", "--weights", digits_teacher_weights, "--dataset",
            "digits", "--dtype", "float32", "--workers", "0", "--out", out,
            "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("path", STARTS)
def test_each_config_starts_a_run(path: Path, digits_cache: Path, tmp_path: Path) -> None:
    """The config as a user loads it, on the digits cache, for one step of 64 samples."""
    args = [
        "train",
        "--config",
        path,
        "--cache",
        digits_cache,
        "--epochs",
        "1",
        "--max-samples",
        "64",
        "--batch-size",
        "64",
        "--eval-every",
        "0",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--student-preprocessing",
        "dataset",
        "--out",
        tmp_path / "run",
        "--lr-warmup-epochs",
        "0",
        "--no-progress",
    ]  # fmt: skip (LDRLD's 20-epoch lr warm-up exceeds 1 epoch)
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    loss = path.stem.partition("_")[0]
    assert f"loss {loss} (" in result.output and "1 epoch, batch 64, SGD lr" in result.output
    assert (tmp_path / "run" / "last.pt").is_file()
