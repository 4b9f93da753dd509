"""Architectures as data: a list of layers in Keras's vocabulary, validated, with shapes inferred.

A spec file (TOML, JSON or YAML) looks like:

    name = "my-net"
    input_shape = [28, 28, 1]
    [[layers]]
    type = "Conv2D"
    filters = 32
    kernel_size = 3
    activation = "relu"
    [[layers]]
    type = "Flatten"
    [[layers]]
    type = "Dense"
    units = 10
    activation = "softmax"

Shapes are Keras's (height, width, channels) without the batch axis and are never written by hand.
"""

from __future__ import annotations

import difflib
import math
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .documents import read_document
from .errors import MnistCnnError

ACTIVATIONS = ("linear", "relu", "softmax", "sigmoid", "tanh", "elu", "selu", "gelu", "silu", "swish", "leaky_relu")

# Every layer type: its fields with defaults (REQUIRED = must be given). Keras's names and defaults.
REQUIRED = object()
LAYER_FIELDS: dict[str, dict[str, Any]] = {
    "Conv2D": {"filters": REQUIRED, "kernel_size": REQUIRED, "strides": 1, "padding": "valid",
               "activation": "linear", "use_bias": True},
    "MaxPooling2D": {"pool_size": 2, "strides": None, "padding": "valid"},
    "AveragePooling2D": {"pool_size": 2, "strides": None, "padding": "valid"},
    "GlobalAveragePooling2D": {},
    "Dense": {"units": REQUIRED, "activation": "linear", "use_bias": True},
    "Dropout": {"rate": REQUIRED},
    "Flatten": {},
    "BatchNormalization": {"momentum": 0.99, "epsilon": 0.001},
    "Activation": {"activation": REQUIRED},
    "Reshape": {"target_shape": REQUIRED},
}
#: Refused before anything is allocated, naming the layer: a spec asking for more is a typo, not a model.
MAX_PARAMS = 100_000_000  # parameters in the whole model (Keras's count, BatchNorm statistics included)
MAX_VALUES = 10_000_000  # values in one layer's output, per image (the zoo's largest: 25,088)
MAX_WINDOW = 10_000  # kernel, pool and stride sizes: torch's int32 arithmetic overflows at 2**31
#: The model input is one 28x28 grayscale digit: as an image (H, W, C) or flat (784 values).
INPUT_SHAPES = ((28, 28, 1), (784,))
ALIASES = {"MaxPool2D": "MaxPooling2D", "AvgPool2D": "AveragePooling2D", "AveragePool2D": "AveragePooling2D",
           "GlobalAvgPool2D": "GlobalAveragePooling2D", "BatchNorm": "BatchNormalization"}


@dataclass(frozen=True)
class Layer:
    """One layer: its Keras type name and its fields (defaults filled in)."""

    type: str
    args: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **self.args}


@dataclass(frozen=True)
class ModelSpec:
    """A whole architecture. `input_shape` is Keras's (H, W, C), or (784,) for a flat input."""

    name: str
    layers: tuple[Layer, ...]
    input_shape: tuple[int, ...] = (28, 28, 1)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "input_shape": list(self.input_shape),
                "layers": [layer.to_dict() for layer in self.layers]}

    @classmethod
    def from_dict(cls, obj: Any, source: str = "spec") -> ModelSpec:
        return parse_spec(obj, source)

    @property
    def num_classes(self) -> int:
        return infer_shapes(self)[-1][0]


def _show(value: Any) -> str:
    """A bounded repr for messages: YAML aliases can nest a few bytes into billions of elements."""
    return _REPR.repr(value)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, 60, 60


def _pair(value: Any, where: str, name: str) -> tuple[int, int]:
    items = value if isinstance(value, (list, tuple)) else [value, value]
    if len(items) != 2 or not all(_is_int(v) and 0 < v <= MAX_WINDOW for v in items):
        raise MnistCnnError(f"{where}: field '{name}' must be a positive integer up to {MAX_WINDOW:,} or a pair "
                            f"of them, got {_show(value)}")
    return int(items[0]), int(items[1])


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_layer(index: int, raw: Any, source: str) -> Layer:
    if not isinstance(raw, dict):
        raise MnistCnnError(f"{source}: layer {index} must be a table/object with a 'type', got {_show(raw)}")
    kind = raw.get("type")
    kind = ALIASES.get(kind, kind) if isinstance(kind, str) else kind
    if "type" not in raw:
        raise MnistCnnError(f"{source}: layer {index} has no 'type' (one of {', '.join(LAYER_FIELDS)})")
    if not isinstance(kind, str) or kind not in LAYER_FIELDS:
        close = difflib.get_close_matches(str(kind).lower(), [k.lower() for k in LAYER_FIELDS], n=1, cutoff=0.8)
        hint = f"did you mean {next(k for k in LAYER_FIELDS if k.lower() == close[0])}? " if close else ""
        raise MnistCnnError(f"{source}: layer {index} has unknown type {_show(raw.get('type'))}; "
                            f"{hint}known: {', '.join(LAYER_FIELDS)}")
    where = f"{source}: layer {index} ({kind})"
    fields = LAYER_FIELDS[kind]
    unknown = sorted(set(raw) - set(fields) - {"type"}, key=str)  # YAML keys may be numbers
    if unknown == ["input_shape"]:  # Keras tutorials put it on the first layer
        raise MnistCnnError(f"{where}: 'input_shape' goes at the top level of the spec, beside 'layers'")
    if unknown:
        raise MnistCnnError(f"{where}: unknown field {_show(unknown[0])}; "
                            f"expected one of {sorted(fields) or 'none'}")
    args: dict[str, Any] = {}
    for name, default in fields.items():
        if name not in raw and default is REQUIRED:
            raise MnistCnnError(f"{where}: missing required field '{name}'")
        value = raw.get(name, default)
        if value is None and name == "activation":
            value = "linear"
        elif value is None and name == "strides" and kind == "Conv2D":  # null = the default (pools: the pool size)
            value = default
        args[name] = _check_field(where, name, value)
    return Layer(kind, args)


def _check_field(where: str, name: str, value: Any) -> Any:
    """Validate one field by its name; returns the normalised value (pairs as lists, for JSON)."""
    if name in ("filters", "units"):
        if not _is_int(value) or value <= 0:
            raise MnistCnnError(f"{where}: field '{name}' must be a positive integer, got {_show(value)}")
    elif name in ("kernel_size", "pool_size"):
        return list(_pair(value, where, name))
    elif name == "strides":
        return None if value is None else list(_pair(value, where, name))
    elif name == "padding":
        if not isinstance(value, str) or value.lower() not in ("valid", "same"):  # Keras takes "SAME" too
            raise MnistCnnError(f"{where}: field 'padding' must be 'valid' or 'same', got {_show(value)}")
        return value.lower()
    elif name == "activation":
        if value not in ACTIVATIONS:
            raise MnistCnnError(f"{where}: field 'activation' must be one of {', '.join(ACTIVATIONS)}, "
                                f"got {_show(value)}")
    elif name == "use_bias":
        if not isinstance(value, bool):
            raise MnistCnnError(f"{where}: field 'use_bias' must be true or false, got {_show(value)}")
    elif name in ("rate", "momentum"):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not (0 <= value < 1):
            raise MnistCnnError(f"{where}: field '{name}' must be a number in [0, 1), got {_show(value)}")
        return float(value)
    elif name == "epsilon":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not (value > 0 and math.isfinite(value)):
            raise MnistCnnError(f"{where}: field 'epsilon' must be a positive number, got {_show(value)}")
        return float(value)
    elif name == "target_shape":
        if not isinstance(value, (list, tuple)) or not value or not all(_is_int(v) and v > 0 for v in value):
            raise MnistCnnError(f"{where}: field 'target_shape' must be a list of positive integers, "
                                f"got {_show(value)}")
        return list(value)
    return value


def parse_spec(obj: Any, source: str = "spec") -> ModelSpec:
    """Validate a spec given as plain data; every error names the layer and the field."""
    if not isinstance(obj, dict):
        raise MnistCnnError(f"{source}: a spec must be a table/object with 'layers', got {type(obj).__name__}")
    unknown = sorted(set(obj) - {"name", "input_shape", "layers"}, key=str)
    if unknown:
        raise MnistCnnError(f"{source}: unknown top-level field {_show(unknown[0])}; "
                            "expected name, input_shape, layers")
    name = obj.get("name", Path(source).stem if source != "spec" else "custom")
    if not isinstance(name, str) or not name:
        raise MnistCnnError(f"{source}: 'name' must be a non-empty string, got {_show(name)}")
    shape = obj.get("input_shape", [28, 28, 1])
    if not isinstance(shape, (list, tuple)) or not all(_is_int(v) for v in shape) or tuple(shape) not in INPUT_SHAPES:
        raise MnistCnnError(f"{source}: 'input_shape' must be [28, 28, 1] (an image) or [784] (flat): the input "
                            f"is a 28x28 grayscale digit; got {_show(shape)}")
    layers = obj.get("layers")
    if not isinstance(layers, list) or not layers:
        raise MnistCnnError(f"{source}: 'layers' must be a non-empty list of layers")
    spec = ModelSpec(name, tuple(_check_layer(i, raw, source) for i, raw in enumerate(layers)), tuple(shape))
    for i, layer in enumerate(spec.layers[:-1]):  # the loss and predict_proba apply the output's softmax themselves
        if layer.args.get("activation") == "softmax":
            raise MnistCnnError(f"{source}: layer {i} ({layer.type}): softmax may only be the last layer's activation "
                                f"(it turns the output into probabilities), but {len(spec.layers) - 1 - i} layer(s) "
                                "follow it")
    infer_shapes(spec, source)
    return spec


def _conv_out(size: int, kernel: int, stride: int, padding: str) -> int:
    # Keras: 'same' keeps ceil(n / s); 'valid' is floor((n - f) / s) + 1, the (n + 2p - f)/s + 1 rule with p = 0
    return math.ceil(size / stride) if padding == "same" else (size - kernel) // stride + 1


def infer_shapes(spec: ModelSpec, source: str = "spec") -> list[tuple[int, ...]]:
    """The output shape (without the batch axis) of every layer, in Keras's (H, W, C) form.

    Also refuses, naming the layer, a model over MAX_PARAMS parameters or a layer output over MAX_VALUES
    values per image: checked here, from the shapes alone, before any tensor is allocated."""
    shape = tuple(spec.input_shape)
    shapes = []
    params = 0
    for i, layer in enumerate(spec.layers):
        where = f"{source}: layer {i} ({layer.type})"
        a = layer.args
        if layer.type in ("Conv2D", "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D") and len(shape) != 3:
            raise MnistCnnError(f"{where}: needs an image input (H, W, C), got shape {shape}; add a Reshape first")
        if layer.type in ("Conv2D", "MaxPooling2D", "AveragePooling2D"):
            kernel = a["kernel_size"] if layer.type == "Conv2D" else a["pool_size"]
            strides = a["strides"] or (kernel if layer.type != "Conv2D" else [1, 1])
            h, w = (_conv_out(shape[d], kernel[d], strides[d], a["padding"]) for d in (0, 1))
            if kernel[0] > shape[0] or kernel[1] > shape[1]:  # 'same' too: such a kernel would mostly see padding
                raise MnistCnnError(f"{where}: kernel {kernel[0]}x{kernel[1]} is larger than its input "
                                    f"{shape[0]}x{shape[1]}")
            if layer.type == "Conv2D":
                params += kernel[0] * kernel[1] * shape[2] * a["filters"] + (a["filters"] if a["use_bias"] else 0)
            shape = (h, w, a["filters"] if layer.type == "Conv2D" else shape[2])
        elif layer.type == "GlobalAveragePooling2D":
            shape = (shape[2],)
        elif layer.type == "Dense":
            if len(shape) != 1:
                raise MnistCnnError(f"{where}: needs a flat input, got shape {shape}; add a Flatten first")
            params += shape[0] * a["units"] + (a["units"] if a["use_bias"] else 0)
            shape = (a["units"],)
        elif layer.type == "BatchNormalization":
            if len(shape) not in (1, 3):
                raise MnistCnnError(f"{where}: needs a flat (features) or image (H, W, C) input, got shape {shape}")
            params += 4 * shape[-1]  # gamma, beta, moving mean, moving variance
        elif layer.type == "Flatten":
            shape = (math.prod(shape),)
        elif layer.type == "Reshape":
            target = tuple(a["target_shape"])
            if math.prod(target) != math.prod(shape):
                raise MnistCnnError(f"{where}: cannot reshape {shape} ({math.prod(shape)} values) "
                                    f"to {target} ({math.prod(target)} values)")
            shape = target
        if params > MAX_PARAMS:
            raise MnistCnnError(f"{where}: the model would have {params:,} parameters up to this layer, more than "
                                f"the limit of {MAX_PARAMS:,}")
        if math.prod(shape) > MAX_VALUES:
            raise MnistCnnError(f"{where}: output shape {shape} holds {math.prod(shape):,} values per image, more "
                                f"than the limit of {MAX_VALUES:,}")
        shapes.append(shape)
    if len(shapes[-1]) != 1:
        raise MnistCnnError(f"{source}: the last layer must give a flat vector of class scores, got shape {shapes[-1]}")
    return shapes


def load_spec(path: str | Path) -> ModelSpec:
    """Read a spec from a .toml, .json, .yaml or .yml file."""
    obj = read_document(path, "spec")
    return parse_spec(obj, str(path))
