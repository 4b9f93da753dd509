"""Look inside a model: training curves, confusion, mistakes, filters, feature maps, saliency, and
the tutorials' convolution pictures computed on real digits.

Every `plot_*` function returns a `matplotlib.figure.Figure` (a notebook shows it inline) and, given a path,
also writes it as a PNG, atomically; the single-axes ones draw into the caller's axes given as `ax=`.
Figures are drawn on their own Agg canvas (display.py), never through pyplot, so no global state is touched.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from .data import MnistData, class_name
from .display import axes, figure, finish
from .errors import MnistCnnError
from .inputs import as_model_input
from .models import SpecModel, device_of, evaluating, layer_table
from .runs import Run, run_data
from .sources import open_run
from .spec import ModelSpec

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

GRID_COLUMNS = 16  # channels per row of a feature-map mosaic
FILTER_COLUMNS = 8  # kernels per row: fewer, larger tiles, as tiny kernels are hard to tell apart
MAX_CHANNELS = 64  # a wider layer shows its first 64 channels: more tiles stop being readable
MISTAKE_COLUMNS = 5  # keeps each title, e.g. 'true 4 / predicted 9 (0.97)', inside its column
TILE_PIXELS = 12  # small maps are enlarged to this so the 1-pixel gaps between tiles stay thin
SPATIAL = ("Conv2D", "MaxPooling2D", "AveragePooling2D")
# The tutorials' vertical-edge filter; F.conv2d correlates, so it fires where ink lies left of background
VERTICAL_EDGE = torch.tensor([[1.0, 0.0, -1.0]] * 3)

Digit = np.ndarray | torch.Tensor  # uint8 [28, 28] as stored, or float [1, 1, 28, 28] model input


# ---------------------------------------------------------------- figure plumbing

def _as_input(image: Digit) -> torch.Tensor:
    """One digit (any form `inputs.as_model_input` accepts: [28, 28], [1, 1, 28, 28], ...) as the model's input."""
    x = as_model_input(image, name="image", size=(28, 28))
    if len(x) != 1:
        raise MnistCnnError(f"image: expected one digit, got {len(x)} images")
    return x


def _show_digit(ax: Any, image: Digit, title: str = "") -> None:
    ax.imshow(_as_input(image)[0, 0].numpy(), cmap="gray_r", vmin=0, vmax=1)  # ink dark on white, as on paper
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def _mosaic(maps: np.ndarray, columns: int, symmetric: bool = False) -> np.ndarray:
    """Tile [C, H, W] into one image, each tile scaled on its own, tiles parted by NaN (drawn as gaps)."""
    zoom = math.ceil(TILE_PIXELS / max(maps.shape[1:]))
    maps = maps.repeat(zoom, axis=1).repeat(zoom, axis=2)
    c, h, w = maps.shape
    cols = min(columns, c)
    out = np.full((math.ceil(c / cols) * (h + 1) - 1, cols * (w + 1) - 1), np.nan)
    for k, m in enumerate(maps.astype(np.float64)):
        if symmetric:  # weights: keep the sign, 0 stays in the middle of the colour map
            m = m / max(np.abs(m).max(), 1e-12)
        else:
            m = (m - m.min()) / max(m.max() - m.min(), 1e-12)
        r, q = divmod(k, cols)
        out[r * (h + 1):r * (h + 1) + h, q * (w + 1):q * (w + 1) + w] = m
    return out


def _imshow_mosaic(ax: Any, mosaic: np.ndarray, cmap: str, gap: str, **kw: Any) -> None:
    import matplotlib

    colours = matplotlib.colormaps[cmap].with_extremes(bad=gap)
    ax.imshow(mosaic, cmap=colours, interpolation="nearest", **kw)
    ax.set_xticks([])
    ax.set_yticks([])


# ---------------------------------------------------------------- run-level pictures

def _spec_model(model: Any) -> SpecModel:
    """A model built from a spec, or that of a Run or a notebook Model (their `.model`)."""
    model = model if isinstance(model, SpecModel) else getattr(model, "model", None)
    if not isinstance(model, SpecModel):
        raise MnistCnnError("expected a model built from a spec (run.model), a Run or a mnist_cnn.Model")
    return model


def history_rows(history: Any) -> list[dict[str, Any]]:
    """One dict per epoch, from a run's history, a History, or Keras's dict of lists (History.history)."""
    history = getattr(history, "history", history)
    if isinstance(history, Mapping):
        epochs = range(1, len(next(iter(history.values()), [])) + 1)
        return [{"epoch": e, **{k: v[e - 1] for k, v in history.items()}} for e in epochs]
    return list(history)


def plot_curves(history: Any, path: str | os.PathLike | None = None, *,
                ax: Sequence[Axes] | None = None) -> Figure:
    """Loss and accuracy per epoch, training vs validation (1000 x 400 px), from a run's history, a History or
    Keras's history dict; `ax`: two axes (loss, accuracy) to draw into instead."""
    history = history_rows(history)
    if not history:
        raise MnistCnnError("no training history to plot (history.json is missing or empty)")
    from matplotlib.ticker import MaxNLocator

    fig = figure(10, 4) if ax is None else ax[0].figure.figure
    epochs = [row["epoch"] for row in history]
    for panel, key in zip(fig.subplots(1, 2) if ax is None else ax, ("loss", "accuracy")):
        panel.plot(epochs, [row[key] for row in history], "o-", label=f"training {key}")
        if all(f"val_{key}" in row for row in history):
            panel.plot(epochs, [row[f"val_{key}"] for row in history], "s-", label=f"validation {key}")
        panel.set(xlabel="epoch", ylabel=key, title=key.capitalize())
        panel.set_xlim(0.5, epochs[-1] + 0.5)  # whole epochs, also when there is only one
        panel.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        panel.grid(alpha=0.3)
        panel.legend()
    return finish(fig, path)


CONFUSION_COUNTS_UP_TO = 30  # classes: beyond, the counts in the cells would be unreadable, the shading says it


def plot_confusion(confusion: Sequence[Sequence[int]] | Mapping[str, Any], path: str | os.PathLike | None = None,
                   *, classes: Sequence[str] | None = None, ax: Axes | None = None) -> Figure:
    """The [true, predicted] counts (or evaluate's metrics holding them) as a heat map, the class names (`classes`)
    as tick labels: 700 x 620 px for ten classes, growing with the class count to 1540 x 1364 px (62 classes),
    fonts shrinking to fit."""
    counts = np.asarray(confusion["confusion"] if isinstance(confusion, Mapping) else confusion)
    shade = np.log1p(counts)  # a log scale, or the diagonal would wash out every mistake
    n = len(counts)
    scale = min(max(n / 10, 1.0), 2.2)
    fig, ax = axes(ax, 7 * scale, 6.2 * scale)
    ax.imshow(shade, cmap="Blues")
    cell_font = 8 if n <= 10 else 8 * scale * 10 / n
    for t in range(n if n <= CONFUSION_COUNTS_UP_TO else 0):
        for p in range(n):
            if counts[t, p]:
                dark = shade[t, p] > 0.6 * shade.max()
                ax.text(p, t, str(counts[t, p]), ha="center", va="center", fontsize=cell_font,
                        color="white" if dark else "black")
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true",
           title="Confusion matrix (test set)")
    if classes is not None:
        tick_font = min(10.0, 400 / n)
        long = max(map(len, classes)) > 2  # folder names: written downwards under the columns
        ax.set_xticklabels(classes, fontsize=tick_font, rotation=90 if long else 0)
        ax.set_yticklabels(classes, fontsize=tick_font)
    return finish(fig, path)


def plot_per_class(per_class: Sequence[dict[str, Any]] | Mapping[str, Any], path: str | os.PathLike | None = None,
                   *, ax: Axes | None = None) -> Figure:
    """Accuracy on the test digits of each class (its recall; from evaluate's metrics or their per_class rows),
    as bars (480 x 350 px)."""
    from matplotlib.ticker import PercentFormatter

    rows: Sequence[dict[str, Any]] = per_class["per_class"] if isinstance(per_class, Mapping) else per_class
    classes = [row["class"] for row in rows]
    accuracy = np.array([row["recall"] for row in rows])
    bottom = max(0.0, math.floor((accuracy.min() - 0.02) * 20) / 20)  # zoom in, or all bars look the same
    fig, ax = axes(ax, 4.8, 3.5)
    bars = ax.bar(classes, accuracy - bottom, bottom=bottom, color="#4c72b0")
    ax.bar_label(bars, labels=[f"{a:.1%}" for a in accuracy], fontsize=7)
    ax.set(xticks=classes, ylim=(bottom, 1.0 + (1.0 - bottom) * 0.08), xlabel="class",
           ylabel=f"accuracy (axis from {bottom:.0%})", title="Per-class accuracy (test set)")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    return finish(fig, path)


def find_mistakes(probabilities: torch.Tensor, y: torch.Tensor) -> list[dict[str, Any]]:
    """The misclassified images, most confident first: index, true, predicted, confidence."""
    confidence, predicted = probabilities.max(1)
    wrong = (predicted != y).nonzero().flatten()
    order = wrong[confidence[wrong].argsort(descending=True, stable=True)]
    return [{"index": int(i), "true": int(y[i]), "predicted": int(predicted[i]),
             "confidence": float(confidence[i])} for i in order]


def plot_mistakes(images: torch.Tensor, mistakes: Sequence[dict[str, Any]], path: str | os.PathLike | None = None,
                  limit: int = 25, classes: Sequence[str] | None = None) -> Figure:
    """The first `limit` mistakes (from `find_mistakes`), 5 per row (1000 x 210 px per row)."""
    shown = list(mistakes)[:limit]
    rows = max(1, math.ceil(len(shown) / MISTAKE_COLUMNS))
    fig = figure(10, 2.1 * rows)
    axes = fig.subplots(rows, MISTAKE_COLUMNS, squeeze=False).flatten()
    for ax in axes[len(shown):]:
        ax.set_axis_off()
    if not shown:
        axes[0].text(0, 0.5, "no mistakes on the test set", fontsize=12)
    for ax, m in zip(axes, shown):
        true, predicted = class_name(classes, m["true"]), class_name(classes, m["predicted"])
        _show_digit(ax, images[m["index"]], f"true {true} / predicted {predicted} ({m['confidence']:.2f})")
        ax.set_xlabel(f"test #{m['index']}", fontsize=8)
    return finish(fig, path)


def _conv_layers(spec: ModelSpec) -> list[int]:
    return [i for i, layer in enumerate(spec.layers) if layer.type == "Conv2D"]


def _need_conv(spec: ModelSpec, what: str) -> None:
    if not _conv_layers(spec):
        raise MnistCnnError(f"model {spec.name!r} has no Conv2D layer, so it has no {what}")


def plot_filters(model: SpecModel | Any, path: str | os.PathLike | None = None, *, ax: Axes | None = None) -> Figure:
    """The first Conv2D layer's kernels as small images, 8 per row (600 px wide, 50 + 75 px per row)."""
    model = _spec_model(model)
    _need_conv(model.spec, "filters")
    conv = model.layers[_conv_layers(model.spec)[0]]
    # the Conv2d is the first module unless a Pad comes before it ('same' with uneven padding)
    weight = next(m for m in conv.modules() if isinstance(m, torch.nn.Conv2d)).weight.detach()
    kernels = weight.mean(1)[:MAX_CHANNELS].numpy()  # a kernel over C input channels shows their mean
    rows = math.ceil(len(kernels) / FILTER_COLUMNS)
    fig, ax = axes(ax, 6, 0.5 + 0.75 * rows)
    # a dark gap: grey would pass for a small weight in this colour map
    _imshow_mosaic(ax, _mosaic(kernels, FILTER_COLUMNS, symmetric=True), "RdBu_r", "#303030", vmin=-1, vmax=1)
    ax.set_title(f"{weight.shape[0]} kernels of {weight.shape[2]}x{weight.shape[3]} "
                 "(red: positive weight, blue: negative)", fontsize=10)
    return finish(fig, path)


@torch.no_grad()
def feature_maps(model: SpecModel, image: Digit) -> dict[str, np.ndarray]:
    """The output of every Conv2D layer for one digit, keyed by the summary's layer name, each in the
    summary's (H, W, C) shape (`models.layer_table`)."""
    with evaluating(model):
        outputs = model.forward_features(_as_input(image).to(device_of(model)))
    return {row["name"]: out[0].permute(1, 2, 0).cpu().numpy()
            for row, out in zip(layer_table(model.spec), outputs) if row["type"] == "Conv2D"}


def _feature_map_heights(maps: dict[str, np.ndarray]) -> list[float]:
    """Inches per row of the figure: the input digit, then a title plus 0.6 per mosaic row per layer."""
    return [2.0] + [0.4 + 0.6 * math.ceil(min(m.shape[2], MAX_CHANNELS) / GRID_COLUMNS) for m in maps.values()]


def plot_feature_maps(model: SpecModel | Any, image: Digit, path: str | os.PathLike | None = None,
                      title: str = "input") -> Figure:
    """The input digit, then the activations of every Conv2D layer, one block of tiles per layer
    (1000 px wide; 200 px for the input plus 40 + 60 per row of 16 channels for each layer)."""
    model = _spec_model(model)
    _need_conv(model.spec, "feature maps")
    maps = feature_maps(model, image)
    heights = _feature_map_heights(maps)
    fig = figure(10, sum(heights))
    axes = fig.subplots(len(heights), 1, height_ratios=heights)
    _show_digit(axes[0], image, title)
    for ax, (name, fmap) in zip(axes[1:], maps.items()):
        channels = fmap.shape[2]
        shown = f", first {MAX_CHANNELS} shown" if channels > MAX_CHANNELS else ""
        _imshow_mosaic(ax, _mosaic(fmap.transpose(2, 0, 1)[:MAX_CHANNELS], GRID_COLUMNS), "viridis", "#9a9a9a")
        ax.set_title(f"{name}: {fmap.shape[0]}x{fmap.shape[1]}, {channels} channels{shown}", fontsize=10)
    return finish(fig, path)


def saliency(model: SpecModel, image: Digit) -> tuple[np.ndarray, np.ndarray]:
    """|d predicted logit / d pixel| for one digit ([28, 28]), and the class probabilities ([10])."""
    x = _as_input(image).to(device_of(model)).requires_grad_(True)
    with evaluating(model):
        logits = model(x).float()
    predicted = int(logits.argmax(1))
    (grad,) = torch.autograd.grad(logits[0, predicted], x)  # only the input's gradient, none left on the weights
    return grad[0, 0].abs().cpu().numpy(), torch.softmax(logits.detach(), 1)[0].cpu().numpy()


def plot_saliency(model: SpecModel | Any, image: Digit, path: str | os.PathLike | None = None,
                  title: str = "input") -> Figure:
    """The digit, its saliency map, the two overlaid, and the class probabilities (1200 x 320 px)."""
    sal, probs = saliency(_spec_model(model), image)
    predicted = int(probs.argmax())
    fig = figure(12, 3.2)
    ax_digit, ax_map, ax_overlay, ax_probs = fig.subplots(1, 4, width_ratios=[1, 1, 1, 1.4])
    _show_digit(ax_digit, image, title)
    ax_map.imshow(sal, cmap="hot")
    ax_map.set_title(f"saliency of the '{predicted}' logit", fontsize=9)
    _show_digit(ax_overlay, image, "overlaid")
    ax_overlay.imshow(sal, cmap="hot", alpha=0.6)
    ax_map.set_xticks([])
    ax_map.set_yticks([])
    colours = ["#c44e52" if c == predicted else "#8c8c8c" for c in range(len(probs))]
    ax_probs.bar(range(len(probs)), probs, color=colours)
    ax_probs.set(xticks=range(len(probs)), ylim=(0, 1), xlabel="class")
    ax_probs.set_title("class probabilities", fontsize=9)
    return finish(fig, path)


# ---------------------------------------------------------------- the tutorials' pictures, on real data

def edge_filter_demo(image: Digit) -> dict[str, np.ndarray]:
    """A digit, the vertical-edge 3x3 filter, the feature map F.conv2d gives (no padding, stride 1:
    28x28 -> 26x26) and that map after 2x2 max pooling (26x26 -> 13x13)."""
    x = _as_input(image)
    fmap = F.conv2d(x, VERTICAL_EDGE[None, None])
    return {"image": x[0, 0].numpy(), "filter": VERTICAL_EDGE.numpy(), "feature_map": fmap[0, 0].numpy(),
            "pooled": F.max_pool2d(fmap, 2)[0, 0].numpy()}


def plot_edge_filter(image: Digit, path: str | os.PathLike | None = None) -> Figure:
    """The four pictures of `edge_filter_demo` side by side, sizes worked out by the formula (1200 x 360 px)."""
    demo = edge_filter_demo(image)
    n, f, m = len(demo["image"]), len(demo["filter"]), len(demo["feature_map"])
    fig = figure(12, 3.6)
    ax_digit, ax_filter, ax_map, ax_pool = fig.subplots(1, 4)
    _show_digit(ax_digit, image, f"digit {n}x{n}")
    ax_filter.imshow(demo["filter"], cmap="RdBu_r", vmin=-1.5, vmax=1.5)
    for (r, c), v in np.ndenumerate(demo["filter"]):
        ax_filter.text(c, r, f"{v:g}", ha="center", va="center", fontsize=12)
    ax_filter.set_title(f"vertical-edge filter {f}x{f}", fontsize=9)
    limit = max(np.abs(demo["feature_map"]).max(), 1e-6)
    ax_map.imshow(demo["feature_map"], cmap="RdBu_r", vmin=-limit, vmax=limit)
    ax_map.set_title(f"feature map {m}x{m} = ({n} + 2·0 − {f})/1 + 1", fontsize=9)
    ax_pool.imshow(demo["pooled"], cmap="RdBu_r", vmin=-limit, vmax=limit)
    ax_pool.set_title(f"2x2 max pool {m // 2}x{m // 2} = ({m} − 2)/2 + 1", fontsize=9)
    for ax in (ax_map, ax_pool):
        ax.set_xlabel("red: ink left of background, blue: right", fontsize=8)
    for ax in (ax_filter, ax_map, ax_pool):
        ax.set_xticks([])
        ax.set_yticks([])
    return finish(fig, path)


def _same_total_padding(n: int, f: int, s: int) -> int:
    # Keras 'same': the output keeps ceil(n / s) and the padding makes up the difference
    return max((math.ceil(n / s) - 1) * s + f - n, 0)


@torch.no_grad()
def output_size_check(spec: ModelSpec) -> list[dict[str, Any]]:
    """For every Conv2D / pooling layer: the rule floor((n + 2p - f) / s) + 1 worked out on its input,
    next to the summary's output size and the size the PyTorch model really produces."""
    rows = layer_table(spec)
    inputs = [tuple(spec.input_shape)] + [tuple(r["shape"]) for r in rows]
    h, w, c = spec.input_shape if len(spec.input_shape) == 3 else (28, 28, 1)  # a flat input is a 28x28 digit
    real = SpecModel(spec).eval().forward_features(torch.zeros(1, c, h, w))
    checks = []
    for i, (layer, row) in enumerate(zip(spec.layers, rows)):
        if layer.type not in SPATIAL:
            continue
        a = layer.args
        f = a["kernel_size"] if layer.type == "Conv2D" else a["pool_size"]
        s = a["strides"] or f  # pooling strides default to the pool size
        n = inputs[i][:2]
        pad = [_same_total_padding(n[d], f[d], s[d]) if a["padding"] == "same" else 0 for d in (0, 1)]
        computed = tuple((n[d] + pad[d] - f[d]) // s[d] + 1 for d in (0, 1))
        formulas = [f"⌊({n[d]} + 2·{pad[d] / 2:g} − {f[d]})/{s[d]}⌋ + 1 = {computed[d]}" for d in (0, 1)]
        checks.append({"name": row["name"], "type": layer.type, "n": n, "f": tuple(f), "p": tuple(x / 2 for x in pad),
                       "s": tuple(s), "formula": formulas[0] if formulas[0] == formulas[1] else "; ".join(formulas),
                       "computed": computed, "summary": tuple(row["shape"][:2]),
                       "pytorch": tuple(real[i].shape[2:]),
                       "ok": computed == tuple(row["shape"][:2]) == tuple(real[i].shape[2:])})
    return checks


# ---------------------------------------------------------------- one digit, end to end

def _digit(index: int | None, image: str | os.PathLike | None, data: MnistData | None,
           run: Run) -> tuple[torch.Tensor, str, str]:
    """The uint8 [28, 28] digit, a file-name stem and a caption, from a test index or an image file."""
    if (index is None) == (image is None):
        raise MnistCnnError("give a test-set index or an image file (one of them)")
    if image is not None:
        # Pillow loads only when a user's image is asked for
        from .preprocess import load_image

        return torch.from_numpy(load_image(image)), f"image-{Path(image).stem}", Path(image).name
    data = data if data is not None else run_data(run)
    assert index is not None  # one of the two was given, and it was not the image
    if not 0 <= index < len(data.x_test):
        raise MnistCnnError(f"test index {index} is out of range: the test set has {len(data.x_test)} images "
                            f"(0..{len(data.x_test) - 1})")
    label = class_name(run.classes, int(data.y_test[index]))
    return data.x_test[index], f"test-{index}", f"test #{index}, label {label}"


def explain(run_dir: str | os.PathLike, index: int | None = None, image: str | os.PathLike | None = None,
            out_dir: str | os.PathLike | None = None, *, data: MnistData | None = None) -> list[Path]:
    """Pictures of one digit (test `index` or an `image` file) going through a run's model: saliency,
    the edge-filter demo and, for a convnet, feature maps. Written to out_dir (default RUN_DIR/explain)."""
    run = open_run(run_dir)
    digit, stem, caption = _digit(index, image, data, run)
    out = Path(out_dir) if out_dir is not None else run.path / "explain"
    probs = run.predict_proba(digit)[0]
    title = f"{caption}: predicted {class_name(run.classes, int(probs.argmax()))} ({float(probs.max()):.2f})"
    paths = [out / f"{stem}-saliency.png", out / f"{stem}-edge-filter.png"]
    plot_saliency(run.model, digit, paths[0], title)
    plot_edge_filter(digit, paths[1])
    if _conv_layers(run.spec):
        paths.append(out / f"{stem}-feature-maps.png")
        plot_feature_maps(run.model, digit, paths[2], title)
    return paths
