"""Write ``golden_official.npz``: the repo's own copy of the official-code golden loss values.

The shared file ``../shared/golden/losses_official.npz`` (4.4 MB, 18 cases; see its README) holds
values and gradients computed by the official KD / DKD / RLD / LDRLD code in float64. The tests
check every case of it when it is present; this subset (< 0.5 MB) keeps them meaningful without it:

- the seed-0 cases 0-5, i.e. every shape (8,10), (16,100), (4,1000) at both scales 1 and 5: inputs,
  every loss value, the LDRLD top-k indices and the RLD teacher arg-max;
- gradients: every ``*_grad`` key for case 0, 1 (8x10, both scales) and case 3 (16x100, scale 5);
  for the 4x1000 cases only the keys in ``BIG_CASE_GRADS`` (gradient arrays dominate the size).

Run from the repository root (re-run only if the shared file changes)::

    python tests/test_losses/make_golden_subset.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / ".." / "shared" / "golden" / "losses_official.npz"
OUT = HERE / "golden_official.npz"

CASES = range(6)
ALL_GRADS_CASES = {0, 1, 3}
BIG_CASE_GRADS = {4: ("ldrld_k7_grad", "rntk_k7_grad"), 5: ("rld_at4_grad", "dkd_grad")}


def keep(key: str) -> bool:
    """Whether the subset keeps ``key`` of the shared archive."""
    if "/" not in key:
        return key in ("_about",)
    case, name = key.split("/", 1)
    index = int(case.removeprefix("case"))
    if index not in CASES:
        return False
    if not name.endswith("_grad"):
        return True
    return index in ALL_GRADS_CASES or name in BIG_CASE_GRADS.get(index, ())


def main() -> None:
    with np.load(SHARED, allow_pickle=False) as full:
        subset = {key: full[key] for key in full.files if keep(key)}
    subset["n_cases"] = np.int64(len(CASES))
    np.savez_compressed(OUT, **subset)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB, {len(subset)} arrays)")


if __name__ == "__main__":
    main()
