"""Write the protocol sections of docs/results.md (and a curves PNG) from the kept runs.

    python experiments/cifar100/report.py [--runs experiments/cifar100/runs]
                                          [--report docs/results.md]

Every figure comes from the kept runs' own files (run.json, metrics.jsonl) and the runner's
records (runner.json, commands.jsonl), or from published.json (the papers' figures). A run with
fewer epochs than its schedule is listed as partial, never in the table. Other sections of the
report (the CPU-budget results, the discussion) are left as they are.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: the checkout's packages first
    sys.path.insert(0, str(REPO))

from benchmarks._docs import write_section  # noqa: E402
from experiments.cifar100 import records  # noqa: E402
from experiments.cifar100.commands import readable_commands  # noqa: E402, F401 (re-exported)
from experiments.cifar100.protocol import METHODS  # noqa: E402

PUBLISHED = Path(__file__).with_name("published.json")
ACCURACY = "The papers' protocol: accuracy"
COST = "The papers' protocol: device time and commands"
HEADER = (
    "# Results: CIFAR-100, ResNet-56 -> resnet20\n\n"
    "The protocol sections are written by `experiments/cifar100/report.py` from the runs that "
    "`experiments/cifar100/run.py` kept under `experiments/cifar100/runs/`; no figure in them is "
    "typed by hand.\n"
)
Setup = tuple[str, str, str, int]  # dataset, teacher, student, planned epochs


@dataclass
class MethodRuns:
    """One method's runs in one setup: finished (one per seed) and partial ones."""

    name: str
    finished: list[tuple[str, records.RunRecord]] = field(default_factory=list)
    partial: list[tuple[str, records.RunRecord]] = field(default_factory=list)

    def last(self) -> list[float]:
        return [r.last_top1 for _, r in self.finished if r.last_top1 is not None]

    def best(self) -> list[float]:
        return [r.best_top1 for _, r in self.finished if r.best_top1 is not None]


def load_published(path: Path = PUBLISHED) -> list[dict[str, Any]]:
    return list(json.loads(path.read_text())["tables"])


def published_for(setup: Setup, tables: list[dict[str, Any]]) -> dict[str, Any] | None:
    for table in tables:
        if (table["dataset"], table["teacher"], table["student"], table["epochs"]) == setup:
            return table
    return None


def group_runs(kept: list[tuple[str, records.RunRecord]]) -> dict[Setup, dict[str, MethodRuns]]:
    """Runs by setup and method. One run per (method, seed): the one with most epochs (a seed
    finished on one card supersedes its partial run on another)."""
    by_seed: dict[tuple[Setup, str, int], tuple[str, records.RunRecord]] = {}
    for card, run in kept:
        key = (run.setup, run.method, run.seed)
        if key not in by_seed or run.epochs_done > by_seed[key][1].epochs_done:
            by_seed[key] = (card, run)
    groups: dict[Setup, dict[str, MethodRuns]] = defaultdict(dict)
    for (setup, method, _), (card, run) in sorted(by_seed.items(), key=lambda x: x[0][2]):
        entry = groups[setup].setdefault(method, MethodRuns(method))
        (entry.finished if run.finished else entry.partial).append((card, run))
    order = {m: i for i, m in enumerate(METHODS)}
    return {
        setup: dict(sorted(methods.items(), key=lambda x: (order.get(x[0], len(order)), x[0])))
        for setup, methods in sorted(groups.items())
    }


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _signed(x: float) -> str:
    return f"{x:+.2f}"


def _card_names(runs_dir: Path) -> dict[str, dict[str, Any]]:
    """Per card folder, the runner's record (card name, torch, cache, teacher)."""
    out = {}
    for path in sorted(runs_dir.glob(f"*/{records.RUNNER}")):
        out[path.parent.name] = json.loads(path.read_text())
    return out


def card_of(folder: str, run: records.RunRecord, cards: dict[str, dict[str, Any]]) -> str:
    """The device a run trained on: its run.json's record when it has one, else the runner's
    record for the card folder it was kept in, else that folder's name."""
    device = run.run.get("device")
    if isinstance(device, dict) and device.get("name"):
        return str(device["name"])
    return str(cards.get(folder, {}).get("card", folder))


def _title(setup: Setup) -> str:
    dataset, teacher, student, epochs = setup
    return f"{dataset}: {teacher} -> {student}, {epochs} epochs"


def _png_name(setup: Setup) -> str:
    dataset, teacher, student, epochs = setup
    return f"results_{dataset}_{teacher}_{student}_{epochs}ep.png"


def _settings(methods: dict[str, MethodRuns]) -> str:
    """Each method's loss settings as its runs recorded them (the first run of each)."""
    parts = []
    for name, entry in methods.items():
        run = (entry.finished or entry.partial)[0][1].run
        config = run["config"]
        shown = [f"{k}={v}" for k, v in (config.get("loss_params") or {}).items()]
        if config.get("lr_warmup_epochs"):
            shown.append(f"lr warm-up {config['lr_warmup_epochs']:g} epochs")
        parts.append(f"{name} ({', '.join(shown) or 'its defaults'})")
    return "; ".join(parts)


def _schedule(run: dict[str, Any]) -> str:
    s = run["schedule"]
    milestones = ", ".join(map(str, s["milestones"])) or "(none)"
    return (
        f"{s['epochs']} epochs, batch {s['batch_size']}, {s['opt'].upper()} lr {s['lr']} "
        f"momentum {s['momentum']}, weight decay {s['weight_decay']}, lr x{s['lr_decay']} after "
        f"epochs {milestones}"
    )


def _teacher_line(setup: Setup, cards: dict[str, dict[str, Any]], used: set[str],
                  published: dict[str, Any] | None) -> str:  # fmt: skip
    measured = [(c, cards[c]["teacher_test_top1"]) for c in sorted(used)
                if c in cards and cards[c].get("teacher_test_top1") is not None]  # fmt: skip
    ours = ", ".join(f"**{top1:.2f}%** ({cards[c]['card']})" for c, top1 in measured)
    line = f"- **Teacher**: {setup[1]}, top-1 on the test split {ours or 'not recorded'}"
    if published:
        line += (
            f"; the papers' teacher: {published['teacher_top1']:.2f}%. With a different teacher "
            "what must reproduce is each method's gain over CE and the order of the methods, "
            "not the absolute figures."
        )
    return line + "."


def _cache_line(cards: dict[str, dict[str, Any]], used: set[str]) -> str:
    lines = []
    for c in sorted(used):
        cache = cards.get(c, {}).get("cache")
        if cache:
            lines.append(
                f"{cache['views']} `{cache['recipe']}` views x {cache['samples']:,} samples, "
                f"{cache['storage']} (fingerprint {cache['fingerprint'][:12]}, on "
                f"{cards[c]['card']})"
            )
    return "- **Cache**: " + ("; ".join(lines) or "not recorded") + "."


def _table(methods: dict[str, MethodRuns], published: dict[str, Any] | None) -> list[str]:
    ce = methods.get("ce")
    ce_last = statistics.mean(ce.last()) if ce and ce.last() else None
    pub = (published or {}).get("top1", {})
    lines = [
        "| method | seeds finished | last-epoch top-1 (%) | best-epoch top-1 (%) | "
        "gain over CE (last) | published top-1 | published gain over CE |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, entry in methods.items():
        last = entry.last()
        gain = "-" if ce_last is None or not last or name == "ce" else _signed(
            statistics.mean(last) - ce_last
        )  # fmt: skip
        pub_top1 = f"{pub[name]:.2f}" if name in pub else "-"
        pub_gain = "-"
        if name in pub and "ce" in pub and name != "ce":
            pub_gain = _signed(pub[name] - pub["ce"])
        lines.append(
            f"| {name} | {len(entry.finished)} | {mean_std(last)} | {mean_std(entry.best())} | "
            f"{gain} | {pub_top1} | {pub_gain} |"
        )
    return lines


def _order(methods: dict[str, MethodRuns], published: dict[str, Any] | None) -> str:
    ours = {n: statistics.mean(e.last()) for n, e in methods.items() if e.last()}
    line = "Order by mean last-epoch top-1, ours: " + (
        " < ".join(sorted(ours, key=lambda n: ours[n])) or "(no finished run)"
    )
    if published:
        pub = {n: v for n, v in published["top1"].items() if n in methods}
        line += "; the papers': " + " < ".join(sorted(pub, key=lambda n: pub[n]))
    return line + "."


def _partial(methods: dict[str, MethodRuns], cards: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for name, entry in methods.items():
        for card, run in entry.partial:
            top1 = f", top-1 at its last epoch {run.last_top1:.2f}%" if run.last_top1 else ""
            lines.append(
                f"- {name} seed {run.seed} ({card_of(card, run, cards)}): partial, "
                f"{run.epochs_done} of {run.planned_epochs} epochs{top1}"
            )
    if not lines:
        return []
    return ["", "Partial runs (cut short by a budget; not results, not in the table):", *lines]


def plot(methods: dict[str, MethodRuns], setup: Setup, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, entry) in enumerate(methods.items()):
        color = colors[i % len(colors)]
        for j, (_, run) in enumerate([*entry.finished, *entry.partial]):
            epochs = [r["epoch"] for r in run.metrics if r.get("test_top1") is not None]
            top1 = [r["test_top1"] for r in run.metrics if r.get("test_top1") is not None]
            ax.plot(epochs, top1, "-" if run.finished else "--", color=color, linewidth=1,
                    label=name if j == 0 else None)  # fmt: skip
    ax.set(xlabel="epoch", ylabel="test top-1 (%)",
           title=f"{_title(setup)} (one line per seed; dashed: partial)")  # fmt: skip
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)


def accuracy_section(runs_dir: Path, png_dir: Path) -> str:
    groups = group_runs(records.kept_runs(runs_dir))
    if not groups:
        return (
            "No run of the protocol has been kept yet: it needs a GPU (issue 23). "
            "`experiments/cifar100/README.md` says how to run it on a device and bring the runs "
            "back; this section is then written from them."
        )
    cards, tables = _card_names(runs_dir), load_published()
    out: list[str] = []
    for setup, methods in groups.items():
        published = published_for(setup, tables)
        used = {c for e in methods.values() for c, _ in [*e.finished, *e.partial]}
        first = next(iter(methods.values()))
        schedule = _schedule((first.finished or first.partial)[0][1].run)
        seeds = sorted({r.seed for e in methods.values() for _, r in [*e.finished, *e.partial]})
        plot(methods, setup, png_dir / _png_name(setup))
        out += [
            f"### {_title(setup)}",
            "",
            _teacher_line(setup, cards, used, published),
            _cache_line(cards, used),
            f"- **Schedule** (from the runs' run.json): {schedule}.",
            f"- **Loss settings**: {_settings(methods)}.",
            f"- **Seeds**: {', '.join(map(str, seeds))}.",
            "",
            *_table(methods, published),
            "",
            "Mean ± sample standard deviation over the finished seeds (one seed: its value). "
            "Last epoch: test top-1 after the final epoch; best epoch: the highest test top-1 "
            "over the run's epochs (what the papers' code reports). Gain over CE: difference of "
            "the means, same teacher and protocol."
            + (f" Published: {published_source(published)}." if published else ""),
            "",
            _order(methods, published),
            *_partial(methods, cards),
            "",
            f"![test top-1 per epoch]({_png_name(setup)})",
            "",
        ]
    return "\n".join(out)


def published_source(published: dict[str, Any]) -> str:
    return "; ".join(f"{m}: {s}" for m, s in published["sources"].items())


def cost_section(runs_dir: Path) -> str:
    groups = group_runs(records.kept_runs(runs_dir))
    cards = _card_names(runs_dir)
    if not groups and not cards:
        return "Nothing has run yet."
    out: list[str] = []
    for setup, methods in groups.items():
        out += [
            f"### {_title(setup)}: training loops",
            "",
            "| method | runs | card | minutes per finished run (mean) | minutes, all its runs |",
            "| --- | ---: | --- | ---: | ---: |",
        ]
        for name, entry in methods.items():
            runs = [*entry.finished, *entry.partial]
            names = ", ".join(sorted({card_of(c, r, cards) for c, r in runs}))
            done = [r.train_seconds / 60 for _, r in entry.finished]
            per_run = f"{statistics.mean(done):.1f}" if done else "-"
            total = sum(r.train_seconds for _, r in runs) / 60
            out.append(f"| {name} | {len(runs)} | {names} | {per_run} | {total:.1f} |")
        out += [
            "",
            "Training-loop time as each run records it (the sum of its epochs' `epoch_seconds`, "
            "evaluation excluded). Students of one array share the device, so their figures "
            "overlap; the device time of the whole table is the commands' wall time below.",
            "",
        ]
    for folder, info in cards.items():
        log = records.read_jsonl(runs_dir / folder / records.COMMANDS)
        by_step: dict[str, float] = defaultdict(float)
        for command in log:
            by_step[command["step"].split()[0]] += command["seconds"]
        total = sum(by_step.values())
        steps = ", ".join(f"{step} {seconds / 60:.1f}" for step, seconds in sorted(by_step.items()))
        out += [
            f"### Commands on {info['card']}",
            "",
            f"{len(log)} commands, **{total / 60:.1f} device-minutes** of wall time in all "
            f"({steps}); torch {info.get('torch')}, CUDA {info.get('cuda')}, "
            f"{info.get('cpus')} CPU cores. As run (seconds, exit status; `--resume` lines "
            "continue a run, `cut` marks a command the runner stopped at the end of its budget):",
            "",
            "```",
            *(
                f"{e['command']}    # {e['seconds']:.0f} s, exit {e['exit']}"
                + (", cut" if e.get("cut_by_budget") else "")
                for e in log
            ),
            "```",
            "",
        ]
    return "\n".join(out)


def write_report(runs_dir: Path, report: Path) -> None:
    """Write (or replace) the two protocol sections of ``report`` and the curves beside it."""
    write_section(report, ACCURACY, accuracy_section(runs_dir, report.parent), header=HEADER)
    write_section(report, COST, cost_section(runs_dir), header=HEADER)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--runs", type=Path, default=REPO / "experiments" / "cifar100" / "runs")
    p.add_argument("--report", type=Path, default=REPO / "docs" / "results.md")
    args = p.parse_args(argv)
    write_report(args.runs, args.report)
    print(f"report.py: wrote {args.report}")


if __name__ == "__main__":
    main()
