"""Keras files in and out: parity with Keras's own predictions, round trips, and refusals of bad files.

The files written by real Keras live in ../shared/fixtures/keras (CI clones the repository with ../shared
beside it); MNIST_CNN_SHARED names that folder elsewhere. Tests that need them skip, saying why, where they
are absent; the rest make their small files here with h5py.
"""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from mnist_cnn.cli import main
from mnist_cnn.ensemble import ensemble_of
from mnist_cnn.errors import MnistCnnError
from mnist_cnn.export import check_parity, export_model, format_for, run_exported
from mnist_cnn.keras_io import keras_run, load_keras, read_keras, write_keras
from mnist_cnn.models import build_model, count_params, summary
from mnist_cnn.predict import predict_files
from mnist_cnn.zoo import MODELS


def _fixtures() -> Path | None:
    for root in (os.environ.get("MNIST_CNN_SHARED"), Path(__file__).resolve().parents[2] / "shared", "/work/shared"):
        if root and (Path(root) / "fixtures/keras/expected.npz").exists():
            return Path(root) / "fixtures/keras"
    return None


FIXTURES = _fixtures()
needs_fixtures = pytest.mark.skipif(FIXTURES is None, reason="the Keras fixtures (../shared/fixtures/keras) are "
                                    "absent; set MNIST_CNN_SHARED to the folder holding fixtures/keras")
#: Every file real Keras wrote, with the parameter count Keras's summary gives it (BatchNorm statistics included).
KERAS_FILES = {"keras_cnn.h5": 872_714, "keras2_bn.h5": 597_738, "keras3_basic.h5": 93_322,
               "keras3_basic.keras": 93_322, "keras3_same.keras": 121_994, "keras3_bn.keras": 597_738,
               "keras3_dropout.keras": 872_714}
PARITY = 1e-5  # max absolute softmax difference from Keras's own model.predict


@pytest.fixture(scope="module")
def expected():
    if FIXTURES is None:
        pytest.skip("no Keras fixtures")
    with np.load(FIXTURES / "expected.npz") as f:
        return {k: f[k] for k in f.files}


def images(expected) -> torch.Tensor:
    return torch.from_numpy(expected["x_test_0_199"]).float().div(255).unsqueeze(1)


def keras_weight_count(path: Path) -> int:
    """Parameters as the file holds them, counted with h5py alone: every dataset under the model's weights."""
    sizes: list[int] = []

    def visit(h5: h5py.File) -> None:
        root = h5["model_weights"] if "model_weights" in h5 else h5["layers"]
        root.visititems(lambda _, node: sizes.append(node.size) if isinstance(node, h5py.Dataset) else None)

    if path.suffix == ".keras":
        with zipfile.ZipFile(path) as z, h5py.File(io.BytesIO(z.read("model.weights.h5")), "r") as h5:
            visit(h5)
    else:
        with h5py.File(path, "r") as h5:
            visit(h5)
    return sum(sizes)


# --- parity with Keras, over every file it wrote ---

@needs_fixtures
@pytest.mark.parametrize("name", KERAS_FILES)
def test_predicts_what_keras_predicts(name, expected):
    model = load_keras(FIXTURES / name)
    ours = model.predict_proba(images(expected)).numpy()
    assert np.abs(ours - expected[name.replace(".", "_")]).max() <= PARITY


@needs_fixtures
@pytest.mark.parametrize("name", KERAS_FILES)
def test_summary_shows_keras_parameter_counts(name):
    spec, state = read_keras(FIXTURES / name)
    total, _, fixed = count_params(spec)
    assert total == KERAS_FILES[name] == keras_weight_count(FIXTURES / name)
    assert sum(t.numel() for k, t in state.items() if not k.endswith("num_batches_tracked")) == total
    assert fixed == (1408 if "bn" in name else 0)  # moving mean + variance: 2 * (32 + 32 + 64 + 64 + 512)
    assert f"Total params: {KERAS_FILES[name]:,}" in summary(spec)
    assert spec.name == Path(name).stem


@needs_fixtures
def test_the_tutorial_file_predicts_a_png_and_serves(expected, tmp_path):
    run = keras_run(FIXTURES / "keras_cnn.h5")
    png = tmp_path / "seven.png"
    Image.fromarray(expected["x_test_0_199"][0]).save(png)
    [result] = predict_files(run, png, raw=True)  # the 28x28 image as Keras saw it
    assert result["digit"] == int(expected["keras_cnn_h5"][0].argmax()) == 7
    assert np.abs(np.array(result["probabilities"]) - expected["keras_cnn_h5"][0]).max() <= PARITY

    pytest.importorskip("fastapi", reason="serving needs the 'serve' extra")
    from mnist_cnn.serve import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    client = TestClient(create_app(run))
    assert client.get("/healthz").json()["model"]["params"] == 872_714
    x = expected["x_test_0_199"][:8]
    answer = client.post("/v1/predict", json={"images": x.tolist(), "value_range": "byte"}).json()["predictions"]
    probabilities = np.array([p["probabilities"] for p in answer])
    assert np.abs(probabilities - expected["keras_cnn_h5"][:8]).max() <= PARITY


@needs_fixtures
def test_an_imported_model_exports_to_onnx_and_back_to_keras(expected, tmp_path):
    pytest.importorskip("onnxruntime", reason="ONNX needs the 'export' extra")
    model = load_keras(FIXTURES / "keras2_bn.h5")  # BatchNormalization, separate Activation layers
    onnx_path = export_model(model, "onnx", tmp_path / "bn.onnx")
    logits = run_exported(onnx_path, images(expected))
    assert np.abs(torch.softmax(torch.from_numpy(logits), 1).numpy() - expected["keras2_bn_h5"]).max() <= PARITY
    again = load_keras(write_keras(model, tmp_path / "bn.keras"))
    assert torch.equal(again.predict_proba(images(expected)), model.predict_proba(images(expected)))


@needs_fixtures
def test_our_keras_file_has_the_layout_keras_writes(tmp_path):
    """Exporting what we imported from Keras's own .keras file gives the same members, classes, weight groups and
    shapes (Keras's optimizer state aside: we write no compiled model)."""
    ours = write_keras(load_keras(FIXTURES / "keras3_bn.keras"), tmp_path / "bn.keras")

    def layout(path: Path) -> tuple[list[str], list[str], dict[str, tuple]]:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
            tree: dict[str, tuple] = {}
            with h5py.File(io.BytesIO(z.read("model.weights.h5")), "r") as h5:
                h5["layers"].visititems(lambda k, v: tree.__setitem__(k, getattr(v, "shape", ())))
            return z.namelist(), [layer["class_name"] for layer in config["config"]["layers"]], tree

    assert layout(ours) == layout(FIXTURES / "keras3_bn.keras")


# --- layouts checked by hand, without Keras's files ---

def keras2_h5(path: Path, layers: list[dict], weights: dict[str, dict[str, np.ndarray]],
              input_shape: tuple[int, ...] = (784,)) -> Path:
    """A file laid out as Keras 2's model.save writes it: model_config + model_weights/<layer>/<layer>/<var>:0."""
    config = {"class_name": "Sequential", "config": {"name": "sequential", "layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, *input_shape], "name": "input_1"}},
        *layers]}}
    with h5py.File(path, "w") as h5:
        h5.attrs["model_config"] = json.dumps(config)
        root = h5.create_group("model_weights")
        root.attrs["layer_names"] = [layer["config"]["name"] for layer in layers]
        for layer in layers:
            name = layer["config"]["name"]
            group = root.create_group(name)
            group.attrs["weight_names"] = [f"{name}/{var}:0" for var in weights.get(name, {})]
            for var, value in weights.get(name, {}).items():
                group.create_dataset(f"{name}/{var}:0", data=value)
    return path


def dense(name: str = "dense", units: int = 10, **options) -> dict:
    return {"class_name": "Dense", "config": {"name": name, "units": units, "activation": "softmax", **options}}


def conv(name: str = "conv2d", **options) -> dict:
    return {"class_name": "Conv2D", "config": {"name": name, "filters": 2, "kernel_size": [3, 3], "strides": [1, 1],
                                               "padding": "valid", "activation": "relu", **options}}


def tiny(tmp_path: Path, *layers: dict, name: str = "tiny.h5") -> Path:
    rng = np.random.default_rng(0)
    weights = {"dense": {"kernel": rng.normal(size=(784, 10)).astype("float32"), "bias": np.ones(10, "float32")}}
    return keras2_h5(tmp_path / name, list(layers) or [dense()], weights)


def test_older_keras2_files_give_the_input_shape_on_their_first_layer(tmp_path):
    path = tiny(tmp_path, dense(batch_input_shape=[None, 784]))
    with h5py.File(path, "a") as h5:  # Keras before 2.4 wrote no InputLayer
        config = json.loads(h5.attrs["model_config"])
        config["config"]["layers"] = config["config"]["layers"][1:]
        h5.attrs["model_config"] = json.dumps(config)
    assert read_keras(path)[0].input_shape == (784,)


def test_conv_flatten_dense_follow_keras_layouts(tmp_path):
    """HWIO kernels, NHWC flattening and (in, out) Dense kernels, computed here in numpy the way Keras does."""
    rng = np.random.default_rng(1)
    kernel, bias = rng.normal(size=(3, 3, 1, 2)).astype("float32"), rng.normal(size=2).astype("float32")
    w, b = rng.normal(size=(26 * 26 * 2, 10)).astype("float32") / 30, rng.normal(size=10).astype("float32")
    layers = [conv(), {"class_name": "Flatten", "config": {"name": "flatten"}}, dense()]
    path = keras2_h5(tmp_path / "conv.h5", layers, {"conv2d": {"kernel": kernel, "bias": bias},
                                                    "dense": {"kernel": w, "bias": b}}, input_shape=(28, 28, 1))
    x = rng.random((3, 28, 28, 1)).astype("float32")
    windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))  # N, 26, 26, 1, 3, 3
    nhwc = np.maximum(np.einsum("nhwcij,ijcf->nhwf", windows, kernel) + bias, 0)
    logits = nhwc.reshape(3, -1) @ w + b
    keras = np.exp(logits - logits.max(1, keepdims=True))
    keras /= keras.sum(1, keepdims=True)
    ours = load_keras(path).predict_proba(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    assert np.abs(ours - keras).max() < 1e-5


@pytest.mark.parametrize("name", MODELS)
def test_every_zoo_model_round_trips_through_a_keras_file(name, tmp_path):
    torch.manual_seed(0)
    model = build_model(name).eval()
    for m in model.modules():  # statistics that differ from their initial values, so their place is checked
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 1.5)
    spec, state = read_keras(write_keras(model, tmp_path / f"{name}.keras"))
    assert spec.layers == model.spec.layers and spec.input_shape == model.spec.input_shape
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    x = torch.rand(16, 1, 28, 28)
    assert torch.equal(load_keras(tmp_path / f"{name}.keras").predict_proba(x), model.predict_proba(x))


def test_the_keras_zip_holds_what_keras_load_model_reads(tmp_path):
    path = write_keras(build_model("keras-bn"), tmp_path / "bn.keras")
    with zipfile.ZipFile(path) as z:
        assert z.namelist() == ["metadata.json", "config.json", "model.weights.h5"]
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}
        config, metadata = json.loads(z.read("config.json")), json.loads(z.read("metadata.json"))
        with h5py.File(io.BytesIO(z.read("model.weights.h5")), "r") as h5:
            assert h5["layers/conv2d/vars/0"].shape == (3, 3, 1, 32)  # HWIO
            assert h5["layers/conv2d_1/vars/0"].shape == (3, 3, 32, 32)
            assert [h5[f"layers/batch_normalization/vars/{i}"].shape for i in range(4)] == [(32,)] * 4
            assert h5["layers/dense/vars/0"].shape == (1024, 512)  # (in, out)
            assert len(h5["layers/activation/vars"]) == 0 and h5["layers/dense_1/vars"].attrs["name"] == "dense_1"
    assert metadata["keras_version"].startswith("3.")
    assert config["class_name"] == "Sequential" and config["config"]["name"] == "keras_bn"
    layers = config["config"]["layers"]
    assert layers[0]["config"]["batch_shape"] == [None, 28, 28, 1]
    assert [layer["class_name"] for layer in layers[1:4]] == ["Conv2D", "BatchNormalization", "Activation"]
    assert all(layer["module"] == "keras.layers" and layer["registered_name"] is None for layer in layers)


def test_export_command_writes_keras(trained_run, tmp_path, capsys):
    assert format_for(tmp_path / "model.keras") == "keras"
    out = tmp_path / "model.keras"
    assert main(["export", str(trained_run.path), "--format", "keras", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["max_abs_diff_1000_test_images"] == 0.0
    assert check_parity(trained_run, out, torch.rand(4, 1, 28, 28)) == 0.0


def test_an_ensemble_is_not_a_keras_model(tmp_path):
    with pytest.raises(MnistCnnError, match="cannot write EnsembleModel as a Keras model"):
        write_keras(ensemble_of([build_model("mlp"), build_model("mlp")]), tmp_path / "e.keras")


# --- untrusted files: one line each ---

def refused(path: Path, match: str, **kw) -> None:
    with pytest.raises(MnistCnnError, match=match) as e:
        read_keras(path, **kw)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_a_tiny_keras2_file_reads(tmp_path):
    model = load_keras(tiny(tmp_path))
    x = torch.rand(2, 1, 28, 28)
    with h5py.File(tmp_path / "tiny.h5", "r") as h5:
        w = torch.from_numpy(h5["model_weights/dense/dense/kernel:0"][()])
    assert torch.allclose(model.predict_proba(x), torch.softmax(x.reshape(2, -1) @ w + 1, 1), atol=1e-6)


def test_truncated_and_damaged_files(tmp_path):
    whole = tiny(tmp_path).read_bytes()
    (tmp_path / "cut.h5").write_bytes(whole[:len(whole) // 2])
    refused(tmp_path / "cut.h5", "is damaged or not a Keras model file")
    zipped = write_keras(build_model("mlp"), tmp_path / "m.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(zipped[:len(zipped) // 2])
    refused(tmp_path / "cut.keras", "is damaged or not a Keras model file|is neither")
    (tmp_path / "notes.h5").write_text("not a model")
    refused(tmp_path / "notes.h5", "is neither a Keras .keras zip nor an HDF5")


def test_wrong_structure(tmp_path):
    with h5py.File(tmp_path / "weights.h5", "w") as h5:
        h5.create_group("dense")
    refused(tmp_path / "weights.h5", "holds no model_config: a weights-only file")
    with zipfile.ZipFile(tmp_path / "empty.keras", "w") as z:
        z.writestr("metadata.json", "{}")
    refused(tmp_path / "empty.keras", "the .keras zip has no config.json")
    rng = np.random.default_rng(0)
    keras2_h5(tmp_path / "shape.h5", [dense()], {"dense": {"kernel": rng.random((10, 784)), "bias": np.ones(10)}})
    refused(tmp_path / "shape.h5", r"layer Dense: weight /model_weights/dense/dense/kernel:0 should be float "
                                   r"\(784, 10\), got float64 \(10, 784\)")
    subclassed = {"class_name": "MyModel", "config": {"name": "model", "layers": []}}
    with h5py.File(tmp_path / "subclassed.h5", "w") as h5:
        h5.attrs["model_config"] = json.dumps(subclassed)
    refused(tmp_path / "subclassed.h5", "the model is a 'MyModel'; mnist-cnn reads Sequential models")


def test_a_functional_model_is_read_when_it_is_one_chain(tmp_path):
    """tests/fixtures/keras/functional.* were written by Keras 3 (make_functional.py there) from keras.Model(...)."""
    here = Path(__file__).parent / "fixtures/keras"
    with np.load(here / "functional_expected.npz") as f:
        x, keras_probabilities = torch.from_numpy(f["x"]).float().div(255).unsqueeze(1), f["probabilities"]
    for name in ("functional.keras", "functional.h5"):
        assert np.abs(load_keras(here / name).predict_proba(x).numpy() - keras_probabilities).max() <= PARITY
    branching = [{"class_name": "InputLayer", "config": {"batch_input_shape": [None, 784], "name": "input_1"}},
                 {**dense("dense_a", 784), "inbound_nodes": [[["input_1", 0, 0, {}]]]},
                 {"class_name": "Add", "config": {"name": "add"},
                  "inbound_nodes": [[["input_1", 0, 0, {}], ["dense_a", 0, 0, {}]]]}]
    config = {"class_name": "Functional", "config": {"name": "model", "layers": branching,
                                                     "input_layers": [["input_1", 0, 0]],
                                                     "output_layers": [["add", 0, 0]]}}
    with h5py.File(tmp_path / "residual.h5", "w") as h5:
        h5.attrs["model_config"] = json.dumps(config)
    refused(tmp_path / "residual.h5", r"layer 'add' \(Add\) takes \['input_1', 'dense_a'\], not just the layer "
                                      r"before it \('dense_a'\); mnist-cnn reads a Functional model that is one chain")


def test_code_and_custom_objects_are_refused_as_safe_mode_does(tmp_path):
    lam = {"class_name": "Lambda", "config": {"name": "lambda", "function": ["4wEAAAAA", None, None],
                                              "function_type": "lambda"}}
    refused(tiny(tmp_path, lam, dense(), name="lambda.h5"),
            r"layer 'lambda' \(Lambda\) holds Python code; refused, as Keras's safe_mode refuses it")
    keras3_lambda = dense(activation={"class_name": "__lambda__", "config": {"code": "4wEAAAAA"}})
    refused(tiny(tmp_path, keras3_lambda, name="act.h5"), "holds Python code")
    custom = {"module": "my_layers", "class_name": "MyConv", "config": {"name": "my_conv"},
              "registered_name": "my_layers>MyConv"}
    refused(tiny(tmp_path, custom, dense(), name="custom.h5"),
            r"layer 'my_conv' \(MyConv\) is a custom object \(module 'my_layers'")


def test_layers_and_options_outside_our_vocabulary(tmp_path):
    rescaling = {"class_name": "Rescaling", "config": {"name": "rescaling", "scale": 1 / 255}}
    refused(tiny(tmp_path, rescaling, dense(), name="rescaling.h5"),
            r"layer 'rescaling' \(Rescaling\) is not supported; mnist-cnn reads Conv2D, MaxPooling2D")
    dilated = [{"class_name": "Reshape", "config": {"name": "reshape", "target_shape": [28, 28, 1]}},
               conv("conv2d_1", dilation_rate=[2, 2]), dense()]
    path = tiny(tmp_path, *dilated, name="keras_cnn.h5")
    with pytest.raises(MnistCnnError) as e:
        read_keras(path)
    assert str(e.value) == f"{path}: layer 'conv2d_1' (Conv2D): dilation_rate (2, 2) is not supported (only (1, 1))"
    refused(tiny(tmp_path, dense(dtype="float16"), name="half.h5"),
            r"layer 'dense' \(Dense\): dtype 'float16' is not supported")
    refused(tiny(tmp_path, dense(activation="relu6"), name="relu6.h5"), "field 'activation' must be one of")


def test_budgets_and_links_outside_the_file(tmp_path):
    path = tiny(tmp_path)
    refused(path, f"is {path.stat().st_size:,} bytes, more than the limit of 1,000 for a Keras file", max_bytes=1000)
    secret = tmp_path / "secret.h5"
    with h5py.File(secret, "w") as h5:
        h5.create_dataset("kernel", data=np.zeros((784, 10), "float32"))
    with h5py.File(path, "a") as h5:
        group = h5["model_weights/dense/dense"]
        del group["kernel:0"]
        group["kernel:0"] = h5py.ExternalLink(str(secret), "kernel")
    refused(path, "links outside the file; refused")
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.zeros((784, 10), "float32").tobytes())
    with h5py.File(path, "a") as h5:
        group = h5["model_weights/dense/dense"]
        del group["kernel:0"]
        group.create_dataset("kernel:0", shape=(784, 10), dtype="float32", external=[(str(raw), 0, 784 * 40)])
    refused(path, "keeps its data outside the file; refused")

    with zipfile.ZipFile(write_keras(build_model("mlp"), tmp_path / "mlp.keras")) as z:
        members = {name: z.read(name) for name in z.namelist()}
    weights = io.BytesIO(members["model.weights.h5"])
    with h5py.File(weights, "a") as h5:
        del h5["layers/dense/vars/0"]
        h5["layers/dense/vars/0"] = h5py.ExternalLink(str(secret), "kernel")
    with zipfile.ZipFile(tmp_path / "linked.keras", "w") as z:
        for name, data in {**members, "model.weights.h5": weights.getvalue()}.items():
            z.writestr(name, data)
    refused(tmp_path / "linked.keras", "links outside the file; refused")


# --- every command that takes a run opens a Keras file; train --init-from fine-tunes one ---

@needs_fixtures
def test_the_commands_that_take_a_run_open_a_keras_file(expected, tmp_path, capsys):
    import mnist_cnn

    path = FIXTURES / "keras3_basic.keras"
    assert main(["summary", str(path)]) == 0 and "Total params: 93,322" in capsys.readouterr().out
    assert main(["evaluate", str(path), "--limit-test", "200", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.splitlines()[-1])
    keras_answers = expected["keras3_basic_keras"].argmax(1)
    assert metrics["count"] == 200 and metrics["accuracy"] == pytest.approx(
        float((keras_answers == mnist_cnn.load_mnist(test_only=True).y_test[:200].numpy()).mean()))
    png = tmp_path / "digit.png"
    Image.fromarray(expected["x_test_0_199"][3]).save(png)
    assert main(["predict", str(path), str(png), "--raw", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])[0]["digit"] == int(keras_answers[3])
    model = mnist_cnn.load(path)  # the notebook API: a Model whose predictions are Keras's
    assert np.abs(model.predict(expected["x_test_0_199"][:20]) - expected["keras3_basic_keras"][:20]).max() <= PARITY


@needs_fixtures
def test_train_init_from_a_keras_file_fine_tunes_its_weights(mnist, tmp_path):
    from mnist_cnn.evaluation import evaluate
    from mnist_cnn.training import train

    path = FIXTURES / "keras3_basic.keras"
    start = evaluate(load_keras(path), mnist.x_test[:1000], mnist.y_test[:1000])["accuracy"]
    tuned = train(init_from=path, limit_train=1000, epochs=1, limit_test=1000, out=tmp_path / "tuned", verbose=0)
    scratch = train(model="keras-basic", limit_train=1000, epochs=1, limit_test=1000, out=tmp_path / "scratch",
                    verbose=0)
    assert tuned.spec.name == "keras3_basic" and count_params(tuned.spec)[0] == 93_322  # the file's architecture
    assert start > 0.9 and tuned.metrics["accuracy"] > 0.9 > scratch.metrics["accuracy"]  # measured 0.933, 0.94, 0.53
    assert json.loads((tuned.path / "config.json").read_text())["init_from"] == str(path)
    with pytest.raises(MnistCnnError, match="init_from trains the architecture it holds"):
        train(init_from=path, model_options={"kernel_size": 3}, limit_train=100, epochs=1, out=tmp_path / "options",
              verbose=0)


def test_a_notebook_model_saves_as_keras(tmp_path):
    from mnist_cnn.notebook import Model

    model = Model("keras-bn")
    again = load_keras(model.save(tmp_path / "bn.keras"))
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(again.predict_proba(x), model.model.predict_proba(x), atol=1e-6)
    with pytest.raises(MnistCnnError, match="no legacy .h5: use .keras"):
        model.save(tmp_path / "bn.h5")
