"""A run's directory: atomic checkpoints, metrics.jsonl, steps.jsonl, run.json, curves PNG.

Files written here are replaced atomically (write to a temporary file in the same directory, fsync,
then ``os.replace``), so a crash never leaves a half-written checkpoint where a good one was. The
temporary files follow the user's umask like every other file (``tempfile.mkstemp`` would make them
0600, and the rename would keep that), and a temporary left by a kill is removed when the folder
is next prepared.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from kdcache.cache import layout, schema
from kdcache.errors import ConfigError, WeightsError

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"  # one record per epoch
STEP_LOSSES = "steps.jsonl"  # one record per epoch: every optimiser step's loss (main process)
RUN_FILES = ("run.json", METRICS, STEP_LOSSES, "summary.csv", "last.pt", "best.pt", "curves.png")
RUN_DIRS = ("tensorboard",)  # removed with the run files when a run starts again


def _temp_glob(name: str) -> str:
    return f".{name}.*.tmp"


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` through ``write(file)`` to a temporary name beside it, fsync, rename.

    The temporary file is created with mode 0666 minus the umask, as ``open`` would create
    ``path`` itself, so the result is as readable as the run's other files.
    """
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None:  # a write or fsync of the open file: name the file it was for
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is (POSIX); not possible on Windows.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically; a failed write is the OSError naming ``path``.

    torch.save reports a failed write of its zip container (a full disk) as a RuntimeError
    ("unexpected pos ...") whose context is the OSError: that OSError is what the user can act on.
    """

    def save(f: IO[bytes]) -> None:
        try:
            torch.save(state, f)
        except RuntimeError as exc:
            cause = _os_error_in(exc)
            if cause is None:
                raise
            raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from exc

    atomic_write(path, save)


def _os_error_in(exc: BaseException) -> OSError | None:
    """The first OSError in ``exc``'s chain of causes and contexts, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Delete temporaries a killed writer left behind (``.last.pt.<pid>.<hex>.tmp`` ...)."""
    stale = [p for name in RUN_FILES for p in out.glob(_temp_glob(name)) if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.info("removed %d stale temporary file(s) in %s", len(stale), out)
    return stale


def load_checkpoint(path: Path) -> dict[str, Any]:
    # Our own checkpoints hold plain containers, tensors and numbers: weights_only is safe.
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise  # missing, unreadable: the path's own error
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise WeightsError(
            f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); it is damaged, truncated or "
            "another kind of file"
        ) from exc


def refuse_cache_folder(out: Path) -> None:
    """Refuse a run folder that is a kdcache cache or lies inside one: the run's files would mix
    with the cache's objects, and a later ``--force`` there would delete files in the cache."""
    for folder in (out.resolve(), *out.resolve().parents):
        document = folder / layout.METADATA_FILE
        try:
            is_cache = schema.ATTRS_KEY in layout.group_attributes(document.read_bytes())
        except (OSError, ValueError):  # no zarr.json here, or not one of a group
            continue
        if is_cache:
            where = "is" if folder == out.resolve() else f"lies inside {folder}, which is"
            raise ConfigError(
                f"--out {out} {where} a kdcache cache: a run folder must not be inside a cache "
                "(its files would mix with the cache's, and --force would delete them there). "
                "Choose an --out outside the cache, e.g. runs/<name>"
            )


def prepare_run_dir(out: Path, *, resume: bool, force: bool) -> None:
    """Make ``out`` ready for a run; refuse to clobber a run that has a checkpoint unless told.

    A folder whose run never wrote a checkpoint (stopped in its first epoch, or killed while
    writing the first checkpoint) holds nothing worth keeping: it is started again without
    ``--force``. ``--force`` removes only kdcache's run files.
    """
    refuse_cache_folder(out)
    if out.is_dir():
        remove_stale_temporaries(out)
    existing = [name for name in RUN_FILES if (out / name).exists()]
    has_checkpoint = (out / "last.pt").is_file()
    if resume:
        if has_checkpoint:
            return
        if existing:
            raise ConfigError(
                f"`resume`: the run in {out} stopped before its first checkpoint (no last.pt), "
                "so there is nothing to resume: run the same command without `resume` to start "
                "it again"
            )
        raise ConfigError(
            f"`resume`: {out} holds no training run; drop `resume` to start one there"
        )
    if has_checkpoint and not force:
        raise ConfigError(
            f"{out} already holds a training run ({', '.join(existing)}); pass `resume` to "
            "continue it (with a larger `epochs` to extend it), `force` to replace it, or "
            "choose another `out`"
        )
    if existing and not has_checkpoint:
        log.info("%s holds a run with no checkpoint (%s): starting it again", out, existing)
    out.mkdir(parents=True, exist_ok=True)
    for name in existing:
        (out / name).unlink()
    for name in RUN_DIRS:  # the old run's TensorBoard events would mix with the new run's
        if (out / name).is_dir():
            shutil.rmtree(out / name)


def append_metrics(out: Path, record: dict[str, Any], name: str = METRICS) -> None:
    """Append one epoch's record (it carries an ``epoch`` key) to the run's ``name`` file."""
    with open(out / name, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(out: Path, name: str = METRICS) -> list[dict[str, Any]]:
    path = out / name
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(out: Path, last_epoch: int) -> None:
    """On resume, drop records of epochs after the checkpoint (they will be redone)."""
    for name in (METRICS, STEP_LOSSES):
        kept = [r for r in read_metrics(out, name) if r["epoch"] <= last_epoch]
        atomic_write_bytes(out / name, "".join(json.dumps(r) + "\n" for r in kept).encode())
