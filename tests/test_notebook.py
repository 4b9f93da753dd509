"""The notebook front end: the Keras-shaped Model, objects that display themselves, one-line errors in IPython."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mnist_cnn
from mnist_cnn import History, MnistCnnError, Model, load, summary
from mnist_cnn.evaluation import Metrics, format_metrics

FAST = {"limit_test": 300, "threads": 2, "verbose": 0}


@pytest.fixture(scope="module")
def keras_arrays(mnist):
    """What a Keras tutorial leaves in x_train / y_train: NHWC uint8 images and one-hot labels."""
    x = mnist.x_train[:600].numpy()[..., None]
    y = np.eye(10, dtype=np.float32)[mnist.y_train[:600].numpy()]
    return x, y


@pytest.fixture(scope="module")
def fitted(keras_arrays, tmp_path_factory):
    """keras-basic fitted for 1 epoch on 600 NHWC uint8 images with one-hot labels, 100 of them for validation."""
    x, y = keras_arrays
    model = Model("keras-basic")
    model.fit(x[:500], y[:500], epochs=1, validation_data=(x[500:], y[500:]),
              out=tmp_path_factory.mktemp("nb") / "run", **FAST)
    return model


def test_fit_returns_a_keras_history(fitted):
    h = fitted.history
    assert isinstance(h, History) and h.epoch == [0]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= h.history.keys()
    assert all(len(values) == 1 for values in h.history.values())
    assert fitted.run.config["val_size"] == 100 and fitted.run.config["epochs"] == 1
    assert h.to_pandas().loc[1, "val_accuracy"] == h.history["val_accuracy"][0]


def test_every_method_takes_nhwc_uint8_and_one_hot(fitted, keras_arrays, mnist):
    x, y = keras_arrays
    nchw_float = torch.from_numpy(x[:50]).permute(0, 3, 1, 2).float() / 255
    probabilities = fitted.predict(x[:50])
    assert probabilities.shape == (50, 10) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(1), 1, rtol=1e-5)
    np.testing.assert_allclose(fitted.predict(nchw_float), probabilities, atol=1e-6)
    assert fitted.predict(x[0, :, :, 0]).shape == (1, 10)  # one digit
    one_hot = fitted.evaluate(x[:50], y[:50])
    assert one_hot == fitted.evaluate(nchw_float, mnist.y_train[:50].numpy())
    assert one_hot["count"] == 50 and one_hot["accuracy"] == np.mean(probabilities.argmax(1) == y[:50].argmax(1))


def test_evaluate_defaults_to_the_test_set_and_returns_metrics_that_show_themselves(fitted):
    metrics = fitted.evaluate()
    assert isinstance(metrics, Metrics) and metrics["count"] == 10_000
    assert json.loads(json.dumps(metrics)) == dict(metrics)  # still JSON, still == a dict
    assert repr(metrics) == format_metrics(metrics)
    assert "<table>" in metrics._repr_html_() and f"{metrics['accuracy']:.2%}" in metrics._repr_html_()


def test_save_and_load_predict_identically(fitted, mnist, tmp_path):
    expected = fitted.predict(mnist.x_test[:200])
    for path in (tmp_path / "saved", tmp_path / "weights.safetensors", fitted.run.path):
        assert (load(fitted.save(path) if path != fitted.run.path else path).predict(mnist.x_test[:200])
                == expected).all(), path
    reopened = load(tmp_path / "saved")
    assert reopened.history.history == fitted.history.history and reopened.run.metrics == fitted.run.metrics
    with pytest.raises(MnistCnnError, match=r"model\.h5: save writes a \.safetensors file, a Keras 3 \.keras file"):
        fitted.save(tmp_path / "model.h5")


def test_a_rerun_cell_reuses_its_run_and_another_config_names_the_python_options(keras_arrays, tmp_path, capsys):
    x, y = keras_arrays
    out = tmp_path / "cell"
    first = Model("keras-basic").fit(x[:300], y[:300], epochs=1, out=out, **FAST)
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    again = Model("keras-basic").fit(x[:300], y[:300], epochs=1, out=out, **{**FAST, "verbose": 1})
    assert again.history == first.history and (out / "model.safetensors").stat().st_mtime_ns == stamp
    assert capsys.readouterr().out == f"reusing finished run {out}\n"
    with pytest.raises(MnistCnnError, match=r"holds a run trained with other settings \(epochs\): give "
                                            r"overwrite=True to replace it, resume=True to continue it"):
        Model("keras-basic").fit(x[:300], y[:300], epochs=2, out=out, **FAST)
    with pytest.raises(MnistCnnError, match=r"other settings \(data\)"):  # other arrays are another config
        Model("keras-basic").fit(x[:300], np.roll(y[:300], 1, axis=0), epochs=1, out=out, **FAST)
    assert Model("keras-basic").fit(x[:300], y[:300], epochs=2, out=out, resume=True, **FAST).epoch == [0, 1]


def test_models_from_python_layers_and_their_compile(tmp_path, mnist):
    layers = [{"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "relu"},
              {"type": "MaxPooling2D", "pool_size": 2}, {"type": "Flatten"},
              {"type": "Dense", "units": 10, "activation": "softmax"}]
    model = Model(layers, name="tiny")
    assert str(model.summary()) == summary(model.spec) and 'Model: "tiny"' in model.summary()
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"], learning_rate=3e-3)
    model.fit(mnist.x_train[:300], mnist.y_train[:300], epochs=1, out=tmp_path / "tiny", **FAST)
    assert model.run.config["optimizer"] == "adam" and model.run.config["lr"] == 3e-3
    assert (tmp_path / "tiny" / "spec.json").exists() and load(tmp_path / "tiny").spec == model.spec
    with pytest.raises(MnistCnnError, match=r"^compile: loss must be 'sparse_categorical_crossentropy' or "
                                            r"'categorical_crossentropy' .*got 'mse'$"):
        model.compile(loss="mse")
    with pytest.raises(MnistCnnError, match="optimizer must be one of"):
        model.compile(optimizer="adagrad")
    with pytest.raises(MnistCnnError, match="apply to named models"):
        Model(layers, kernel_size=3)


def test_objects_show_themselves(fitted):
    text = summary("keras-basic")
    assert repr(text) == str(text) and isinstance(text, str) and "<table>" in text._repr_html_()
    assert "Conv2D" in fitted._repr_html_() and "keras-basic" in repr(fitted)
    assert "<table>" in fitted.history._repr_html_() and repr(fitted.history).startswith("History(1 epoch; last: ")
    assert "<table>" in fitted.run._repr_html_() and repr(fitted.run).startswith(f"Run({str(fitted.run.path)!r}")


def test_library_errors_render_as_one_line_in_ipython_unless_debugging():
    error = MnistCnnError("x: expected images")
    assert error._render_traceback_() == ["MnistCnnError: x: expected images"]
    mnist_cnn.debug(True)
    try:
        assert not hasattr(error, "_render_traceback_")  # IPython then shows the whole traceback
    finally:
        mnist_cnn.debug(False)
    assert hasattr(error, "_render_traceback_")


def test_bad_inputs_are_one_line_naming_the_parameter(fitted):
    with pytest.raises(MnistCnnError, match=r"^x has shape \[3, 32, 32\]: expected 28x28 images"):
        fitted.predict(np.zeros((3, 32, 32), np.uint8))
    with pytest.raises(MnistCnnError, match="give x and y together"):
        fitted.evaluate(np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(MnistCnnError, match=r"^2 labels for 3 images"):
        fitted.evaluate(np.zeros((3, 28, 28), np.uint8), [1, 2])
