"""mnist-cnn: train, evaluate, explain, export and serve CNNs on MNIST-style 28x28 grayscale images.

    from mnist_cnn import load_mnist, get_spec, summary, make_config, train, load_run, evaluate
    from mnist_cnn import Model, load      # the Keras-shaped object API for notebooks

The names below are imported on first use: `mnist-cnn --help` and a mistyped flag answer at once instead of
after importing torch (about 2 s), and a Ctrl-C during that import reaches the CLI's handler, not a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from .errors import MnistCnnError  # noqa: F401  (public, in PUBLIC)

try:
    __version__ = version("mnist-cnn")  # pyproject.toml's version is the only one
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "(not installed)"

# Every public name and the module it lives in: __all__, the lazy imports and dir() all come from here.
PUBLIC: dict[str, str] = {
    "MnistCnnError": "errors", "debug": "errors",
    "plot_augmented": "augment",
    "MnistData": "data", "load_mnist": "data", "split_validation": "data",
    "as_labels": "inputs", "as_model_input": "inputs", "to_float": "inputs",
    "evaluate": "evaluation", "format_metrics": "evaluation", "predict_logits": "evaluation",
    **dict.fromkeys(("feature_maps", "find_mistakes", "output_size_check", "plot_confusion", "plot_curves",
                     "plot_edge_filter", "plot_feature_maps", "plot_filters", "plot_mistakes", "plot_per_class",
                     "plot_saliency"), "explain"),
    "History": "notebook", "Model": "notebook", "load": "notebook",
    "build_model": "models", "count_params": "models", "layer_table": "models", "summary": "models",
    "Run": "runs", "load_run": "runs",
    "ModelSource": "sources", "open_model": "sources",
    "Layer": "spec", "ModelSpec": "spec", "load_spec": "spec", "parse_spec": "spec",
    "TrainConfig": "training", "make_config": "training", "train": "training",
    "MODELS": "zoo", "RECIPES": "zoo", "get_spec": "zoo",
}

__all__ = sorted(PUBLIC)


def __getattr__(name: str) -> Any:
    if name in PUBLIC:
        value = getattr(importlib.import_module(f".{PUBLIC[name]}", __name__), name)
        globals()[name] = value  # the next lookup is an ordinary one
        return value
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule: mnist_cnn.runs.load_weights
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *PUBLIC})


if TYPE_CHECKING:  # what type checkers and IDEs read; at run time the names come from __getattr__
    from .augment import plot_augmented  # noqa: F401
    from .data import MnistData, load_mnist, split_validation  # noqa: F401
    from .errors import debug  # noqa: F401
    from .evaluation import evaluate, format_metrics, predict_logits  # noqa: F401
    from .explain import (  # noqa: F401
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
    from .inputs import as_labels, as_model_input, to_float  # noqa: F401
    from .models import build_model, count_params, layer_table, summary  # noqa: F401
    from .notebook import History, Model, load  # noqa: F401
    from .runs import Run, load_run  # noqa: F401
    from .sources import ModelSource, open_model  # noqa: F401
    from .spec import Layer, ModelSpec, load_spec, parse_spec  # noqa: F401
    from .training import TrainConfig, make_config, train  # noqa: F401
    from .zoo import MODELS, RECIPES, get_spec  # noqa: F401
