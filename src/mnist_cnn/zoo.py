"""Named architectures and the tutorial recipe each one carries, written as data (like timm's model_cfgs).

Each entry's layers use the same vocabulary as a user's spec file; its `recipe` holds the training
defaults of the tutorial it reproduces, so `mnist-cnn train --model NAME` alone runs that tutorial.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import MnistCnnError
from .spec import ModelSpec, load_spec, parse_spec


def _conv(filters: int, k: int = 3, **kw: Any) -> dict[str, Any]:
    return {"type": "Conv2D", "filters": filters, "kernel_size": k, **kw}


def _classifier() -> dict[str, Any]:
    return {"type": "Dense", "units": 10, "activation": "softmax"}


def keras_basic(first_padding: str = "valid") -> list[dict[str, Any]]:
    return [
        _conv(32, activation="relu", padding=first_padding), {"type": "MaxPooling2D", "pool_size": 2},
        _conv(64, activation="relu"), {"type": "MaxPooling2D", "pool_size": 2},
        _conv(64, activation="relu"), {"type": "Flatten"},
        {"type": "Dense", "units": 64, "activation": "relu"}, _classifier(),
    ]


def keras_bn() -> list[dict[str, Any]]:
    def conv_bn(filters: int) -> list[dict[str, Any]]:
        return [_conv(filters), {"type": "BatchNormalization"}, {"type": "Activation", "activation": "relu"}]

    return [
        *conv_bn(32), *conv_bn(32), {"type": "MaxPooling2D"},
        *conv_bn(64), *conv_bn(64), {"type": "MaxPooling2D"},
        {"type": "Flatten"}, {"type": "Dense", "units": 512}, {"type": "BatchNormalization"},
        {"type": "Activation", "activation": "relu"}, {"type": "Dropout", "rate": 0.2}, _classifier(),
    ]


def keras_dropout(kernel_size: int = 5, dropout: bool = True) -> list[dict[str, Any]]:
    drop = (lambda rate: [{"type": "Dropout", "rate": rate}]) if dropout else (lambda rate: [])
    return [
        {"type": "Reshape", "target_shape": [28, 28, 1]},
        _conv(32, kernel_size, activation="relu"), _conv(64, kernel_size, activation="relu"),
        {"type": "MaxPooling2D"}, *drop(0.25), {"type": "Flatten"},
        {"type": "Dense", "units": 128, "activation": "relu"}, *drop(0.5), _classifier(),
    ]


def mlp() -> list[dict[str, Any]]:
    return [{"type": "Flatten"}, {"type": "Dense", "units": 512, "activation": "relu"}, _classifier()]


@dataclass(frozen=True)
class ZooEntry:
    layers: Callable[..., list[dict[str, Any]]]
    recipe: dict[str, Any]
    tutorial_accuracy: str
    description: str
    input_shape: tuple[int, ...] = (28, 28, 1)
    options: dict[str, type] = field(default_factory=dict)


MODELS: dict[str, ZooEntry] = {
    "keras-basic": ZooEntry(keras_basic, {"optimizer": "rmsprop", "batch_size": 64, "epochs": 5}, "99.28%",
                            "the Keras getting-started convnet: 3 conv + 2 max-pool + dense 64"),
    "keras-same": ZooEntry(lambda: keras_basic("same"), {"optimizer": "rmsprop", "batch_size": 64, "epochs": 5},
                           "99.15%", "keras-basic with padding='same' on the first conv"),
    "keras-bn": ZooEntry(keras_bn, {"optimizer": "adam", "batch_size": 64, "epochs": 5,
                                    "augment": {"rotation": 8, "width_shift": 0.08, "height_shift": 0.08,
                                                "shear": 0.3, "zoom": 0.08}},
                         "99.55%", "4 conv with batch norm + dense 512 with batch norm and dropout"),
    "keras-dropout": ZooEntry(keras_dropout, {"optimizer": "adam", "batch_size": 500, "epochs": 20, "val_size": 5000},
                              "99.1-99.3%", "flat 784 input reshaped; 2 conv (5x5) + dropout 0.25/0.5",
                              input_shape=(784,), options={"kernel_size": int, "dropout": bool}),
    "mlp": ZooEntry(mlp, {"optimizer": "rmsprop", "batch_size": 128, "epochs": 5}, "~92% (quoted)",
                    "the dense baseline: flatten + dense 512"),
}


def get_spec(name_or_path: str | Path, **options: Any) -> ModelSpec:
    """A named architecture (with its options, e.g. kernel_size=3) or a spec file's architecture."""
    name = str(name_or_path)
    if name in MODELS:
        entry = MODELS[name]
        bad = sorted(set(options) - set(entry.options))
        if bad:
            raise MnistCnnError(f"model {name!r} has no option {bad[0]!r}; options: {sorted(entry.options) or 'none'}")
        return parse_spec({"name": name, "input_shape": list(entry.input_shape),
                           "layers": entry.layers(**options)}, name)
    if Path(name).suffix.lower() in (".toml", ".json", ".yaml", ".yml"):
        if options:
            raise MnistCnnError(f"model options {sorted(options)} apply to named models, not to spec file {name}")
        return load_spec(name)
    raise MnistCnnError(f"unknown model {name!r}: expected one of {', '.join(MODELS)} or a .toml/.json/.yaml spec file")


def recipe_for(name_or_path: str | Path) -> dict[str, Any]:
    """The training defaults a named model carries (empty for a spec file)."""
    entry = MODELS.get(str(name_or_path))
    return dict(entry.recipe) if entry else {}


# Named recipes: model + optimiser + schedule + augmentation + epochs. A tutorial's recipe is its model's.
RECIPES: dict[str, dict[str, Any]] = {name: {"model": name} for name in MODELS}
