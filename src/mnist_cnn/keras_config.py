"""Keras model configs <-> our specs: the architecture half of reading and writing Keras files.

A Keras file's config is untrusted data. Like Keras's `safe_mode`, anything that would run code is refused
(Lambda layers, serialized functions, custom objects registered outside Keras) before a layer is read, and
nothing in the config is ever imported, executed or unpickled: it is only compared with our vocabulary.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import MnistCnnError
from .spec import ModelSpec, parse_spec

#: Each Keras layer class we read: {Keras config option: our spec field}; the class keeps its name in our spec.
TRANSLATED: dict[str, dict[str, str]] = {
    "Conv2D": {"filters": "filters", "kernel_size": "kernel_size", "strides": "strides", "padding": "padding",
               "activation": "activation", "use_bias": "use_bias"},
    "MaxPooling2D": {"pool_size": "pool_size", "strides": "strides", "padding": "padding"},
    "AveragePooling2D": {"pool_size": "pool_size", "strides": "strides", "padding": "padding"},
    "GlobalAveragePooling2D": {},
    "Dense": {"units": "units", "activation": "activation", "use_bias": "use_bias"},
    "Dropout": {"rate": "rate"},
    "Flatten": {},
    "BatchNormalization": {"momentum": "momentum", "epsilon": "epsilon"},
    "Activation": {"activation": "activation"},
    "Reshape": {"target_shape": "target_shape"},
}
#: Options that must hold one of these values (Keras's defaults) for our layers to compute the same thing.
FIXED: dict[str, tuple[Any, ...]] = {
    "data_format": ("channels_last",), "dilation_rate": ([1, 1], 1), "groups": (1,), "keepdims": (False,),
    "noise_shape": (None,), "center": (True,), "scale": (True,), "renorm": (False,), "virtual_batch_size": (None,),
    "adjustment": (None,), "lora_rank": (None,), "quantization_config": (None,),
}
#: Options that change training only (initialisers, regularisers, constraints, seeds) or nothing we compute.
IGNORED = {"name", "trainable", "dtype", "seed", "synchronized", "fused", "renorm_clipping", "renorm_momentum",
           "lora_alpha", "kernel_initializer", "bias_initializer", "beta_initializer", "gamma_initializer",
           "moving_mean_initializer", "moving_variance_initializer", "kernel_regularizer", "bias_regularizer",
           "beta_regularizer", "gamma_regularizer", "activity_regularizer", "kernel_constraint", "bias_constraint",
           "beta_constraint", "gamma_constraint", "batch_input_shape", "input_shape", "axis"}
ALIASES = {"MaxPool2D": "MaxPooling2D", "AvgPool2D": "AveragePooling2D", "GlobalAvgPool2D": "GlobalAveragePooling2D"}
FUNCTIONAL = ("Functional", "Model")  # Keras 3, Keras 2
CHANNELS_LAST = ("Conv2D", "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "Flatten")
CODE_CLASSES = {"Lambda", "TFOpLambda", "SlicingOpLambda", "__lambda__", "function"}
MAX_DEPTH = 64  # a config nested deeper than this is not a Keras model's


def snake_case(name: str) -> str:
    """Keras's naming.to_snake_case: the group a layer's weights have in a Keras 3 weights file."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def keras_names(classes: list[str]) -> list[str]:
    """Keras 3's name for each layer of a Sequential model, and its group in model.weights.h5: the class in snake
    case, numbered from the second of a class on (conv2d, conv2d_1, ...)."""
    seen: dict[str, int] = {}
    names = []
    for cls in classes:
        base = snake_case(cls)
        seen[base] = seen.get(base, -1) + 1
        names.append(base if seen[base] == 0 else f"{base}_{seen[base]}")
    return names


def refuse_code(obj: Any, source: str, depth: int = 0) -> None:
    """Raise on anything in a config that Keras's safe_mode would refuse: code, or objects from outside Keras."""
    if depth > MAX_DEPTH:
        raise MnistCnnError(f"{source}: the model config is nested more than {MAX_DEPTH} levels deep")
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ()
    if isinstance(obj, dict):
        kind, module, registered = obj.get("class_name"), obj.get("module"), obj.get("registered_name")
        name = (obj.get("config") or {}).get("name") if isinstance(obj.get("config"), dict) else None
        what = f"layer {name!r} ({kind})" if name else f"{kind!r}"
        if kind in CODE_CLASSES or "function_type" in obj or (isinstance(kind, str) and ">" in kind):
            raise MnistCnnError(f"{source}: {what} holds Python code; refused, as Keras's safe_mode refuses it "
                                "(nothing in a model file is executed)")
        if (isinstance(module, str) and module.split(".")[0] not in ("keras", "tf_keras")) or \
                (registered is not None and registered != kind):
            raise MnistCnnError(f"{source}: {what} is a custom object (module {module!r}, registered as "
                                f"{registered!r}); only Keras's own layers are read, and no code is imported")
    for value in items:
        refuse_code(value, source, depth + 1)


def _layers_of(config: dict[str, Any], source: str) -> list[dict[str, Any]]:
    kind = config.get("class_name")
    if kind != "Sequential" and kind not in FUNCTIONAL:
        raise MnistCnnError(f"{source}: the model is a {kind!r}; mnist-cnn reads Sequential models (a plain stack "
                            "of layers, as the Keras tutorials build them) and Functional ones that are one chain")
    inner = config.get("config")
    layers = inner if isinstance(inner, list) else inner.get("layers") if isinstance(inner, dict) else None
    if not isinstance(layers, list) or not layers or not all(isinstance(layer, dict) for layer in layers):
        raise MnistCnnError(f"{source}: the {kind} config holds no list of layers")
    if kind in FUNCTIONAL:
        _check_chain(layers, inner if isinstance(inner, dict) else {}, source)
    return layers


def _inputs_of(raw: dict[str, Any]) -> list[Any]:
    """The names of the layers feeding this one, from Keras 3's or Keras 2's inbound_nodes."""
    names = []
    for node in raw.get("inbound_nodes") or []:
        args = node.get("args", []) if isinstance(node, dict) else node  # Keras 2: [[name, node, tensor, kwargs]]
        for arg in args:
            history = arg.get("config", {}).get("keras_history") if isinstance(arg, dict) else arg
            names.append(history[0] if isinstance(history, list) and history else None)
    return names


def _check_chain(layers: list[dict[str, Any]], inner: dict[str, Any], source: str) -> None:
    """A Functional model is read when it is a Sequential one in other words: input -> each layer -> output."""
    names = [raw.get("config", {}).get("name") if isinstance(raw.get("config"), dict) else None for raw in layers]
    ends = [inner.get(key) or [] for key in ("input_layers", "output_layers")]
    ends = [[end] if end and isinstance(end[0], str) else end for end in ends]  # Keras 3 writes one as a flat list
    if layers[0].get("class_name") != "InputLayer" or [[e[0] for e in end] for end in ends] != [names[:1], names[-1:]]:
        raise MnistCnnError(f"{source}: the Functional model's inputs {ends[0]} and outputs {ends[1]} are not one "
                            "InputLayer and its last layer; mnist-cnn reads a Functional model that is one chain")
    for before, raw, name in zip(names, layers[1:], names[1:]):
        if _inputs_of(raw) != [before]:
            raise MnistCnnError(f"{source}: layer {name!r} ({raw.get('class_name')}) takes {_inputs_of(raw)}, not "
                                f"just the layer before it ({before!r}); mnist-cnn reads a Functional model that is "
                                "one chain of layers")


def _input_shape(config: dict[str, Any], layers: list[dict[str, Any]], source: str) -> list[int]:
    """The input's shape without the batch axis: from the InputLayer, the first layer, or the built model."""
    first: Any = layers[0].get("config") if layers else None
    first = first if isinstance(first, dict) else {}
    inner: Any = config.get("config")
    inner = inner if isinstance(inner, dict) else {}
    shape = first.get("batch_shape") or first.get("batch_input_shape") or inner.get("build_input_shape")
    if not isinstance(shape, list) or len(shape) < 2:
        raise MnistCnnError(f"{source}: the model config gives no input shape (an InputLayer or build_input_shape)")
    return shape[1:]


def _translate(raw: dict[str, Any], source: str) -> dict[str, Any]:
    kind = raw.get("class_name")
    kind = ALIASES.get(kind, kind) if isinstance(kind, str) else kind
    config = raw.get("config")
    name = config.get("name") if isinstance(config, dict) else None
    where = f"{source}: layer {name!r} ({kind})"
    if kind not in TRANSLATED:
        raise MnistCnnError(f"{where} is not supported; mnist-cnn reads {', '.join(TRANSLATED)}")
    if not isinstance(config, dict):
        raise MnistCnnError(f"{where} has no config object")
    out: dict[str, Any] = {"type": kind}
    for option, value in config.items():
        if option in TRANSLATED[kind]:
            out[TRANSLATED[kind][option]] = value
        elif option in FIXED and value not in FIXED[option]:
            only = _pretty(FIXED[option][0])
            raise MnistCnnError(f"{where}: {option} {_pretty(value)} is not supported (only {only})")
        elif option == "dtype" and value not in ("float32", None) and _policy(value) != "float32":
            raise MnistCnnError(f"{where}: dtype {_policy(value)!r} is not supported (only 'float32')")
        elif option not in FIXED and option not in IGNORED:
            raise MnistCnnError(f"{where}: option {option!r} is not supported")
    if kind in ("MaxPooling2D", "AveragePooling2D") and out.get("strides") == out.get("pool_size"):
        out["strides"] = None  # Keras writes the pool size for the default; our zoo specs say None
    if not isinstance(out.get("activation", "linear"), str):
        raise MnistCnnError(f"{where}: activation {out['activation']!r} is not supported (a Keras activation name)")
    return out


def _pretty(value: Any) -> str:
    """Pairs the way Keras users write them: (2, 2)."""
    return repr(tuple(value)) if isinstance(value, list) else repr(value)


def _policy(dtype: Any) -> Any:
    return dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype


def _check_axis(raw: dict[str, Any], rank: int, source: str) -> None:
    """BatchNormalization must normalise the channels, the last axis (Keras 2 writes [3] or [1], Keras 3 -1)."""
    axis = raw["config"].get("axis", -1)
    axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
    if axis not in (-1, rank):
        raise MnistCnnError(f"{source}: layer {raw['config'].get('name')!r} (BatchNormalization): axis "
                            f"{raw['config'].get('axis')!r} is not supported (only the last axis, -1)")


def spec_from_keras(config: Any, name: str, source: str) -> tuple[ModelSpec, list[tuple[str, str]]]:
    """Our spec for a Keras model config, and where each of its layers keeps its weights: its name (the group in an
    HDF5 file's model_weights) and its group in a .keras file's model.weights.h5 (layers/GROUP/vars)."""
    if not isinstance(config, dict):
        raise MnistCnnError(f"{source}: the model config is not a JSON object")
    refuse_code(config, source)
    raw_layers = _layers_of(config, source)
    input_shape = _input_shape(config, raw_layers, source)
    body = [raw for raw in raw_layers if raw.get("class_name") != "InputLayer"]
    layers, shapes = [], [input_shape]
    for raw in body:
        layers.append(_translate(raw, source))
        if layers[-1]["type"] == "BatchNormalization":
            _check_axis(raw, len(shapes[-1]), source)
        shapes.append(_shape_after(layers[-1], shapes[-1]))
    spec = parse_spec({"name": name, "input_shape": input_shape, "layers": layers}, source)
    # a Functional model's InputLayer has a (empty) group of its own, a Sequential model's has none
    saveable = raw_layers if config.get("class_name") in FUNCTIONAL else body
    groups = keras_names([ALIASES.get(raw["class_name"], raw["class_name"]) for raw in saveable])
    return spec, [(raw["config"].get("name"), group) for raw, group in zip(body, groups[len(saveable) - len(body):])]


def _shape_after(layer: dict[str, Any], shape: list[int]) -> list[int]:
    """Only the rank matters here (for BatchNormalization's axis); parse_spec infers the real shapes."""
    if layer["type"] in ("Flatten", "Dense", "GlobalAveragePooling2D"):
        return [0]
    return list(layer["target_shape"]) if layer["type"] == "Reshape" else shape


def _keras_layer(kind: str, name: str, config: dict[str, Any], input_shape: list[int] | None) -> dict[str, Any]:
    dtype = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}, "registered_name": None}
    layer = {"module": "keras.layers", "class_name": kind,
             "config": {"name": name, "trainable": True, "dtype": dtype, **config}, "registered_name": None}
    if input_shape is not None:
        layer["build_config"] = {"input_shape": [None, *input_shape]}
    return layer


def keras_config(spec: ModelSpec, shapes: list[tuple[int, ...]]) -> tuple[dict[str, Any], list[str]]:
    """A Keras 3 config.json for our spec (`shapes`: infer_shapes' output), and each layer's Keras name."""
    names = keras_names([layer.type for layer in spec.layers])
    layers = []
    inputs = [list(spec.input_shape), *map(list, shapes)]
    for i, layer in enumerate(spec.layers):
        options = {keras: layer.args[ours] for keras, ours in TRANSLATED[layer.type].items()}
        if layer.type in ("MaxPooling2D", "AveragePooling2D") and options["strides"] is None:
            options["strides"] = options["pool_size"]  # Keras writes the pool size for strides=None
        if layer.type in CHANNELS_LAST:
            options["data_format"] = "channels_last"
        if layer.type == "BatchNormalization":
            options["axis"] = -1
        layers.append(_keras_layer(layer.type, names[i], options, inputs[i]))
    input_layer = {"module": "keras.layers", "class_name": "InputLayer", "registered_name": None,
                   "config": {"batch_shape": [None, *spec.input_shape], "dtype": "float32", "sparse": False,
                              "name": "input_layer"}}
    config = {"module": "keras", "class_name": "Sequential", "registered_name": None,
              "config": {"name": _keras_model_name(spec.name), "trainable": True,
                         "layers": [input_layer, *layers], "build_input_shape": [None, *spec.input_shape]},
              "build_config": {"input_shape": [None, *spec.input_shape]}}
    return config, names


def _keras_model_name(name: str) -> str:
    """Keras model names are Python-identifier-like; ours may hold dashes ('keras-basic')."""
    return re.sub(r"\W", "_", name) or "sequential"
