"""Reading checkpoints and loading them into models, strictly and with clear errors."""

from __future__ import annotations

import argparse
import hashlib
import logging
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kdcache.errors import DataNotFoundError, WeightsError

logger = logging.getLogger(__name__)

# Keys under which training scripts commonly nest the state dict, most specific first.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")
# Where timm's train.py (``state_dict_ema``) and DeiT-style scripts (``model_ema``) keep the EMA
# weights, beside the plain ones.
EMA_KEYS = ("state_dict_ema", "model_ema")
# Prefixes added by DataParallel / DistributedDataParallel and by torch.compile.
STRIP_PREFIXES = ("module.", "_orig_mod.")
_MAX_LISTED = 8  # keys shown per category in an error message


def weights_sha256(path: str | Path) -> str:
    """Hex sha256 of a weights file's bytes (the teacher identity recorded in a cache)."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"weights file not found: {path}")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements (buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters())


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(4):  # wrappers nest at most a few levels ({'model': {'state_dict': ...}})
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(
            f"{path} is not a state dict: entries {_listing(bad)} are not tensors and none of the "
            f"usual wrapper keys {list(WRAPPER_KEYS)} holds one; save model.state_dict() instead"
        )
    return dict(obj)


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove leading ``module.`` / ``_orig_mod.`` (any order, repeated) from every key."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = key
        while new.startswith(STRIP_PREFIXES):
            new = new.split(".", 1)[1]
        if new in out:
            raise WeightsError(f"two checkpoint keys both map to {new!r} once prefixes are removed")
        out[new] = value
    return out


def is_safetensors(path: Path) -> bool:
    """True for a safetensors file, whatever its name: an 8-byte little-endian header length
    followed by a JSON header (torch's zip files start with ``PK``, pickles with ``0x80``)."""
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 2 <= int.from_bytes(head[:8], "little") <= path.stat().st_size - 8


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    # The safetensors library, not torch.load: torch reads this format only in recent releases.
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"could not read safetensors weights {path}: {exc}") from exc


def _torch_load(path: Path) -> object:
    # timm's train.py saves its argparse.Namespace of settings beside the weights: allow that one
    # harmless class, nothing else, in the weights-only unpickler.
    torch.serialization.add_safe_globals([argparse.Namespace])
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, OSError) as exc:
        raise WeightsError(
            f"could not read weights {path}: {exc}. kdcache loads checkpoints with "
            "weights_only=True; a file that pickles whole objects must be re-saved as a state dict"
        ) from exc


def _select_ema(obj: object, path: Path, ema: bool) -> object:
    """The EMA entry of a training checkpoint when ``ema``; otherwise ``obj``, noting EMA weights
    that are being passed over."""
    found = [k for k in EMA_KEYS if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)]
    if ema:
        if not found:
            keys = sorted(str(k) for k in obj) if isinstance(obj, Mapping) else []
            raise WeightsError(
                f"{path} has no EMA weights (none of {list(EMA_KEYS)}; top-level keys: "
                f"{_listing(keys)}): drop the EMA option to load its plain weights"
            )
        assert isinstance(obj, Mapping)
        logger.info("%s: loading the EMA weights %r", path, found[0])
        return obj[found[0]]
    if found:
        logger.info("%s also holds EMA weights (%s); the EMA option loads them", path, found[0])
    return obj


def load_checkpoint_state_dict(path: str | Path, ema: bool = False) -> dict[str, torch.Tensor]:
    """Read a checkpoint into a plain ``{key: tensor}`` dict on the CPU.

    A ``.safetensors`` file (recognised by its header, whatever its name) is read with the
    ``safetensors`` library. Anything else loads with ``torch.load(weights_only=True)`` (no
    arbitrary code from pickles; ``argparse.Namespace``, which timm's ``train.py`` stores as
    ``args``, is allowed) and ``map_location="cpu"`` (checkpoints saved from CUDA load on
    CPU-only machines). With ``ema`` the ``state_dict_ema`` (timm) or ``model_ema`` (DeiT) entry
    is taken, an error when there is none; by default the plain weights are, as timm's
    ``validate.py`` does without ``--use-ema``. Then ``{'state_dict': ...}``,
    ``{'model_state_dict': ...}``, ``{'model': ...}`` and ``{'net': ...}`` are unwrapped and
    ``module.`` / ``_orig_mod.`` key prefixes stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"weights file not found: {path}")
    if is_safetensors(path):
        if ema:
            raise WeightsError(
                f"{path} is a safetensors file, which holds one set of weights and no EMA "
                "entry: drop the EMA option"
            )
        return strip_prefixes(_unwrap(_read_safetensors(path), path))
    return strip_prefixes(_unwrap(_select_ema(_torch_load(path), path, ema), path))


@dataclass(frozen=True)
class KeyReport:
    """How a state dict differs from a model's (each list in the model's or checkpoint's order)."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # key, checkpoint, model

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def compare_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> KeyReport:
    """Missing, unexpected and mis-shaped keys of ``state_dict`` relative to ``model``.

    A missing ``num_batches_tracked`` is not reported: checkpoints from before PyTorch 0.4.1 lack
    it, it does not affect the forward pass, and ``load_state_dict`` fills it in.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        (k, tuple(v.shape), tuple(own[k].shape))
        for k, v in state_dict.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    return KeyReport(missing, unexpected, mismatched)


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


def describe_mismatch(report: KeyReport, arch: str) -> str:
    """A user-facing account of why weights do not fit ``arch``."""
    lines = [f"the weights do not fit the {arch} architecture:"]
    if report.missing:
        lines.append(f"  missing keys ({len(report.missing)}): {_listing(report.missing)}")
    if report.unexpected:
        lines.append(f"  unexpected keys ({len(report.unexpected)}): {_listing(report.unexpected)}")
    if report.mismatched:
        shapes = [f"{k} checkpoint {list(c)} vs model {list(m)}" for k, c, m in report.mismatched]
        lines.append(f"  shape mismatches ({len(shapes)}): {_listing(shapes)}")
    lines.append(
        "check the architecture name (kdcache models lists the zoo) and `num_classes` / `in_chans`;"
        " these weights may belong to another model"
    )
    return "\n".join(lines)


def load_weights(
    model: nn.Module,
    state_dict_or_path: Mapping[str, torch.Tensor] | str | Path,
    strict: bool = True,
    arch: str | None = None,
    ema: bool = False,
) -> KeyReport:
    """Load weights into ``model`` in place and return how the keys compared.

    Strict by default: any missing, unexpected or mis-shaped key raises :class:`WeightsError`
    listing them. With ``strict=False`` the matching keys are loaded, the rest are skipped with a
    warning (never silently: a dropped ``conv1.bias`` changes every logit).
    """
    if isinstance(state_dict_or_path, str | Path):
        state_dict = load_checkpoint_state_dict(state_dict_or_path, ema=ema)
    else:
        state_dict = strip_prefixes(state_dict_or_path)
    arch = arch or type(model).__name__
    report = compare_state_dict(model, state_dict)
    if not report.ok:
        if strict:
            raise WeightsError(describe_mismatch(report, arch))
        logger.warning("loading non-strictly; %s", describe_mismatch(report, arch))
    bad_shape = {k for k, _, _ in report.mismatched}
    loadable = {k: v for k, v in state_dict.items() if k not in bad_shape}
    model.load_state_dict(loadable, strict=False)
    return report
