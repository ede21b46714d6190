"""One forward on a dummy batch before a run starts, so that a model of the user's own that does
not fit the data (channels, image size, class count) is one clear line, not a shape error from deep
inside the first real batch reported as a kdcache bug."""

from __future__ import annotations

import torch
from torch import nn

from kdcache.errors import ConfigError


def probe_forward(
    model: nn.Module, in_chans: int, input_size: tuple[int, int], *, role: str, flag: str
) -> torch.Tensor:
    """The model's output on zeros ``[2, in_chans, H, W]`` in eval mode (its mode is restored).

    ``role`` names the model in the error ("student", "teacher"), ``flag`` the setting that sets its
    input size, as the library spells it in backquotes (```teacher_preprocessing```; the CLI
    writes it as its flag). Raises ConfigError when the forward fails on that shape."""
    x = torch.zeros(2, in_chans, *input_size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(x)
    except RuntimeError as exc:  # a shape mismatch inside the user's model, not a kdcache bug
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"the {role} fails on the data's input {list(x.shape)} ({first}): build it for "
            f"in_chans={in_chans} and {input_size[0]}x{input_size[1]} images, or change its "
            f"input size with {flag} size=..."
        ) from exc
    finally:
        model.train(was_training)


def check_teacher_io(
    teacher: nn.Module, in_chans: int, input_size: tuple[int, int], num_classes: int, flag: str
) -> None:
    """The teacher runs on the data's input and outputs one logit per class."""
    out = probe_forward(teacher, in_chans, input_size, role="teacher", flag=flag)
    if out.dim() != 2 or out.shape[1] != num_classes:
        raise ConfigError(
            f"the teacher outputs {tuple(out.shape[1:])} logits per sample, but the data has "
            f"{num_classes} classes: build it with num_classes={num_classes}"
        )
