"""mnist-cnn: train, evaluate, explain, export and serve CNNs on MNIST-style 28x28 grayscale images.

    from mnist_cnn import load_mnist, get_spec, summary, make_config, train, load_run, evaluate
    from mnist_cnn import Model, load      # the Keras-shaped object API for notebooks

The names below are imported on first use: `mnist-cnn --help` and a mistyped flag answer at once instead of
after importing torch (about 2 s), and a Ctrl-C during that import reaches the CLI's handler, not a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any

from .errors import MnistCnnError, debug

__version__ = "0.1.0"

_HOMES = {
    "augment": ("plot_augmented",),
    "data": ("MnistData", "load_mnist", "split_validation", "to_float"),
    "evaluate": ("evaluate", "format_metrics", "predict_logits"),
    "explain": ("feature_maps", "find_mistakes", "output_size_check", "plot_confusion", "plot_curves",
                "plot_edge_filter", "plot_feature_maps", "plot_filters", "plot_mistakes", "plot_per_class",
                "plot_saliency"),
    "models": ("build_model", "count_params", "layer_table", "summary"),
    "notebook": ("History", "Model", "load"),
    "runs": ("Run", "load_run"),
    "spec": ("Layer", "ModelSpec", "load_spec", "parse_spec"),
    "train": ("TrainConfig", "make_config", "train"),
    "zoo": ("MODELS", "RECIPES", "get_spec"),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "MODELS", "RECIPES", "History", "Layer", "MnistCnnError", "MnistData", "Model", "ModelSpec", "Run", "TrainConfig",
    "build_model", "count_params", "debug", "evaluate", "feature_maps", "find_mistakes", "format_metrics", "get_spec",
    "layer_table", "load", "load_mnist", "load_run", "load_spec", "make_config", "output_size_check", "parse_spec",
    "plot_augmented", "plot_confusion", "plot_curves", "plot_edge_filter", "plot_feature_maps", "plot_filters",
    "plot_mistakes", "plot_per_class", "plot_saliency", "predict_logits", "split_validation", "summary", "to_float",
    "train",
]


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
        globals()[name] = value  # the next lookup is an ordinary one
        return value
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule: mnist_cnn.runs.load_weights
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # importing the module mnist_cnn.train (or .evaluate) sets it on the package: the function keeps the name
        if not (isinstance(value, types.ModuleType) and name in _HOME):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # what type checkers and IDEs read; at run time the names come from __getattr__
    from .augment import plot_augmented
    from .data import MnistData, load_mnist, split_validation, to_float
    from .evaluate import evaluate, format_metrics, predict_logits
    from .explain import (
        feature_maps,
        find_mistakes,
        output_size_check,
        plot_confusion,
        plot_curves,
        plot_edge_filter,
        plot_feature_maps,
        plot_filters,
        plot_mistakes,
        plot_per_class,
        plot_saliency,
    )
    from .models import build_model, count_params, layer_table, summary
    from .notebook import History, Model, load
    from .runs import Run, load_run
    from .spec import Layer, ModelSpec, load_spec, parse_spec
    from .train import TrainConfig, make_config, train
    from .zoo import MODELS, RECIPES, get_spec
