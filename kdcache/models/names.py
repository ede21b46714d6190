"""Model names: one spec resolves to exactly one network, or to an error that says how to choose.

Rules, in order (``docs/training.md`` §Model names):

1. ``path/to/file.py:factory``: the user's own file (source ``file``).
2. ``timm:<name>``: timm's model of that name (source ``timm``).
3. ``zoo:<name>``, a zoo name spelled as mdistiller spells it (``resnet56``, ``ResNet18``), or its
   timm registry name (``cifar_ResNet18``): the CIFAR zoo (source ``zoo``). An exact zoo spelling
   wins over a timm model of the same name (``vgg13`` is the CIFAR VGG-13-BN; timm's is
   ``timm:vgg13``): that is the name mdistiller and CRD checkpoints use.
4. A zoo name in another case (``resnet18`` for ``ResNet18``): the zoo, unless timm also knows the
   name, which is then an error listing both (timm's ``resnet18`` is an ImageNet network with a
   224-px stem, a different model with a different parameter count).
5. Any other name timm knows: timm.

The resolved :class:`ModelRef` has a canonical ``spec`` that resolves to the same network again
(``resnet56``, ``timm:resnet18``, ``file.py:build``): runs and caches record it with its source.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass
from typing import Literal

import timm

from kdcache.errors import UnknownNameError
from kdcache.models.zoo import TIMM_PREFIX, ZOO

ModelSource = Literal["zoo", "timm", "file"]
TIMM_SCHEME = "timm:"
ZOO_SCHEME = "zoo:"

# The zoo's names are distinct case-insensitively, so a lower-cased lookup is unambiguous.
_ZOO_BY_LOWER = {name.lower(): name for name in ZOO}
assert len(_ZOO_BY_LOWER) == len(ZOO), "zoo names must differ case-insensitively"


class AmbiguousModelNameError(UnknownNameError):
    """A name that could mean a zoo model or a timm model; the message says how to pick one."""


@dataclass(frozen=True)
class ModelRef:
    """A resolved model spec.

    Attributes:
        source: ``zoo``, ``timm`` or ``file``.
        architecture: the zoo's spelling (``ResNet18``), timm's name (``resnet18``), or the file
            spec as given (``nets.py:build``).
        spec: the canonical spec, which resolves to this same network (``ResNet18``,
            ``timm:resnet18``, ``nets.py:build``).
    """

    source: ModelSource
    architecture: str

    @property
    def spec(self) -> str:
        return TIMM_SCHEME + self.architecture if self.source == "timm" else self.architecture

    def describe(self) -> str:
        """One phrase for messages: ``zoo ResNet18 (CIFAR)``, ``timm resnet18``, ``file ...``."""
        return f"{self.source} {self.architecture}" + (" (CIFAR)" if self.source == "zoo" else "")

    def to_dict(self) -> dict[str, str]:
        return asdict(self) | {"spec": self.spec}


def is_model_file_spec(name: str) -> bool:
    """True for ``something.py:factory`` (and for a bare ``something.py``, to report it)."""
    path = name.rsplit(":", 1)[0] if ":" in name else name
    return path.endswith(".py")


def _timm_knows(name: str) -> str | None:
    """timm's own (non-zoo) name matching ``name`` exactly or in lower case; None if none."""
    for candidate in (name, name.lower()):
        if not candidate.lower().startswith(TIMM_PREFIX) and timm.is_model(candidate):
            return candidate
    return None


def _zoo_name(name: str) -> str | None:
    """The zoo's spelling for ``name`` (any case, with or without ``cifar_``); None if none."""
    lower = name.lower()
    if lower.startswith(TIMM_PREFIX):
        lower = lower[len(TIMM_PREFIX) :]
    return _ZOO_BY_LOWER.get(lower)


def unknown_model(name: str) -> UnknownNameError:
    """The error for a name nothing knows, with close matches (case-insensitive)."""
    candidates = list(ZOO) + [n for n in timm.list_models() if not n.startswith(TIMM_PREFIX)]
    by_lower: dict[str, str] = {}
    for candidate in candidates:
        by_lower.setdefault(candidate.lower(), candidate)
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(by_lower[c] for c in close)}?" if close else ""
    return UnknownNameError(
        f"unknown model {name!r}.{hint} `kdcache models` lists the CIFAR zoo; any timm name works "
        "(timm:<name>), and so does your own file (path/to/file.py:factory)"
    )


def resolve_model_name(name: str) -> ModelRef:
    """The one network ``name`` means (see the module docstring).

    Raises:
        AmbiguousModelNameError: the name is a zoo name in another case and a timm name.
        UnknownNameError: neither the zoo nor timm knows it; lists close matches.
    """
    if is_model_file_spec(name):
        return ModelRef("file", name)
    if name.startswith(TIMM_SCHEME):
        timm_name = name[len(TIMM_SCHEME) :]
        if timm_name.startswith(TIMM_PREFIX) and timm_name[len(TIMM_PREFIX) :] in ZOO:
            return ModelRef("zoo", timm_name[len(TIMM_PREFIX) :])  # the zoo's timm registration
        if not timm.is_model(timm_name) or timm_name.startswith(TIMM_PREFIX):
            raise unknown_model(timm_name)
        return ModelRef("timm", timm_name)
    if name.startswith(ZOO_SCHEME):
        named = _zoo_name(name[len(ZOO_SCHEME) :])
        if named is None:
            raise unknown_model(name[len(ZOO_SCHEME) :])
        return ModelRef("zoo", named)
    zoo = _zoo_name(name)
    exact = name in ZOO or (name.startswith(TIMM_PREFIX) and name[len(TIMM_PREFIX) :] in ZOO)
    if zoo is not None and exact:
        return ModelRef("zoo", zoo)
    timm_match = _timm_knows(name)
    if zoo is not None and timm_match is not None:
        raise AmbiguousModelNameError(
            f"model name {name!r} is ambiguous: the CIFAR zoo's {zoo} (write {zoo!r} or "
            f"'zoo:{zoo}') or timm's ImageNet {timm_match} (write 'timm:{timm_match}'); "
            "name one of them"
        )
    if zoo is not None:
        return ModelRef("zoo", zoo)
    if timm.is_model(name) and not name.startswith(TIMM_PREFIX):
        return ModelRef("timm", name)
    raise unknown_model(name)
