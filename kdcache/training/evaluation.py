"""Top-1 / top-5 on an evaluation split, for the training loop and ``kdcache eval``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdcache.data import SourceDataset
from kdcache.data.spec import DatasetSpec
from kdcache.errors import ConfigError, DataNotFoundError
from kdcache.models import AmbiguousModelNameError, build_model, load_weights, resolve_model_name
from kdcache.models.names import TIMM_SCHEME
from kdcache.models.preprocess import Preprocessing, resolve_preprocessing
from kdcache.runtime import resolve_device
from kdcache.stream.evaluation import EvaluationBatches
from kdcache.training import outputs

# What `kdcache eval` needs from a checkpoint (a raw state dict has none of them).


@dataclass(frozen=True)
class EvalMetrics:
    top1: float  # %
    top5: float  # %
    loss: float  # mean cross-entropy (timm's eval_loss)


@torch.no_grad()
def evaluate_batches(model: nn.Module, batches: EvaluationBatches) -> EvalMetrics:
    """Top-1, top-5 (%) and mean cross-entropy of ``model`` over the evaluation stream; the
    counts stay on the device until the end (one synchronisation per evaluation)."""
    model.eval()
    device = batches.device
    top1 = torch.zeros((), dtype=torch.int64, device=device)
    top5 = torch.zeros((), dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for batch in batches:
        logits = model(batch.images).float()  # [B, C]
        target = batch.labels
        k = min(5, logits.shape[1])
        pred = logits.topk(k, dim=1).indices  # [B, k]
        top1 += (pred[:, 0] == target).sum()
        top5 += (pred == target[:, None]).any(dim=1).sum()
        loss_sum += F.cross_entropy(logits, target.long(), reduction="sum").double()
    n = len(batches.source)
    return EvalMetrics(100.0 * int(top1) / n, 100.0 * int(top5) / n, float(loss_sum) / n)


def evaluate_metrics(
    model: nn.Module,
    source: SourceDataset,
    batch_size: int,
    workers: int,
    device: torch.device,
    channels_last: bool = True,
    preprocessing: Preprocessing | None = None,
) -> EvalMetrics:
    """Top-1, top-5 (%) and mean cross-entropy on ``source`` with the evaluation transform, each
    image converted by ``preprocessing`` (default: the dataset's normalisation)."""
    batches = EvaluationBatches(source, batch_size=batch_size, workers=workers, device=device,
                                channels_last=channels_last,
                                student_input=preprocessing)  # fmt: skip
    return evaluate_batches(model, batches)


def evaluate(
    model: nn.Module,
    source: SourceDataset,
    batch_size: int,
    workers: int,
    device: torch.device,
    channels_last: bool = True,
    preprocessing: Preprocessing | None = None,
) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (%): :func:`evaluate_metrics` without the loss."""
    m = evaluate_metrics(model, source, batch_size, workers, device, channels_last, preprocessing)
    return m.top1, m.top5


def _run_json(weights: Path) -> dict[str, Any]:
    """The run.json beside ``weights`` (weights in a run's folder); {} if none."""
    try:
        record = json.loads((weights.parent / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def evaluate_checkpoint(
    checkpoint: str,
    data_dir: str | None,
    split: str | None,
    batch_size: int = 256,
    workers: int = 2,
    device_name: str = "auto",
    *,
    model_name: str | None = None,
    dataset: str | None = None,
) -> tuple[float, float, int]:
    """``kdcache eval``: (top-1, top-5, N) of any weights on a split of a dataset.

    ``checkpoint`` is a kdcache checkpoint (``last.pt``: it names its model and dataset), or a
    plain state dict / a teacher's checkpoint (``{'state_dict': ...}`` ...), which needs
    ``model_name`` and, unless a run.json lies beside it, ``dataset``. ``data_dir`` defaults to
    the run's data folder (the checkpoint's settings, else the run.json beside it).

    Raises:
        ConfigError: plain weights without ``model_name`` / ``dataset``.
        WeightsError: the weights do not fit the model.
    """
    from kdcache.data import load_dataset

    path = Path(checkpoint)
    if not path.is_file():
        raise DataNotFoundError(f"no weights file at {checkpoint}")
    state = _read_kdcache_checkpoint(path)
    run = _run_json(path)
    run_config = state["config"] if state else run.get("config") or {}
    data_dir = data_dir or run_config.get("data_dir")
    device = resolve_device(device_name)
    if state is not None:
        spec = DatasetSpec.from_dict(state["dataset_spec"])
        source = load_dataset(spec.name, data_dir, split or spec.eval_split)
        arch = model_name or _checkpoint_model(state)
        model = build_model(arch, spec.num_classes, spec.in_chans)
        load_weights(model, state["model"], strict=True, arch=arch)
    else:
        name = dataset or (run.get("dataset") or {}).get("name")
        if model_name is None or name is None:
            raise ConfigError(
                f"{checkpoint} is not a kdcache checkpoint but plain weights: pass --model NAME "
                "(the architecture)" + ("" if name else " and --dataset NAME (what to evaluate on)")
            )
        source = load_dataset(name, data_dir, split or _eval_split(name))
        model = build_model(model_name, source.spec.num_classes, source.spec.in_chans, weights=path)
    model = model.to(device).to(memory_format=torch.channels_last)
    # What the student was trained with (plain weights, or checkpoints from before preprocessing
    # was recorded: the run's choice, else auto).
    record = state.get("preprocessing") if state is not None else None
    if record is not None:
        preprocessing = Preprocessing.from_dict(record)
    else:
        choice = run_config.get("student_preprocessing", "auto")
        preprocessing = resolve_preprocessing(model, source.spec, choice)
    top1, top5 = evaluate(model, source, batch_size, workers, device, True, preprocessing)
    return top1, top5, len(source)


def _read_kdcache_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint if ``path`` is one of kdcache's own (``last.pt``/``best.pt``), else None."""
    try:
        state = outputs.load_checkpoint(path)
    except Exception:  # not loadable as weights_only: load_checkpoint_state_dict will say why
        return None
    keys = ("model", "student", "dataset_spec", "config")
    if isinstance(state, dict) and all(k in state for k in keys):
        return state
    return None


def _checkpoint_model(state: dict[str, Any]) -> str:
    """The model spec a kdcache checkpoint was trained with."""
    recorded = state.get("student_model")
    if isinstance(recorded, dict) and recorded.get("spec"):
        return str(recorded["spec"])
    name = str(state["student"])
    try:
        resolve_model_name(name)
    except AmbiguousModelNameError:
        # Written before names were resolved: a bare timm name meant timm's model then.
        return TIMM_SCHEME + name
    return name


def _eval_split(dataset: str) -> str:
    return "val" if dataset == "imagefolder" else "test"
