"""Building teachers and students by name: the zoo, timm, or the user's own file.

A model *spec* is one of

* a zoo name as mdistiller spells it (``resnet56``, ``MobileNetV2``; any case when timm has no model
  of that name), ``zoo:<name>``, or its timm registry name (``cifar_resnet56``); an exact zoo
  spelling wins over timm's own, so ``vgg13`` is the CIFAR VGG-13-BN;
* ``timm:<name>``, or any other name timm knows: a timm model (never with downloaded weights);
* ``path/to/file.py:factory``: ``factory(num_classes=..., in_chans=..., **kwargs)`` from a file
  (``in_chans`` is passed only when the factory takes it).

:func:`kdcache.models.names.resolve_model_name` decides which; a name that could mean a zoo model
and a timm model (``resnet18``: the zoo's ``ResNet18`` or timm's ``resnet18``) is an error.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import sys
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from kdcache.errors import ConfigError, DataNotFoundError
from kdcache.models import _timm_registry  # noqa: F401  (registers the zoo in timm)
from kdcache.models.names import resolve_model_name
from kdcache.models.weights import count_parameters, load_checkpoint_state_dict, load_weights
from kdcache.models.zoo import ZOO, has_stem_bias_option

logger = logging.getLogger(__name__)


def list_models() -> list[str]:
    """The zoo's names as mdistiller spells them, in family order (``resnet8``..``ShuffleV2``)."""
    return list(ZOO)


def create_model(
    name: str,
    *,
    num_classes: int,
    in_chans: int = 3,
    pretrained: bool | str | Path = False,
    ema: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """A student or teacher by name, as ``kdcache train --student`` resolves it: a zoo name
    (``resnet8``, ``cifar_resnet20``), ``timm:NAME`` or any timm name, or ``file.py:factory``.

    timm's spelling (``kdcache.create_model("resnet32x4", num_classes=100)``), on kdcache's
    terms: ``pretrained`` is ``False`` (untrained, as constructed) or the path of a weights file
    (a state dict, ``.safetensors`` or a training checkpoint; ``ema`` takes its EMA weights),
    loaded strictly. ``pretrained=True`` is refused: kdcache never downloads weights.
    """
    if pretrained is True:
        raise ConfigError(
            "kdcache never downloads weights: give `pretrained` the path of a weights file "
            "(or leave it False for an untrained model)"
        )
    weights = None if pretrained is False else pretrained
    return build_model(name, num_classes, in_chans=in_chans, weights=weights, ema=ema, **kwargs)


def _create_from_file(spec: str, num_classes: int, in_chans: int, **kwargs: Any) -> nn.Module:
    path_text, sep, attr = spec.rpartition(":")
    if not sep or not path_text.endswith(".py") or not attr.isidentifier():
        raise ConfigError(
            f"model file spec {spec!r} must read PATH.py:FACTORY, e.g. my_nets.py:build_student"
        )
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise DataNotFoundError(f"model file not found: {path} (from spec {spec!r})")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"kdcache_user_model_{digest}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up here
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ConfigError(f"importing model file {path} failed: {exc!r}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        found = sorted(
            n for n in vars(module) if not n.startswith("_") and callable(vars(module)[n])
        )
        raise ConfigError(f"{path} has no callable {attr!r}; callables found: {found}")
    model = factory(**_factory_kwargs(factory, spec, num_classes=num_classes, in_chans=in_chans,
                                      **kwargs))  # fmt: skip
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{spec} returned {type(model).__name__}, expected a torch.nn.Module")
    return model


_FACTORY_SIGNATURE = "def FACTORY(num_classes, in_chans=3, **kwargs) -> torch.nn.Module"


def _factory_kwargs(factory: Any, spec: str, **offered: Any) -> dict[str, Any]:
    """The keywords of ``offered`` that ``factory`` accepts: a factory may leave out ``in_chans``
    (then it gets only the others, and the model's input is checked against the data later);
    ``num_classes`` and any extra option it does not take are refused with the signature."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable: no signature to read
        return offered
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return offered
    keyword = {name for name, p in params.items()
               if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                             inspect.Parameter.KEYWORD_ONLY)}  # fmt: skip
    refused = [name for name in offered if name not in keyword and name != "in_chans"]
    if refused:
        raise ConfigError(
            f"{spec} does not accept the keyword(s) {', '.join(refused)}; a model factory "
            f"needs the signature {_FACTORY_SIGNATURE} (in_chans may be left out)"
        )
    return {name: value for name, value in offered.items() if name in keyword}


def _create_timm(name: str, num_classes: int, in_chans: int, **kwargs: Any) -> nn.Module:
    try:
        return timm.create_model(
            name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs
        )
    except TypeError as exc:
        raise ConfigError(f"timm model {name!r} rejected its arguments: {exc}") from exc


def _create_architecture(
    name: str, num_classes: int, in_chans: int = 3, **kwargs: Any
) -> nn.Module:
    """Build an untrained model from a spec (see the module docstring); :func:`build_model` is
    the public way in.

    Args:
        name: zoo name, ``cifar_``-prefixed zoo name, ``timm:<name>``, timm name, or
            ``file.py:factory``.
        num_classes: size of the logit vector.
        in_chans: input channels (1 for grey digits).
        **kwargs: passed to the constructor (e.g. ``stem_bias=True`` for the CIFAR ResNets).

    Raises:
        UnknownNameError: the name is neither a zoo, timm nor file spec; lists close matches.
        AmbiguousModelNameError: the name could mean a zoo model or a timm model.
        ConfigError: a bad file spec, a factory that fails to import or returns no module,
            or ``pretrained=True`` (kdcache never downloads weights).
    """
    if kwargs.pop("pretrained", False):
        raise ConfigError("kdcache never downloads weights: pass weights=PATH to build_model")
    ref = resolve_model_name(name)
    if ref.source == "file":
        return _create_from_file(name, num_classes, in_chans, **kwargs)
    if ref.source == "timm":
        return _create_timm(ref.architecture, num_classes, in_chans, **kwargs)
    try:
        return ZOO[ref.architecture].builder(num_classes=num_classes, in_chans=in_chans, **kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"{ref.architecture} rejected its arguments {sorted(kwargs)}: {exc}"
        ) from exc


def build_model(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    weights: str | Path | None = None,
    strict: bool = True,
    ema: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build a model from a spec (see the module docstring) and, if ``weights`` is given, load
    them (strictly by default). Without ``weights`` the model is untrained, as constructed.

    A CIFAR ResNet checkpoint whose stem carries ``conv1.bias`` (e.g. the ``020118`` resnet56
    teacher) is built with ``stem_bias=True`` so that it loads strictly under its plain name.
    ``ema`` takes a training checkpoint's EMA weights (``state_dict_ema`` / ``model_ema``).
    The model is returned in train mode, as constructed; call ``.eval()`` for a teacher.
    """
    ref = resolve_model_name(name)  # fails on a bad name before reading any weights
    state_dict = load_checkpoint_state_dict(weights, ema=ema) if weights is not None else None
    if (
        state_dict is not None
        and "conv1.bias" in state_dict
        and "stem_bias" not in kwargs
        and ref.source == "zoo"
        and has_stem_bias_option(ref.architecture)
    ):
        logger.info("%s: checkpoint has conv1.bias, building with stem_bias=True", name)
        kwargs["stem_bias"] = True
    model = _create_architecture(name, num_classes, in_chans, **kwargs)
    logger.info("%s resolves to %s", name, ref.describe())
    if state_dict is not None:
        load_weights(model, state_dict, strict=strict, arch=name)
        logger.info("%s: loaded weights from %s", name, weights)
    return model


def zoo_parameter_counts(num_classes: int = 100, in_chans: int = 3) -> dict[str, int]:
    """Parameter count of every zoo model, built on the meta device (no memory, no init cost)."""
    counts: dict[str, int] = {}
    for name, entry in ZOO.items():
        with torch.device("meta"):
            model = entry.builder(num_classes=num_classes, in_chans=in_chans)
        counts[name] = count_parameters(model)
    return counts
