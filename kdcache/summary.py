"""``kdcache info``: what a cache is, as a dict (for ``--json``) and as readable text."""

from __future__ import annotations

from typing import Any

import numpy as np

from kdcache.cache.reader import CacheReader


def summarize(reader: CacheReader) -> dict[str, Any]:
    """Metadata plus the live state (blocks done, accuracy so far, bytes on disk)."""
    meta = reader.meta
    d = meta.to_dict()
    done = reader.done_mask()
    d["location"] = reader.location
    d["blocks"] = {"done": int(done.sum()), "total": int(done.size), "per_view": meta.num_blocks}
    # Complete means every mark is there, whatever the attributes say (a mark may be lost).
    d["complete"] = bool(meta.complete and done.all())
    d["integrity"] = reader.integrity_note()
    d["warnings"] = _warnings(reader, done)
    rows = np.array(
        [meta.block_rows(b).stop - meta.block_rows(b).start for b in range(meta.num_blocks)]
    )
    seen = (done * rows[None, :]).sum(axis=1)  # [V] rows written per view
    # The size per row is of the rows written: a partial cache is not N rows of tiny ones.
    d["rows_written"] = int(seen.sum())
    if meta.teacher_top1 is None and done.any():
        # Incomplete cache: report accuracy over the blocks written so far.
        top1, _ = reader.block_correct_counts()
        hits = np.where(done, top1, 0).sum(axis=1)
        d["teacher_top1_partial"] = [
            round(float(h * 100.0 / s), 4) if s else None for h, s in zip(hits, seen, strict=True)
        ]
    d["stored_bytes"] = reader.stored_bytes()
    return d


def _teacher_input(teacher: dict[str, Any], dataset: dict[str, Any]) -> str:
    from kdcache.models.preprocess import Preprocessing

    if teacher.get("preprocessing") is not None:
        return Preprocessing.from_dict(teacher["preprocessing"]).describe()
    spec = dataset.get("spec") or {}
    return (
        f"the dataset's normalisation (mean {spec.get('mean')}, std {spec.get('std')}; "
        "not recorded before format 1.2)"
    )


def _warnings(reader: CacheReader, done: np.ndarray) -> list[str]:
    """What is inconsistent in the self-description (``kdcache verify`` checks it in full)."""
    meta, out = reader.meta, []
    if meta.complete and not done.all():
        missing = np.argwhere(~done)
        shown = ", ".join(f"(view {v}, block {b})" for v, b in missing[:3])
        out.append(
            f"the metadata says complete, but {len(missing)} block mark(s) are missing ({shown}"
            f"{', ...' if len(missing) > 3 else ''}): the cache was damaged or partly copied"
        )
    if meta.teacher_top1 is not None:
        for problem in meta.figure_mismatches(*reader.block_correct_counts()):
            out.append(f"the metadata was edited: {problem}")
    return out


def format_summary(s: dict[str, Any]) -> str:
    t, ds, aug, st = s["teacher"], s["dataset"], s["augmentation"], s["storage"]
    if st["mode"] == "dense":
        mode = f"dense {st['dtype']}"
    elif st.get("temperatures"):
        temps = ", ".join(f"{t:g}" for t in st["temperatures"])
        mode = f"sparse top-{st['topk']} {st['dtype']}, exact normalisers at T = {temps}"
    else:
        mode = f"sparse top-{st['topk']} {st['dtype']} (format 1.0/1.1: LSE at T = 1 only)"
    lines = [
        f"cache        {s['location']}",
        f"fingerprint  {s['fingerprint']}",
        f"format       {s['format_version']}   created {s['created']}",
        f"state        {'complete' if s['complete'] else 'INCOMPLETE'} "
        f"({s['blocks']['done']}/{s['blocks']['total']} blocks)",
        f"teacher      {t['name']}  ({t['num_params']:,} params, weights sha256 "
        f"{(t['weights_sha256'] or 'none (random init)')[:16]}"
        f"{', EMA weights' if t.get('weights_ema') else ''})",
        f"input        {_teacher_input(t, ds)}",
        f"dataset      {ds['name']}/{ds['split']}  N={ds['num_samples']:,}  C={ds['num_classes']}  "
        f"fingerprint {ds['fingerprint'][:16]}",
        f"augmentation {aug['recipe']} {aug['params']}  seed {aug['seed']}  "
        f"views {aug['num_views']}",
        f"storage      {mode}, {st['chunk_rows']} rows per chunk",
        f"integrity    {s['integrity']}",
    ]
    if s.get("stored_bytes") is not None:
        rows = s.get("rows_written", aug["num_views"] * ds["num_samples"])
        per_row = f"{s['stored_bytes'] / rows:.1f}" if rows else "-"
        lines.append(
            f"size         {s['stored_bytes'] / 2**20:.2f} MiB "
            f"({per_row} bytes per sample per view{' written' if not s['complete'] else ''})"
        )
    if s.get("teacher_top1"):
        t1, t5 = s["teacher_top1"], s.get("teacher_top5") or []
        # On the cached (augmented, training-split) views, not the test split: say so.
        lines.append(
            f"teacher top-1 per view (%, on the augmented {ds['split']} views): "
            f"{', '.join(f'{x:.2f}' for x in t1)}"
        )
        lines.append(
            f"teacher top-1 mean {np.mean(t1):.2f}%  top-5 mean "
            f"{np.mean(t5) if t5 else float('nan'):.2f}% (augmented {ds['split']} views; "
            "not a test accuracy)"
        )
    elif s.get("teacher_top1_partial"):
        part = ", ".join("-" if x is None else f"{x:.2f}" for x in s["teacher_top1_partial"])
        lines.append(f"teacher top-1 so far (%, on the augmented {ds['split']} views): {part}")
    producers = s.get("producers") or []
    for i, p in enumerate(producers):
        label = "produced on " if i == 0 else "           + "
        lines.append(
            f"{label} {p.get('device')}, {p.get('precision')}, {p.get('memory_format')}"
            f", torch {p.get('torch')}"
        )
    if len(producers) > 1:
        lines.append(
            "             (blocks were written by more than one forward configuration: logits "
            "may differ in the last bits between blocks)"
        )
    lines.append("versions     " + ", ".join(f"{k} {v}" for k, v in sorted(s["versions"].items())))
    lines.extend(f"WARNING      {w}" for w in s.get("warnings", []))
    return "\n".join(lines)
