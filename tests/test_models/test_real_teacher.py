"""The real ResNet-56 CIFAR-100 teacher (../shared/data) loads strictly and scores 66.42%."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from kdcache.errors import WeightsError
from kdcache.models import build_model, create_model, load_weights, weights_sha256

pytestmark = pytest.mark.realdata

TEACHER_SHA256 = "003ab840c90fed49e71fd1fca6167598a57c3b62d34afa00ceaebe1aba5a535b"
MEAN = (0.5071, 0.4865, 0.4409)
STD = (0.2673, 0.2564, 0.2762)


def test_real_teacher_has_the_documented_sha256(teacher_path: Path) -> None:
    assert weights_sha256(teacher_path) == TEACHER_SHA256


def test_real_teacher_loads_strictly_under_its_plain_name(teacher_path: Path) -> None:
    model = build_model("resnet56", num_classes=100, weights=teacher_path)
    assert model.conv1.bias is not None
    assert model.conv1.weight.device.type == "cpu"


def test_real_teacher_without_stem_bias_names_the_extra_key(teacher_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"unexpected keys \(1\): conv1\.bias"):
        load_weights(create_model("resnet56", num_classes=100), teacher_path, arch="resnet56")


@pytest.mark.slow
def test_real_teacher_scores_66_42_percent_on_the_cifar100_test_set(
    teacher_path: Path, cifar100_test_path: Path
) -> None:
    model = build_model("resnet56", num_classes=100, weights=teacher_path).eval()
    with cifar100_test_path.open("rb") as f:
        split = pickle.load(f, encoding="latin1")
    images = torch.from_numpy(np.asarray(split["data"]).reshape(-1, 3, 32, 32))  # [N, 3, 32, 32] u8
    labels = torch.tensor(split["fine_labels"])  # [N]
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(labels), 500):
            x = (images[start : start + 500].float() / 255 - mean) / std
            correct += (model(x).argmax(1) == labels[start : start + 500]).sum().item()
    assert len(labels) == 10_000
    assert correct == 6642
