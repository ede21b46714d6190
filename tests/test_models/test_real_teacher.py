"""The real ResNet-56 CIFAR-100 teacher (../shared/data) loads strictly under its plain name.

Its 66.42% on the CIFAR-100 test set is checked once, through the whole pipeline
(``tests/test_extract.py::test_real_teacher_accuracy_through_extract_and_info``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kdcache.errors import WeightsError
from kdcache.models import build_model, load_weights, weights_sha256

pytestmark = pytest.mark.realdata

TEACHER_SHA256 = "003ab840c90fed49e71fd1fca6167598a57c3b62d34afa00ceaebe1aba5a535b"


def test_real_teacher_has_the_documented_sha256(teacher_path: Path) -> None:
    assert weights_sha256(teacher_path) == TEACHER_SHA256


def test_real_teacher_loads_strictly_under_its_plain_name(teacher_path: Path) -> None:
    model = build_model("resnet56", num_classes=100, weights=teacher_path)
    assert model.conv1.bias is not None
    assert model.conv1.weight.device.type == "cpu"


def test_real_teacher_without_stem_bias_names_the_extra_key(teacher_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"unexpected keys \(1\): conv1\.bias"):
        load_weights(build_model("resnet56", num_classes=100), teacher_path, arch="resnet56")
