"""Models: the CIFAR distillation zoo (registered in timm as ``cifar_*``), factories, weights.

Importing this package registers the zoo in timm's registry.
"""

from __future__ import annotations

from kdcache.models.factory import build_model, create_model, list_models
from kdcache.models.names import AmbiguousModelNameError, ModelRef, resolve_model_name
from kdcache.models.weights import (
    KeyReport,
    count_parameters,
    load_checkpoint_state_dict,
    load_weights,
    weights_sha256,
)
from kdcache.models.zoo import TIMM_PREFIX, ZOO

__all__ = [
    "AmbiguousModelNameError",
    "ModelRef",
    "TIMM_PREFIX",
    "ZOO",
    "KeyReport",
    "build_model",
    "create_model",
    "count_parameters",
    "list_models",
    "load_checkpoint_state_dict",
    "load_weights",
    "resolve_model_name",
    "weights_sha256",
]
