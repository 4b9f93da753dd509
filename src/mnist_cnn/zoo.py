"""Named architectures and the tutorial recipe each one carries, written as data (like timm's model_cfgs).

Each entry's layers use the same vocabulary as a user's spec file; its `recipe` holds the training
defaults of the tutorial it reproduces, so `mnist-cnn train --model NAME` alone runs that tutorial.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def deotte(filters: int = 32, dropout: float = 0.4) -> list[dict[str, Any]]:
    """Chris Deotte's Kaggle MNIST CNN ("25 Million Images! [0.99757]"): BN after every conv, two learned
    5x5 stride-2 downsamplings instead of max-pooling, dropout 0.4; `filters` sets the width (32-64-128)."""
    f1, f2, f3 = filters, 2 * filters, 4 * filters

    def block(f: int) -> list[dict[str, Any]]:
        return [_conv(f, activation="relu"), {"type": "BatchNormalization"},
                _conv(f, activation="relu"), {"type": "BatchNormalization"},
                _conv(f, 5, strides=2, padding="same", activation="relu"), {"type": "BatchNormalization"},
                *([{"type": "Dropout", "rate": dropout}] if dropout else [])]

    return [*block(f1), *block(f2), _conv(f3, 4, activation="relu"), {"type": "BatchNormalization"},
            {"type": "Flatten"}, *([{"type": "Dropout", "rate": dropout}] if dropout else []), _classifier()]


# the short recipes' batch norm: momentum 0.9, because Keras's 0.99 leaves the moving statistics behind
# fast-changing weights in runs of a few hundred steps
_BN_SHORT = {"type": "BatchNormalization", "momentum": 0.9}
_RELU = {"type": "Activation", "activation": "relu"}


def _fast_stem() -> list[dict[str, Any]]:
    """A stride-2 5x5 conv of 16 and a max-pool: 28x28 to 7x7 at once; batch norm after the pool (as airbench)
    normalises 4x fewer values."""
    return [_conv(16, 5, strides=2, padding="same"), {"type": "MaxPooling2D"}, _BN_SHORT, _RELU]


def fast_cnn() -> list[dict[str, Any]]:
    """A small net that learns MNIST in one epoch, shaped for CPU time (benchmarks/time_to_accuracy.py): the stem,
    then a 3x3 conv of 64 ('valid', no second pool) on few positions. Validation accuracy, mean of 5 seeds
    (benchmarks/tricks.py): 99.21% in 2.6 s; with a pool after the conv of 64, 99.13% in 3.1 s; the former
    16 5x5/2 + 32 5x5 at 14x14, 99.19% in 9.4 s for two epochs."""
    return [*_fast_stem(), _conv(64, 3), _BN_SHORT, _RELU, {"type": "Flatten"}, _classifier()]


def minute_cnn() -> list[dict[str, Any]]:
    """fast-cnn's stem, then 3x3 convs of 64 and 128 at 7x7 and a pool, for the `minute` recipe: 99.59% on
    validation in 4 epochs, 45 s (5 seeds; benchmarks/tricks.py), where a stride-2 conv of 24 + convs of 64 and
    128 at 14x14 and 7x7 took 3 epochs and 53 s for 99.54% (2 seeds, both with augmentation, which measured
    99.54% on this net: dropped)."""
    return [*_fast_stem(), _conv(64, 3, padding="same"), _BN_SHORT, _RELU, _conv(128, 3, padding="same"),
            {"type": "MaxPooling2D"}, _BN_SHORT, _RELU, {"type": "Flatten"}, _classifier()]


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
    "deotte": ZooEntry(deotte, {"optimizer": "adam", "batch_size": 64, "epochs": 45, "schedule": "exponential",
                                "lr_decay": 0.95, "val_size": 6000,
                                "augment": {"rotation": 10, "zoom": 0.1, "width_shift": 0.1, "height_shift": 0.1}},
                       "99.64% (mean of 100 single CNNs)",
                       "Deotte's Kaggle CNN: 6 conv with batch norm (two 5x5 stride-2), 4x4 conv head, dropout 0.4",
                       options={"filters": int, "dropout": float}),
    "fast-cnn": ZooEntry(fast_cnn, {"optimizer": "adam", "lr": 3e-2, "batch_size": 128, "epochs": 1,
                                    "schedule": "onecycle", "label_smoothing": 0.1},
                         "(ours)", "16 5x5/2 + pool + 64 3x3 conv, batch norm: the `fast` recipe (99% in one epoch)"),
    "minute-cnn": ZooEntry(minute_cnn, {"optimizer": "adam", "lr": 2e-2, "batch_size": 128, "epochs": 4,
                                        "schedule": "onecycle", "label_smoothing": 0.1},
                           "(ours)", "fast-cnn's stem + 3x3 convs of 64 and 128: the `minute` recipe (99.46%)"),
    "mlp": ZooEntry(mlp, {"optimizer": "rmsprop", "batch_size": 128, "epochs": 5}, "~92% (quoted)",
                    "the dense baseline: flatten + dense 512"),
}


def get_spec(name_or_path: str | Path, num_classes: int = 10, **options: Any) -> ModelSpec:
    """A named architecture (with its options, e.g. kernel_size=3) or a spec file's architecture.

    A named model's last Dense gives `num_classes` scores (its head follows the data); a spec file's stays as
    written, and training refuses it when it does not match the data."""
    name = str(name_or_path)
    if name in MODELS:
        entry = MODELS[name]
        bad = sorted(set(options) - set(entry.options))
        if bad:
            raise MnistCnnError(f"model {name!r} has no option {bad[0]!r}; options: {sorted(entry.options) or 'none'}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise MnistCnnError(f"num_classes={num_classes!r}: expected a whole number of classes, 2 or more")
        layers = entry.layers(**options)
        layers[-1] = {**layers[-1], "units": num_classes}  # every entry ends with _classifier()
        return parse_spec({"name": name, "input_shape": list(entry.input_shape), "layers": layers}, name)
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

# `fast`: the quickest way to 99% here, `minute`: to 99.5%; chosen on the last 5,000 training images, measured on
# the test set over 5 seeds by benchmarks/time_to_accuracy.py (docs/speed.md)
RECIPES["fast"] = {"model": "fast-cnn"}
RECIPES["minute"] = {"model": "minute-cnn"}

# `best`: Deotte's CNN and augmentation, compressed to fit 10 minutes on a 2-core CPU: a one-cycle schedule
# (peak 2e-3) over 15 epochs instead of 45 epochs of 0.95 decay, batch 128, bfloat16 autocast (AVX-512 BF16).
# Chosen on the last 5,000 training images (val_size), never on the test set: 20 and 15 epochs both ended at
# 99.66% validation accuracy, so the shorter. About 32 s/epoch with one thread; benchmarks/accuracy.py measures it.
RECIPES["best"] = {
    "model": "deotte", "optimizer": "adam", "lr": 2e-3, "schedule": "onecycle", "epochs": 15, "batch_size": 128,
    "augment": {"rotation": 10, "zoom": 0.1, "width_shift": 0.1, "height_shift": 0.1},
    "val_size": 5000, "precision": "bf16",
}
