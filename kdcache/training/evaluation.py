"""Top-1 / top-5 on an evaluation split, for the training loop and ``kdcache eval``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from kdcache.augment import create_recipe
from kdcache.data import SeededViews, SourceDataset
from kdcache.models import build_model
from kdcache.models.preprocess import Preprocessing, resolve_preprocessing
from kdcache.runtime import resolve_device
from kdcache.training import outputs


@torch.no_grad()
def evaluate(
    model: nn.Module,
    source: SourceDataset,
    batch_size: int,
    workers: int,
    device: torch.device,
    channels_last: bool = True,
    preprocessing: Preprocessing | None = None,
) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (%) on ``source`` with the evaluation transform, each image
    converted by ``preprocessing`` (default: the dataset's normalisation)."""
    model.eval()
    preprocess = preprocessing or Preprocessing.from_dataset(source.spec)
    recipe = create_recipe("none", source.spec)
    items = np.stack([np.zeros(len(source), np.int64), np.arange(len(source))], axis=1)
    loader = DataLoader(
        SeededViews(source, recipe, 0, items),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    top1 = top5 = 0
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for batch in loader:
        x = preprocess(batch["image"].to(device, non_blocking=True))
        logits = model(x.contiguous(memory_format=memory_format)).float()
        target = batch["label"].to(device)
        k = min(5, logits.shape[1])
        pred = logits.topk(k, dim=1).indices  # [B, k]
        top1 += int((pred[:, 0] == target).sum())
        top5 += int((pred == target[:, None]).any(dim=1).sum())
    return 100.0 * top1 / len(source), 100.0 * top5 / len(source)


def evaluate_checkpoint(
    checkpoint: str,
    data_dir: str | None,
    split: str | None,
    batch_size: int = 256,
    workers: int = 2,
    device_name: str = "auto",
) -> tuple[float, float, int]:
    """``kdcache eval``: (top-1, top-5, N) of a kdcache checkpoint on a split of its dataset."""
    from kdcache.data import DatasetSpec, load_dataset

    state = outputs.load_checkpoint(Path(checkpoint))
    device = resolve_device(device_name)
    model = build_model(state["student"], state["num_classes"], in_chans=state["in_chans"])
    model.load_state_dict(state["model"])
    model = model.to(device).to(memory_format=torch.channels_last)
    eval_split = DatasetSpec.from_dict(state["dataset_spec"]).eval_split
    source = load_dataset(state["dataset"], data_dir, split or eval_split)
    # What the student was trained with (checkpoints before preprocessing was recorded: auto).
    record = state.get("preprocessing")
    if record is not None:
        preprocessing = Preprocessing.from_dict(record)
    else:
        choice = state.get("config", {}).get("student_preprocessing", "auto")
        preprocessing = resolve_preprocessing(model, source.spec, choice)
    top1, top5 = evaluate(model, source, batch_size, workers, device, True, preprocessing)
    return top1, top5, len(source)
