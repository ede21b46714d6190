"""Teacher and student each get the shared uint8 view converted their own way, end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from kdcache.augment import create_recipe
from kdcache.cache.reader import open_cache
from kdcache.cli import main
from kdcache.data import load_dataset
from kdcache.models import build_model
from kdcache.models.inference import prepare_teacher, teacher_forward, teacher_inference
from kdcache.models.preprocess import Preprocessing
from kdcache.training.config import TrainConfig
from kdcache.training.loop import run_train
from kdcache.training.outputs import load_checkpoint
from kdcache.views import SeededViews, view_items

SEED = 5


def cli(*args: object) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def timm_weights(tmp: Path, name: str) -> Path:
    """A seeded, randomly initialised 1-channel, 10-class timm model's state dict."""
    torch.manual_seed(0)
    path = tmp / f"{name}.pth"
    torch.save(build_model(name, 10, in_chans=1).state_dict(), path)
    return path


def extract(weights: Path, out: Path, teacher: str, *extra: object) -> Path:
    cli("extract", "--teacher", teacher, "--weights", weights, "--dataset", "digits",
        "--recipe", "cifar", "--seed", SEED, "--dtype", "float32", "--chunk-rows", 256,
        "--workers", 0, "--out", out, "--no-progress", *extra)  # fmt: skip
    return out


def replayed_views(rows: int) -> torch.Tensor:
    source = load_dataset("digits", None, "train")
    views = SeededViews(source, create_recipe("cifar", source.spec), SEED, view_items([0], rows))
    return torch.stack([views[k]["image"] for k in range(rows)])  # uint8 [rows, 1, 8, 8]


@pytest.fixture(scope="module")
def vit_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A cache of timm's test_vit (pretrained_cfg: mean = std = 0.5, 160 x 160, bicubic)."""
    tmp = tmp_path_factory.mktemp("vit")
    weights = timm_weights(tmp, "test_vit")
    return extract(weights, tmp / "cache", "test_vit"), weights


def test_a_vit_teachers_cached_logits_are_of_its_own_statistics_and_size(vit_cache) -> None:
    cache, weights = vit_cache
    reader = open_cache(str(cache))
    own = Preprocessing((0.5,), (0.5,), (160, 160), "bicubic")
    assert reader.identity.teacher.preprocessing == own.to_dict()
    assert reader.meta.format_version == "1.3"
    teacher = prepare_teacher(
        build_model("test_vit", 10, in_chans=1, weights=weights), torch.device("cpu")
    )
    images = replayed_views(32)
    digits = load_dataset("digits", None, "train").spec
    dataset_stats = Preprocessing(digits.mean, digits.std, (160, 160), "bicubic")
    with teacher_inference(torch.device("cpu")):
        live_own = teacher_forward(teacher, own(images)).numpy()
        live_dataset = teacher_forward(teacher, dataset_stats(images)).numpy()
    cached = reader.read_dense(0, 0)[:32].astype(np.float32)  # [32, 10]
    np.testing.assert_allclose(cached, live_own, rtol=0, atol=1e-5)
    assert np.abs(cached - live_dataset).max() > 1e-2  # the old (dataset-normalised) logits


def test_verify_reruns_the_teacher_with_the_recorded_preprocessing(vit_cache) -> None:
    cache, weights = vit_cache
    out = cli("verify", cache, "--teacher-weights", weights, "--replay", 8)
    assert "max |cached - live|" in out
    assert "input        mean 0.5 std 0.5 size 160x160 bicubic" in cli("info", cache)


def test_cached_and_online_losses_are_bit_identical_when_the_models_convert_differently(
    tmp_path: Path,
) -> None:
    # Teacher: timm test_resnet, its own mean = std = 0.5, resized 8 -> 16 (bilinear). Student:
    # the zoo resnet8 with the digits statistics at 8 x 8.
    weights = timm_weights(tmp_path, "test_resnet")
    cache = extract(
        weights, tmp_path / "cache", "test_resnet", "--teacher-preprocessing", "size=16"
    )
    recorded = open_cache(str(cache)).identity.teacher.preprocessing
    assert recorded == {
        "mean": [0.5],
        "std": [0.5],
        "input_size": [16, 16],
        "interpolation": "bilinear",
    }
    common = dict(student="resnet8", loss="kd", epochs=1, batch_size=64, workers=0, device="cpu",
                  max_samples=256, seed=3)  # fmt: skip
    online = dict(dataset="digits", recipe="cifar", aug_seed=SEED, teacher="test_resnet",
                  teacher_weights=str(weights), block_rows=256)  # fmt: skip
    cached = run_train(TrainConfig(out=str(tmp_path / "c"), cache=str(cache), **common))
    live = run_train(
        TrainConfig(out=str(tmp_path / "o"), teacher_preprocessing="size=16", **online, **common)
    )
    assert len(cached.step_losses) == 4
    # Equal bits: the live teacher got the recorded conversion (the dataset's would differ).
    assert cached.step_losses == live.step_losses


def test_a_timm_student_is_trained_and_evaluated_with_its_own_preprocessing(
    tmp_path: Path,
) -> None:
    config = TrainConfig(student="test_resnet", student_preprocessing="size=16",
                         out=str(tmp_path / "run"), dataset="digits", epochs=1, batch_size=64,
                         workers=0, device="cpu", max_samples=128)  # fmt: skip
    result = run_train(config)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["preprocessing"] == {"mean": [0.5], "std": [0.5], "input_size": [16, 16],
                                      "interpolation": "bilinear"}  # fmt: skip
    out = cli("eval", tmp_path / "run" / "last.pt", "--workers", 0, "--device", "cpu")
    assert f"top-1 {result.final_top1:.2f}%" in out


def test_preprocessing_flags_for_a_cached_teacher_are_refused(tmp_path: Path) -> None:
    from kdcache.errors import ConfigError

    with pytest.raises(ConfigError, match="a cache records its teacher's preprocessing"):
        TrainConfig(
            student="resnet8", out=str(tmp_path), cache="x", teacher_preprocessing="dataset"
        )


def test_a_run_started_before_the_preprocessing_settings_existed_resumes(tmp_path: Path) -> None:
    settings = dict(student="resnet8", out=str(tmp_path / "run"), dataset="digits", batch_size=64,
                    workers=0, device="cpu", max_samples=64)  # fmt: skip
    run_train(TrainConfig(epochs=1, **settings))
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    for key in ("teacher_ema", "teacher_preprocessing", "student_preprocessing"):
        del state["config"][key]
    torch.save(state, tmp_path / "run" / "last.pt")
    # The settings check passes (it raised "student_preprocessing None -> 'auto'" before).
    assert run_train(TrainConfig(epochs=1, resume=True, **settings)).epochs == 1


def test_fixed_row_forward_gives_each_row_logits_of_its_image_alone() -> None:
    """CUDA's rule (every forward exactly ``fixed_rows`` rows, the last piece padded), run on CPU:
    each forward has one shape and a row's logits do not depend on the batch it came in."""
    shapes: list[int] = []

    class Recording(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(12, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shapes.append(x.shape[0])
            return self.linear(x.flatten(1))

    torch.manual_seed(0)
    model = Recording().eval()
    x = torch.randn(21, 3, 2, 2)
    with torch.inference_mode():
        whole = teacher_forward(model, x, fixed_rows=8)
        assert shapes == [8, 8, 8]  # 21 rows: two full pieces and one padded from 5
        alone = torch.cat([teacher_forward(model, x[i : i + 1], fixed_rows=8) for i in range(21)])
    assert whole.shape == (21, 5) and whole.dtype == torch.float32
    assert set(shapes) == {8}
    assert torch.equal(whole, alone)
