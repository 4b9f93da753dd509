"""Plots, feature maps, saliency, the output-size check, the HTML report and the two commands."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from mnist_cnn import (
    MnistCnnError,
    build_model,
    get_spec,
    layer_table,
    make_config,
    parse_spec,
    to_float,
    train,
)
from mnist_cnn import explain as ex
from mnist_cnn.cli import main
from mnist_cnn.display import png_bytes
from mnist_cnn.report import SECTIONS, report

CONV_MODELS = ("keras-basic", "keras-same", "keras-bn", "keras-dropout")


@pytest.fixture(scope="module")
def run(mnist, tmp_path_factory):
    """keras-basic, 2 epochs on 800 images (200 validate): a few seconds, and real curves."""
    out = tmp_path_factory.mktemp("explain") / "run"
    config = make_config(epochs=2, limit_train=1000, val_size=200, limit_test=500, out=str(out), verbose=0)
    return train(config, mnist)


@pytest.fixture(scope="module")
def mistakes(run, mnist):
    x, y = mnist.x_test[:500], mnist.y_test[:500]
    return ex.find_mistakes(run.predict_proba(to_float(x)), y)


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(data)).size


# Sizes follow the layouts in each function's docstring, at 100 dpi.
PLOTS = {
    "curves": (lambda run, mnist, m, p: ex.plot_curves(run.history, p), (1000, 400)),
    "confusion": (lambda run, mnist, m, p: ex.plot_confusion(run.metrics["confusion"], p), (700, 620)),
    "per_class": (lambda run, mnist, m, p: ex.plot_per_class(run.metrics["per_class"], p), (480, 350)),
    "mistakes": (lambda run, mnist, m, p: ex.plot_mistakes(mnist.x_test, m, p), (1000, 5 * 210)),
    "filters": (lambda run, mnist, m, p: ex.plot_filters(run.model, p), (600, 50 + 4 * 75)),
    # the input (200) + per conv layer 40 + 60 per row of 16 channels: 32, 64, 64 channels
    "feature_maps": (lambda run, mnist, m, p: ex.plot_feature_maps(run.model, mnist.x_test[0], p),
                     (1000, 200 + (40 + 120) + (40 + 240) * 2)),
    "saliency": (lambda run, mnist, m, p: ex.plot_saliency(run.model, mnist.x_test[0], p), (1200, 320)),
    "edge_filter": (lambda run, mnist, m, p: ex.plot_edge_filter(mnist.x_test[0], p), (1200, 360)),
}


@pytest.mark.parametrize("name", PLOTS)
def test_each_plot_returns_a_figure_and_writes_a_png_of_the_expected_size(name, run, mnist, mistakes, tmp_path):
    plot, size = PLOTS[name]
    assert len(mistakes) >= 25  # a 2-epoch model on 500 test digits fills the grid
    path = tmp_path / f"{name}.png"
    fig = plot(run, mnist, mistakes, path)
    assert isinstance(fig, Figure)
    assert png_size(path) == tuple(round(s) for s in size) and path.stat().st_size > 1000
    # the bytes the report embeds and what Jupyter shows inline (pyplot imported or not): the same picture
    for png in (png_bytes(fig), fig._repr_png_()):
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(io.BytesIO(png)).size == png_size(path)


@pytest.mark.parametrize("name", PLOTS)
def test_no_plot_writes_a_file_unless_given_a_path(name, run, mnist, mistakes, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plot, _ = PLOTS[name]
    assert isinstance(plot(run, mnist, mistakes, None), Figure)
    assert list(tmp_path.iterdir()) == []


def test_single_axes_plots_draw_into_the_users_axes(run):
    from matplotlib.figure import Figure as PlainFigure

    mine = PlainFigure(figsize=(12, 4))
    left, middle, right = mine.subplots(1, 3)
    assert ex.plot_confusion(run.metrics, ax=left) is mine
    assert ex.plot_per_class(run.metrics, ax=middle) is mine
    assert ex.plot_filters(run, ax=right) is mine
    assert left.get_title() == "Confusion matrix (test set)" and middle.get_title().startswith("Per-class")
    assert right.get_title().startswith("32 kernels of 3x3")
    loss, accuracy = PlainFigure().subplots(1, 2)
    assert ex.plot_curves(run.history, ax=(loss, accuracy)) is loss.figure
    assert [loss.get_title(), accuracy.get_title()] == ["Loss", "Accuracy"]


def test_plot_curves_takes_keras_style_history_dicts(run):
    as_keras = {k: [row[k] for row in run.history] for k in ("loss", "accuracy", "val_loss", "val_accuracy")}
    keras_fig, ours = ex.plot_curves(as_keras), ex.plot_curves(run.history)
    assert [len(ax.lines) for ax in keras_fig.axes] == [len(ax.lines) for ax in ours.axes] == [2, 2]
    assert list(keras_fig.axes[0].lines[1].get_ydata()) == as_keras["val_loss"]


def test_mistakes_are_wrong_and_most_confident_first(run, mnist, mistakes):
    assert all(m["true"] != m["predicted"] for m in mistakes)
    assert all(m["true"] == int(mnist.y_test[m["index"]]) for m in mistakes)
    confidences = [m["confidence"] for m in mistakes]
    assert confidences == sorted(confidences, reverse=True)
    assert len(mistakes) == run.metrics["errors"]


@pytest.mark.parametrize("model", CONV_MODELS)
def test_feature_map_shapes_equal_the_summary(model, mnist):
    spec = get_spec(model)
    maps = ex.feature_maps(build_model(spec), mnist.x_test[1])
    convs = {r["name"]: tuple(r["shape"]) for r in layer_table(spec) if r["type"] == "Conv2D"}
    assert {name: m.shape for name, m in maps.items()} == convs


def test_saliency_is_the_input_gradient_and_leaves_the_weights_alone(run, mnist):
    before = [None if p.grad is None else p.grad.clone() for p in run.model.parameters()]
    sal, probs = ex.saliency(run.model, mnist.x_test[0])
    assert sal.shape == (28, 28) and sal.min() >= 0 and sal.max() > 0
    assert probs.shape == (10,) and abs(probs.sum() - 1) < 1e-5
    after = [p.grad for p in run.model.parameters()]
    assert all(a is b is None or torch.equal(a, b) for a, b in zip(after, before))


def test_edge_filter_demo_sizes_follow_the_formula(mnist):
    demo = ex.edge_filter_demo(mnist.x_test[0])
    assert demo["feature_map"].shape == ((28 + 2 * 0 - 3) // 1 + 1,) * 2 == (26, 26)
    assert demo["pooled"].shape == ((26 - 2) // 2 + 1,) * 2 == (13, 13)
    # a hand-computed cross-correlation at one spot: left column minus right column
    x = demo["image"]
    assert demo["feature_map"][10, 12] == pytest.approx(x[10:13, 12].sum() - x[10:13, 14].sum(), abs=1e-5)


@pytest.mark.parametrize("model", CONV_MODELS)
def test_output_size_formula_matches_every_conv_and_pool_layer(model):
    checks = ex.output_size_check(get_spec(model))
    assert checks and all(c["ok"] for c in checks), checks


def test_output_size_formula_with_same_padding_strides_and_odd_kernels():
    spec = parse_spec({"name": "odd", "layers": [
        {"type": "Conv2D", "filters": 4, "kernel_size": [5, 3], "strides": 2, "padding": "same"},
        {"type": "MaxPooling2D", "pool_size": 3, "strides": 2, "padding": "same"},
        {"type": "Conv2D", "filters": 4, "kernel_size": 2, "strides": 3},
        {"type": "Flatten"}, {"type": "Dense", "units": 10}]})
    checks = ex.output_size_check(spec)
    assert [c["computed"] for c in checks] == [(14, 14), (7, 7), (2, 2)]
    assert all(c["ok"] for c in checks)


def test_models_without_convolutions_say_so():
    with pytest.raises(MnistCnnError, match="no Conv2D layer"):
        ex.plot_filters(build_model(get_spec("mlp")))


class StrictHTML(HTMLParser):
    """Fails on a tag closed out of order; collects ids, h2 texts and img sources."""

    VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
                      "wbr"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.ids: list[str] = []
        self.headings: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.ids += [attrs["id"]] if "id" in attrs else []
        self.images += [attrs["src"]] if tag == "img" else []
        if tag == "h2":
            self.headings.append("")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1:]}>"
        self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1] == "h2":
            self.headings[-1] += data


def test_report_is_valid_self_contained_and_complete(run, mnist, tmp_path):
    path = report(run.path, tmp_path / "r.html", data=mnist)
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    parser = StrictHTML()
    parser.feed(page)
    parser.close()
    assert parser.stack == []
    for marker in ("http://", "https://", 'src="//', "<link", "<script", "url("):
        assert marker not in page
    assert len(parser.ids) == len(set(parser.ids))
    assert [sid for sid, _ in SECTIONS if sid not in parser.ids] == []
    assert parser.headings == [title for _, title in SECTIONS]
    assert len(parser.images) == 8  # curves, confusion, per-class, mistakes, filters, maps, saliency, edges
    for src in parser.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix) and base64.b64decode(src[len(prefix):])[:4] == b"\x89PNG"
    assert f"{run.metrics['accuracy']:.2%}" in page


def test_explain_writes_pictures_for_a_test_index_and_an_image_file(run, mnist, tmp_path):
    paths = ex.explain(run.path, index=7, out_dir=tmp_path, data=mnist)
    assert [p.name for p in paths] == ["test-7-saliency.png", "test-7-edge-filter.png", "test-7-feature-maps.png"]
    digit = tmp_path / "my digit.png"
    Image.fromarray(mnist.x_test[3].numpy()).resize((112, 112)).save(digit)
    paths = ex.explain(run.path, image=digit, out_dir=tmp_path / "mine")
    assert [p.name for p in paths] == ["image-my digit-saliency.png", "image-my digit-edge-filter.png",
                                       "image-my digit-feature-maps.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_explain_errors_are_one_line(run, mnist, tmp_path):
    with pytest.raises(MnistCnnError, match="out of range"):
        ex.explain(run.path, index=10_000, data=mnist)
    with pytest.raises(MnistCnnError, match="one of them"):
        ex.explain(run.path, data=mnist)
    with pytest.raises(MnistCnnError, match="nope.png"):
        ex.explain(run.path, image=tmp_path / "nope.png")


def test_cli_explain_and_report(run, tmp_path, capsys):
    assert main(["explain", str(run.path), "--index", "2", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / f"test-2-{kind}.png") for kind in ("saliency", "edge-filter", "feature-maps")]
    assert main(["explain", str(run.path), "--index", "-1"]) == 2
    assert main(["report", str(tmp_path / "no-run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "out of range" in err and "no-run does not exist: expected a run directory" in err


def test_commands_that_do_not_plot_never_import_matplotlib():
    code = ("import sys, mnist_cnn.cli, mnist_cnn.explain, mnist_cnn.report; mnist_cnn.cli.main(['models']); "
            "assert 'matplotlib' not in sys.modules, 'matplotlib was imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_one_digit_pictures_refuse_what_is_not_one_digit(trained_run, mnist):
    from mnist_cnn import MnistCnnError
    from mnist_cnn.explain import feature_maps, saliency

    digit = mnist.x_test[0]
    maps = feature_maps(trained_run.model, digit)
    same = feature_maps(trained_run.model, digit.numpy()[None, None] / 255.0)  # the model's input form, as numpy
    assert all(np.allclose(maps[k], same[k], atol=1e-5) for k in maps)
    for bad, message in [(mnist.x_test[:2], r"image: expected one digit, got 2 images"),
                         (np.zeros((32, 32), np.uint8), r"image has shape \[32, 32\]: expected 28x28 images"),
                         (digit.float(), r"image: float images must be in \[0, 1\], got values in \[0, 255\]"),
                         (torch.full((28, 28), float("nan")), r"image: float images must be in \[0, 1\], got .*nan")]:
        for picture in (feature_maps, saliency):
            with pytest.raises(MnistCnnError, match=message):
                picture(trained_run.model, bad)
