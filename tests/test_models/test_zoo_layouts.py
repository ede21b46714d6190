"""The zoo reproduces mdistiller's CIFAR-100 state-dict layouts and is registered in timm."""

from __future__ import annotations

import pytest
import timm
import torch

from kdcache.models import ZOO, build_model, count_parameters, list_models
from kdcache.models.zoo import zoo_entry

from .conftest import COMPAT_JSON, load_compat

COMPAT = load_compat()
needs_compat = pytest.mark.skipif(not COMPAT, reason=f"{COMPAT_JSON} not found")


def _meta_model(name: str, **kwargs: object) -> torch.nn.Module:
    # The meta device gives real keys, shapes and dtypes without allocating or initialising.
    with torch.device("meta"):
        return build_model(name, num_classes=100, **kwargs)


@needs_compat
def test_the_zoo_holds_exactly_the_mdistiller_models() -> None:
    assert sorted(list_models()) == sorted(COMPAT)


@needs_compat
@pytest.mark.parametrize("name", sorted(COMPAT) or ["<none>"])
def test_state_dict_matches_mdistiller_key_for_key(name: str) -> None:
    model = _meta_model(name)
    layout = [
        [k, list(v.shape), str(v.dtype).removeprefix("torch.")]
        for k, v in model.state_dict().items()
    ]
    assert layout == COMPAT[name]["state_dict"]
    assert count_parameters(model) == COMPAT[name]["params"]


@pytest.mark.parametrize("name", list(ZOO))
def test_timm_create_model_finds_the_prefixed_name(name: str) -> None:
    with torch.device("meta"):
        via_timm = timm.create_model(f"cifar_{name}", num_classes=100)
    assert type(via_timm) is type(_meta_model(name))
    assert list(via_timm.state_dict()) == list(_meta_model(name).state_dict())


def test_registering_the_zoo_leaves_timms_own_vgg13_alone() -> None:
    assert timm.models.model_entrypoint("vgg13").__module__ == "timm.models.vgg"
    assert zoo_entry("vgg13") is not None and zoo_entry("cifar_vgg13") is zoo_entry("vgg13")


def test_timm_refuses_pretrained_for_the_zoo_rather_than_downloading() -> None:
    with pytest.raises(Exception, match="no downloadable weights"):
        timm.create_model("cifar_resnet8", pretrained=True)


@pytest.mark.parametrize("name", list(ZOO))
def test_forward_returns_logits_for_a_cifar_batch(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=100).eval()
    with torch.inference_mode():
        logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 100)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", list(ZOO))
def test_every_model_takes_one_channel_8x8_digits(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_chans=1)
    logits = model(torch.randn(4, 1, 8, 8))  # train mode: BN needs > 1 value per channel
    assert logits.shape == (4, 10)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_stem_bias_adds_exactly_conv1_bias_to_a_cifar_resnet() -> None:
    plain = list(_meta_model("resnet56").state_dict())
    biased = list(_meta_model("resnet56", stem_bias=True).state_dict())
    assert biased == plain[:1] + ["conv1.bias"] + plain[1:]
