"""Write one ``## Section`` of a generated doc (docs/benchmarks.md, docs/results.md), leaving the
other sections (hand-written ones included) as they are."""

from __future__ import annotations

import re
from pathlib import Path

HEADER = (
    "# Benchmarks\n\nEvery figure here is written by a script in `benchmarks/`; each section names "
    "its command. Ratios are taken side by side in one run (the machine is shared and noisy).\n"
)


def write_section(path: Path, title: str, body: str, header: str = HEADER) -> None:
    """Replace (or append) the section ``## title`` of ``path``; ``header`` starts a new file."""
    text = path.read_text() if path.exists() else header
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")
