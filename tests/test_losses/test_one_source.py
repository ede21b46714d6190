"""Each loss has one definition: the functional ``xxx_loss`` is its module, and the functional
forms, the terms and the module agree on every default (the registry reads the module's).
"""

from __future__ import annotations

import inspect

import pytest
import torch

from kdcache.errors import ConfigError
from kdcache.losses import dkd, kd, ldrld, rld
from kdcache.losses.registry import loss_info

FORMS = {
    "kd": (kd.kd_loss, None),
    "dkd": (dkd.dkd_loss, dkd.dkd_terms),
    "rld": (rld.rld_loss, rld.rld_terms),
    "ldrld": (ldrld.ldrld_loss, ldrld.ldrld_terms),
}


def _keyword_defaults(fn) -> dict:
    return {n: p.default for n, p in inspect.signature(fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}  # fmt: skip


@pytest.mark.parametrize("name", sorted(FORMS))
def test_functional_terms_and_module_share_their_defaults(name: str) -> None:
    functional, terms = FORMS[name]
    module_defaults = loss_info(name).defaults
    assert _keyword_defaults(functional) == module_defaults
    if terms is not None:  # the terms take every hyper-parameter but the combination weights
        shared = {k: v for k, v in module_defaults.items() if k not in ("alpha", "beta")}
        assert _keyword_defaults(terms) == shared


@pytest.mark.parametrize("name", sorted(FORMS))
def test_functional_form_equals_the_module_and_is_checked_the_same(name: str) -> None:
    torch.manual_seed(0)
    s, t = torch.randn(6, 10, dtype=torch.float64), torch.randn(6, 10, dtype=torch.float64)
    y = torch.randint(0, 10, (6,))
    functional, _ = FORMS[name]
    module = loss_info(name).module
    assert torch.equal(functional(s, t, y, temperature=2.0), module(temperature=2.0)(s, t, y))
    with pytest.raises(ConfigError, match="temperature"):
        functional(s, t, y, temperature=-1.0)
