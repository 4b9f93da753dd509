"""Training, one module per responsibility:

    config.py       every option declared once (options.py: how), make_config, validation; no torch
    loop.py         train() and the loop, fit(): epochs -> batches -> step -> row -> callbacks -> checkpoint
    step.py         one step: dropout seeding, autocast, forward/backward, the CUDA graph
    checkpoint.py   the training state that saves and restores itself; resuming a run
    distributed.py  the processes under torchrun (a no-op alone)
    signals.py      Ctrl-C and SIGTERM stop between steps
    optim.py        Keras's optimisers, schedules, EMA
    progress.py     the progress bar and the epoch lines

`import mnist_cnn.training` stays light: train and fit import torch on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import PLACEMENT, TrainConfig, make_config, validate

__all__ = ["PLACEMENT", "TrainConfig", "fit", "make_config", "train", "validate"]


def __getattr__(name: str) -> Any:
    if name in ("train", "fit"):
        value = getattr(importlib.import_module(".loop", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    from .loop import fit, train
