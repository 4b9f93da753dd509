"""Property tests: whatever a spec holds, `parse_spec` / `load_spec` give a buildable model or raise MnistCnnError.

Nothing else may escape (no TypeError from an unhashable 'type', no allocation error from a billion units):
a spec over the parameter or activation limit is refused from its shapes, before any tensor exists.
"""

from __future__ import annotations

import json
import math
import tracemalloc

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mnist_cnn.errors import MnistCnnError
from mnist_cnn.models import build_model
from mnist_cnn.spec import LAYER_FIELDS, MAX_PARAMS, MAX_VALUES, ModelSpec, infer_shapes, load_spec, parse_spec

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])
FORWARD_LIMIT = 300_000  # models up to this many parameters also run one forward pass (fast on a CPU)

# ---------------------------------------------------------------- strategies

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 40), st.integers(), st.sampled_from([2**31, 2**63, 10**12, -(2**40)]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([float("nan"), float("inf"), -0.0, 0.5, 1e-3]),
    st.text(max_size=8), st.sampled_from(["same", "valid", "relu", "softmax", "linear", "Conv2D", "Dense", ""]),
)
json_like = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=6), st.sampled_from(
        ["type", "layers", "name", "input_shape", "units", "filters", "kernel_size"])), inner, max_size=4)),
    max_leaves=20)

LAYER_TYPES = [*LAYER_FIELDS, "MaxPool2D", "BatchNorm"]
BAD_TYPES = ["Conv3D", "dense", "", "linear"]
small_ints = st.integers(1, 6)
# Each field: a good value most of the time, so that many specs get through to the builder; a wild one
# (NaN, inf, negative, huge, string, bool, None, nested) now and then, to reach every check.
good_values = {
    "filters": st.integers(1, 16) | st.sampled_from([10**6, 2**40]),
    "units": st.integers(1, 64) | st.just(10) | st.sampled_from([10**6, 10**9]),
    "kernel_size": small_ints | st.lists(small_ints, min_size=2, max_size=2) | st.integers(0, 40),
    "pool_size": small_ints | st.lists(small_ints, min_size=2, max_size=2),
    "strides": st.none() | small_ints | st.lists(small_ints, min_size=2, max_size=2) | st.just(10**9),
    "padding": st.sampled_from(["valid", "same"]),
    "activation": st.sampled_from(["relu", "softmax", "linear", "tanh", "gelu", None]),
    "use_bias": st.booleans(),
    "rate": st.floats(0, 0.99),
    "momentum": st.floats(0, 0.999),
    "epsilon": st.floats(1e-6, 1.0),
    "target_shape": st.sampled_from([[28, 28, 1], [784], [14, 56, 1], [7, 7, 16], [4, 196], [2, 2, 2, 98], [196, 4]])
                    | st.lists(st.integers(-2, 64), max_size=4),
}
wild_values = st.one_of(scalars, json_like, st.lists(scalars, min_size=1, max_size=3))


def rarely(draw, n: int) -> bool:
    """True about once in n draws (hypothesis leans to small integers, so st.integers(0, n) == 0 is not 1/n)."""
    return draw(st.sampled_from(range(n))) == n - 1


@st.composite
def plausible_layer(draw) -> dict:
    if rarely(draw, 10):
        kind = draw(st.sampled_from(BAD_TYPES) | json_like)  # 'Conv3D', 'dense', [1], {...}
    else:
        kind = draw(st.sampled_from(LAYER_TYPES))
    layer = {"type": kind}
    kind = kind if isinstance(kind, str) else ""
    for name in LAYER_FIELDS.get(kind, {}):
        if not rarely(draw, 15):  # usually present, sometimes left to its default (or missing)
            layer[name] = draw(wild_values if rarely(draw, 12) else good_values[name])
    if rarely(draw, 20):
        layer[draw(st.sampled_from(["colour", "units", "rate", "filters", "1"]))] = draw(scalars)
    return layer


@st.composite
def plausible_spec(draw) -> dict:
    layers = draw(st.lists(plausible_layer(), max_size=5))
    if not rarely(draw, 4):  # end the way a classifier does, so more specs get through to the builder
        units = draw(st.sampled_from([10, 10, 10, 3, 10**6, 10**9]))
        layers += [{"type": "Flatten"}, {"type": "Dense", "units": units, "activation": "softmax"}]
    spec = {"layers": layers}
    if rarely(draw, 6):
        spec["input_shape"] = draw(st.sampled_from([[28, 28, 1], [784], [32, 32, 3], [28, 28], [10**12]]) | json_like)
    if rarely(draw, 8):
        spec["name"] = draw(scalars)
    return spec


# ---------------------------------------------------------------- the property


def check_spec_or_refusal(make) -> ModelSpec | None:
    """`make()` returns a ModelSpec or raises MnistCnnError (one line); a spec must then build and run."""
    try:
        spec = make()
    except MnistCnnError as e:
        assert "\n" not in str(e)
        return None
    assert isinstance(spec, ModelSpec)
    shapes = infer_shapes(spec)
    params = _keras_params(spec, shapes)
    assert params <= MAX_PARAMS and all(math.prod(s) <= MAX_VALUES for s in shapes)
    model = build_model(spec)  # nothing over the limits reaches here, so this cannot run out of memory
    assert sum(p.numel() for p in model.parameters()) <= params
    if params <= FORWARD_LIMIT and all(math.prod(s) <= 200_000 for s in shapes):
        with torch.no_grad():
            out = model.eval()(torch.rand(2, 1, 28, 28))
        assert tuple(out.shape) == (2, *shapes[-1])
    return spec


def _keras_params(spec: ModelSpec, shapes: list[tuple[int, ...]]) -> int:
    total, previous = 0, tuple(spec.input_shape)
    for layer, shape in zip(spec.layers, shapes):
        a = layer.args
        if layer.type == "Conv2D":
            total += (a["kernel_size"][0] * a["kernel_size"][1] * previous[2] * a["filters"]
                      + a["filters"] * a["use_bias"])
        elif layer.type == "Dense":
            total += previous[0] * a["units"] + a["units"] * a["use_bias"]
        elif layer.type == "BatchNormalization":
            total += 4 * previous[-1]
        previous = shape
    return total


@FUZZ
@given(obj=json_like)
def test_arbitrary_nested_data_is_a_spec_or_a_mnist_cnn_error(obj):
    check_spec_or_refusal(lambda: parse_spec(obj, "fuzz.json"))


@FUZZ
@given(obj=plausible_spec())
@example(obj={"layers": [{"type": "AveragePooling2D", "pool_size": 1, "strides": 2**31}, {"type": "Flatten"},
                         {"type": "Dense", "units": 10}]})  # once overflowed torch's int32 inside avg_pool2d
def test_plausible_layers_with_wild_values_build_or_are_refused(obj):
    check_spec_or_refusal(lambda: parse_spec(obj, "fuzz.toml"))


SUFFIXES = [".toml", ".json", ".yaml", ".yml"]


def spec_text(obj: dict, suffix: str) -> str:
    if suffix == ".json":
        return json.dumps(obj)
    if suffix == ".toml":  # only what TOML can say (no null); enough to reach the parser's checks
        lines = []
        for k, v in obj.items():
            if k != "layers":
                lines.append(f"{k} = {json.dumps(v)}")
        for layer in obj.get("layers", []):
            lines.append("[[layers]]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in layer.items()]
        return "\n".join(lines) + "\n"
    import yaml
    return yaml.safe_dump(obj)


@FUZZ
@given(suffix=st.sampled_from(SUFFIXES), content=st.one_of(
    st.binary(max_size=300),
    st.tuples(plausible_spec(), st.integers(0, 200), st.binary(max_size=4))))
def test_arbitrary_bytes_in_a_spec_file_load_or_raise_mnist_cnn_error(tmp_path_factory, suffix, content):
    path = tmp_path_factory.getbasetemp() / f"fuzz-spec{suffix}"
    if isinstance(content, tuple):  # a well-formed file for a plausible spec, with a few bytes overwritten
        obj, at, junk = content
        try:
            text = spec_text(obj, suffix).encode("utf-8", "surrogatepass")
        except (ValueError, TypeError, UnicodeError):  # NaN in TOML and the like: write what json says
            text = json.dumps(obj).encode("utf-8", "surrogatepass")
        at = min(at, len(text))
        content = text[:at] + junk + text[at + len(junk):] if junk and at % 3 else text
    path.write_bytes(content)
    check_spec_or_refusal(lambda: load_spec(path))


@pytest.mark.parametrize("layers, message", [
    ([{"type": "Flatten"}, {"type": "Dense", "units": 10**9}, {"type": "Dense", "units": 10}],
     r"layer 1 \(Dense\): the model would have 785,000,000,000 parameters"),
    ([{"type": "Conv2D", "filters": 2**40, "kernel_size": 3}, {"type": "GlobalAveragePooling2D"}],
     r"layer 0 \(Conv2D\): the model would have"),
    ([{"type": "Conv2D", "filters": 100_000, "kernel_size": 1}, {"type": "GlobalAveragePooling2D"}],
     r"layer 0 \(Conv2D\): output shape \(28, 28, 100000\) holds 78,400,000 values per image"),
])
def test_huge_specs_are_refused_from_their_shapes_before_allocating(layers, message):
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(MnistCnnError, match=message):
            parse_spec({"layers": layers}, "huge.json")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    """Nine aliases of nine aliases...: 9^9 strings in a few hundred bytes; the message must not spell them out."""
    lines = ["layers:", "  - {type: Flatten}", "  - {type: Dense, units: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]}"]
    previous = "a"
    for name in "bcdefgh":
        lines.append(f"  - {{type: Dropout, rate: &{name} [{', '.join(['*' + previous] * 9)}]}}")
        previous = name
    for where in ("name: *h", "input_shape: *h"):
        path = tmp_path / "bomb.yaml"
        path.write_text("\n".join([*lines, where, ""]))
        tracemalloc.start()
        try:
            with pytest.raises(MnistCnnError) as info:
                load_spec(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        # the 9^9 strings (billions of bytes) were never built; the peak also counts modules imported on first use
        assert peak < 64 * 2**20 and len(str(info.value)) < 1000
