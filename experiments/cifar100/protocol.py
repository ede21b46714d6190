"""The papers' CIFAR-100 protocol as ``kdcache train`` arguments, read from configs/cifar100/.

The solver (batch 64, SGD 0.05, weight decay 5e-4, lr x0.1 at 150/180/210 of 240 epochs) is the
same for every method; each method's loss settings come from its ``<method>_<pair>.yaml``. Only
the settings that differ from the loss's registered defaults (``kdcache losses``) become extra
flags: those are what a student array given ``--loss a,b,c`` alone could not express (for
resnet56 -> resnet20, DKD's beta 2 and LDRLD's 20-epoch lr warm-up).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kdcache.losses import loss_info

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "configs" / "cifar100"
METHODS = ("ce", "kd", "dkd", "rld", "ldrld")
PAIR = "res56_res20"  # teacher resnet56, student resnet20: the table of issue 23

# Options every method shares (the solver); they must agree across the pair's configs.
SOLVER_KEYS = ("protocol", "opt", "sched", "epochs", "batch-size", "lr", "momentum", "weight-decay")
# Where the config names the run's own paths and models: the runner sets these itself.
RUNNER_KEYS = ("cache", "student", "out")
LOSS_KEYS = ("loss", "loss_params", "lr-warmup-epochs", "ce-weight", "distill-weight",
             "warmup-epochs")  # fmt: skip


class ProtocolError(ValueError):
    """The configs do not describe one protocol (what to fix is in the message)."""


@dataclass(frozen=True)
class Method:
    """One method of the table: its loss name and the flags it needs beyond ``--loss NAME``."""

    name: str
    extra_args: tuple[str, ...]

    @property
    def sweep_entry(self) -> dict[str, Any]:
        """The method as one entry of a ``kdcache train --sweep`` file: its folder name, its loss
        and the settings of :attr:`extra_args` (TrainConfig field names)."""
        entry: dict[str, Any] = {"name": self.name, "loss": self.name}
        flags = self.extra_args
        for flag, value in zip(flags[::2], flags[1::2], strict=True):
            if flag == "--loss-param":
                key, _, raw = value.partition("=")
                entry.setdefault("loss_params", {})[key] = yaml.safe_load(raw)
            else:
                entry[flag.removeprefix("--").replace("-", "_")] = yaml.safe_load(value)
        return entry

    @property
    def needs_own_command(self) -> bool:
        """True when ``--loss NAME`` with the loss's defaults is not this method's setting."""
        return bool(self.extra_args)


def _read(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ProtocolError(f"{path} is not a YAML mapping of option: value")
    unknown = set(data) - set(SOLVER_KEYS) - set(RUNNER_KEYS) - set(LOSS_KEYS)
    if unknown:
        # A key the runner does not pass on would silently change the protocol: refuse.
        raise ProtocolError(
            f"{path} sets {', '.join(sorted(unknown))}, which experiments/cifar100/protocol.py "
            "does not pass on; add it to SOLVER_KEYS or LOSS_KEYS there"
        )
    return data


def _configs(config_dir: Path, pair: str) -> dict[str, dict[str, Any]]:
    found = {p.name.removesuffix(f"_{pair}.yaml"): _read(p)
             for p in sorted(config_dir.glob(f"*_{pair}.yaml"))}  # fmt: skip
    if not found:
        raise ProtocolError(f"no configs named *_{pair}.yaml in {config_dir}")
    return found


def solver_args(config_dir: Path = CONFIG_DIR, pair: str = PAIR) -> list[str]:
    """The shared solver as flags, e.g. ``--epochs 240 --batch-size 64 ...``."""
    configs = _configs(config_dir, pair)
    args: list[str] = []
    for key in SOLVER_KEYS:
        values = {str(c[key]) for c in configs.values() if key in c}
        if len(values) > 1:
            raise ProtocolError(
                f"the {pair} configs in {config_dir} disagree on {key} "
                f"({', '.join(sorted(values))})"
            )
        if values:
            args += [f"--{key}", values.pop()]
    return args


def _differs(value: Any, default: Any) -> bool:
    if isinstance(value, int | float) and isinstance(default, int | float):
        return float(value) != float(default)
    return bool(value != default)


def _extra_args(name: str, config: dict[str, Any]) -> tuple[str, ...]:
    if config.get("loss", name) != name:
        raise ProtocolError(f"the {name} config trains loss {config['loss']!r}, not {name!r}")
    info = loss_info(name)
    args: list[str] = []
    defaults = info.defaults
    for key, value in (config.get("loss_params") or {}).items():
        if key not in defaults:
            raise ProtocolError(f"the {name} config sets loss_params.{key}, which {name} lacks")
        if _differs(value, defaults[key]):
            args += ["--loss-param", f"{key}={value}"]
    registered = {"ce-weight": info.ce_weight, "distill-weight": info.distill_weight,
                  "warmup-epochs": info.warmup_epochs, "lr-warmup-epochs": 0.0}  # fmt: skip
    for key, default in registered.items():
        if key in config and _differs(config[key], default):
            args += [f"--{key}", str(config[key])]
    return tuple(args)


def load_methods(
    names: list[str], config_dir: Path = CONFIG_DIR, pair: str = PAIR
) -> list[Method]:
    """The methods ``names`` with their published settings (``ce`` needs no config: labels only)."""
    configs = _configs(config_dir, pair)
    methods = []
    for name in names:
        if name == "ce":
            methods.append(Method("ce", ()))
            continue
        if name not in configs:
            raise ProtocolError(
                f"no config for method {name!r} in {config_dir} (*_{pair}.yaml); "
                f"known: ce, {', '.join(sorted(configs))}"
            )
        methods.append(Method(name, _extra_args(name, configs[name])))
    return methods
