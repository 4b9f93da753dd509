"""Open any model: the one place that turns "a model" into something to predict with.

    src = open_model("runs/basic")          # a run directory, or its model.safetensors
    src = open_model("runs/ens")            # an ensemble directory, or its ensemble.safetensors
    src = open_model(run)                   # a Run or EnsembleRun: returned as it is
    src = open_model(torch_module)          # any torch nn.Module, wrapped
    src.name, src.num_params, src.model, src.config, src.metrics, src.path, src.source
    src.predict_proba(images)               # any form that mnist_cnn.inputs accepts

predict, export, serve, explain, report and the CLI take what `open_model` takes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Union, runtime_checkable

import torch
from torch import nn

from .budgets import describe, exists, is_dir, is_file
from .ensemble import EnsembleRun, load_ensemble
from .errors import MnistCnnError
from .evaluation import predict_logits
from .runs import ENSEMBLE_FILE, Run, load_run


@runtime_checkable
class ModelSource(Protocol):
    """What every opened model offers: Run, EnsembleRun and a wrapped torch module alike."""

    @property
    def name(self) -> str: ...

    @property
    def num_params(self) -> int: ...

    @property
    def model(self) -> nn.Module: ...

    @property
    def config(self) -> dict[str, Any]: ...

    @property
    def metrics(self) -> dict[str, Any]: ...

    @property
    def path(self) -> Path | None: ...  # the run or ensemble directory; None for a module opened from memory

    @property
    def source(self) -> Path | None: ...  # what was opened: the directory or the file

    @property
    def classes(self) -> tuple[str, ...] | None: ...  # the name of each output; None: the digits 0..9

    def predict_proba(self, x: Any) -> torch.Tensor: ...


@dataclass
class ModuleSource:
    """A torch module from memory, shaped like a Run: no directory, no config, no metrics."""

    model: nn.Module
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    path: Path | None = None
    classes: tuple[str, ...] | None = None

    @property
    def source(self) -> Path | None:
        return None

    @property
    def name(self) -> str:
        name = getattr(self.model, "name", None)
        return name if isinstance(name, str) else type(self.model).__name__

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def predict_proba(self, x: Any) -> torch.Tensor:
        return torch.softmax(predict_logits(self.model, x), dim=1)


Openable = Union[ModelSource, nn.Module, str, "os.PathLike[str]"]


def _reader(path: Path) -> Callable[[Path], ModelSource]:
    """Which reader opens a path: the single dispatch point for files and directories."""
    if (is_dir(path) and exists(path / ENSEMBLE_FILE)) or path.name == ENSEMBLE_FILE:
        return load_ensemble
    if is_file(path) and path.suffix.lower() != ".safetensors":  # ours never are Keras files: no h5py import
        from .keras_io import is_keras_file, keras_run

        if is_keras_file(path):
            return keras_run
    return load_run


def open_model(source: Openable) -> ModelSource:
    """The run, ensemble or module that `source` is or holds (see the module docstring); one line if none."""
    if isinstance(source, (Run, EnsembleRun, ModuleSource)):
        return source
    if isinstance(source, nn.Module):
        return ModuleSource(source)
    if not isinstance(source, (str, os.PathLike)):
        raise MnistCnnError(f"expected a model (a torch nn.Module, e.g. run.model), a Run or an EnsembleRun, or a "
                            f"run or ensemble directory, got {type(source).__name__}")
    path = Path(source)
    if not exists(path):
        raise MnistCnnError(f"{describe(path)} does not exist: expected a run or ensemble directory (or its "
                            ".safetensors file), or a Keras .h5/.keras file")
    return _reader(path)(path)


def open_run(source: Openable) -> Run:
    """`open_model` for what shows one trained model with its spec and history (report, explain): not an ensemble."""
    if isinstance(source, (str, os.PathLike)) and not exists(source):
        raise MnistCnnError(f"{describe(source)} does not exist: expected a run directory or its model.safetensors")
    opened = open_model(source)
    if isinstance(opened, EnsembleRun):
        raise MnistCnnError(f"{opened.source} is an ensemble directory, not a run directory: evaluate, predict, export "
                            f"and serve take it; report and explain take one of its members (its config.json lists "
                            f"them)")
    if not isinstance(opened, Run):
        raise MnistCnnError(f"report and explain take a run (its directory, its weights file or a Run), got "
                            f"{opened.name}")
    return opened
