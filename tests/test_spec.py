"""Spec files: the user's own architecture in TOML/JSON/YAML, validated with errors naming layer and field."""

import json

import pytest

from mnist_cnn import MnistCnnError, count_params, get_spec, load_spec, parse_spec
from mnist_cnn.spec import infer_shapes

TOML = """
name = "tiny"
[[layers]]
type = "Conv2D"
filters = 8
kernel_size = 3
activation = "relu"
[[layers]]
type = "GlobalAveragePooling2D"
[[layers]]
type = "Dense"
units = 10
activation = "softmax"
"""


def test_toml_json_yaml_specs_agree(tmp_path):
    (tmp_path / "tiny.toml").write_text(TOML)
    spec = load_spec(tmp_path / "tiny.toml")
    (tmp_path / "tiny.json").write_text(json.dumps(spec.to_dict()))
    (tmp_path / "tiny.yaml").write_text(
        "name: tiny\nlayers:\n  - {type: Conv2D, filters: 8, kernel_size: 3, activation: relu}\n"
        "  - {type: GlobalAveragePooling2D}\n  - {type: Dense, units: 10, activation: softmax}\n")
    assert load_spec(tmp_path / "tiny.json") == spec == load_spec(tmp_path / "tiny.yaml")
    assert infer_shapes(spec) == [(26, 26, 8), (8,), (10,)]
    assert count_params(spec)[0] == 80 + 90
    assert get_spec(str(tmp_path / "tiny.toml")) == spec


@pytest.mark.parametrize("name, text", [
    ("net.json", '{"layers": [{"type": "Flatten"}, {"type": "Dense", "units": 10, "units": 20}]}'),
    ("net.yaml", "layers:\n  - type: Flatten\n  - {type: Dense, units: 10, units: 20}\n"),
])
def test_a_key_given_twice_is_refused_not_overwritten(tmp_path, name, text):
    (tmp_path / name).write_text(text)  # JSON and YAML readers would keep 20 silently
    with pytest.raises(MnistCnnError, match=rf"{name}: key 'units' is given twice in the same object; keep one"):
        load_spec(tmp_path / name)


def test_a_yaml_merge_may_override_the_keys_it_brings(tmp_path):
    (tmp_path / "merge.yaml").write_text("layers:\n  - type: Flatten\n  - &dense {type: Dense, units: 10}\n"
                                         "  - {<<: *dense, units: 20}\n")
    assert [layer.args["units"] for layer in load_spec(tmp_path / "merge.yaml").layers[1:]] == [10, 20]


def test_zoo_round_trips_through_dict():
    spec = get_spec("keras-bn")
    assert parse_spec(spec.to_dict()) == spec


def layers(*items):
    return {"layers": [*items, {"type": "Flatten"}, {"type": "Dense", "units": 10}]}


@pytest.mark.parametrize("spec, message", [
    (layers({"type": "Conv3D", "filters": 3}), r"layer 0 has unknown type 'Conv3D'"),
    (layers({"type": "Conv2D", "kernel_size": 3}), r"layer 0 \(Conv2D\): missing required field 'filters'"),
    (layers({"type": "Conv2D", "filters": -1, "kernel_size": 3}),
     r"layer 0 \(Conv2D\): field 'filters' must be a positive integer, got -1"),
    (layers({"type": "Conv2D", "filters": "8", "kernel_size": 3}),
     r"field 'filters' must be a positive integer, got '8'"),
    (layers({"type": "Conv2D", "filters": 8, "kernel_size": 29}),
     r"layer 0 \(Conv2D\): kernel 29x29 is larger than its input 28x28"),
    (layers({"type": "Dropout", "rate": float("nan")}),
     r"layer 0 \(Dropout\): field 'rate' must be a number in \[0, 1\), got nan"),
    (layers({"type": "Dropout", "rate": 1.5}), r"field 'rate' must be a number in \[0, 1\)"),
    (layers({"type": "Conv2D", "filters": 8, "kernel_size": 3, "colour": 1}),
     r"layer 0 \(Conv2D\): unknown field 'colour'"),
    (layers({"type": "Conv2D", "filters": 8, "kernel_size": 3, "activation": "magic"}),
     r"field 'activation' must be one of"),
    (layers({"type": "Conv2D", "filters": 8, "kernel_size": 3, "padding": "full"}),
     r"field 'padding' must be 'valid' or 'same'"),
    (layers({"filters": 8, "kernel_size": 3}), r"my.toml: layer 0 has no 'type' \(one of Conv2D, "),
    (layers({"type": "conv2d", "filters": 8}), r"layer 0 has unknown type 'conv2d'; did you mean Conv2D\? known:"),
    (layers({"type": "Conv2D", "filters": 8, "kernel_size": 3, "input_shape": [28, 28, 1]}),
     r"layer 0 \(Conv2D\): 'input_shape' goes at the top level of the spec, beside 'layers'"),
    ({"layers": [{"type": "Dense", "units": 10}]}, r"layer 0 \(Dense\): needs a flat input"),
    ({"layers": [{"type": "Flatten"}, {"type": "Reshape", "target_shape": [5, 5]}]}, r"cannot reshape \(784,\)"),
    ({"layers": []}, r"'layers' must be a non-empty list"),
    ({"layers": [{"type": "Conv2D", "filters": 8, "kernel_size": 3}]}, r"last layer must give a flat vector"),
    ({"input_shape": [28, -28, 1], "layers": [{"type": "Flatten"}]}, r"'input_shape' must be"),
    ([1, 2], r"a spec must be a table/object"),
    # a softmax before other layers would be applied twice: by the model and by the loss / predict_proba
    ({"layers": [{"type": "Flatten"}, {"type": "Dense", "units": 10, "activation": "softmax"},
                 {"type": "Dropout", "rate": 0.0}]},
     r"layer 1 \(Dense\): softmax may only be the last layer's activation .* but 1 layer\(s\) follow it"),
])
def test_bad_specs_name_the_layer_and_field(spec, message):
    with pytest.raises(MnistCnnError, match=message):
        parse_spec(spec, "my.toml")


def test_padding_is_taken_in_any_case_as_keras_does():
    spec = parse_spec(layers({"type": "Conv2D", "filters": 8, "kernel_size": 3, "padding": "SAME"}))
    assert spec.layers[0].args["padding"] == "same" and count_params(spec)[0] == 80 + 28 * 28 * 8 * 10 + 10


def test_bad_spec_files(tmp_path):
    (tmp_path / "bad.toml").write_text("layers = [ { type = ")
    with pytest.raises(MnistCnnError, match=r"bad.toml: not valid TOML"):
        load_spec(tmp_path / "bad.toml")
    with pytest.raises(MnistCnnError, match=r"cannot read spec file .*missing.json"):
        load_spec(tmp_path / "missing.json")
    (tmp_path / "net.txt").write_text("{}")
    with pytest.raises(MnistCnnError, match=r"unknown spec file type '.txt'"):
        load_spec(tmp_path / "net.txt")
    with pytest.raises(MnistCnnError, match=r"unknown model 'resnet'"):
        get_spec("resnet")
    with pytest.raises(MnistCnnError, match=r"model 'keras-basic' has no option 'kernel_size'"):
        get_spec("keras-basic", kernel_size=3)
