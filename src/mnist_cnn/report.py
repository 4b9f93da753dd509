"""One self-contained HTML page per run: summary, config, metrics and every picture of `explain`.

The page has no external reference at all (images are base64 data URIs, the CSS is inline), so it
can be mailed, archived or opened offline and always looks the same.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .atomic import atomic_write_text
from .data import MnistData, class_name
from .display import html_table as _table
from .display import png_bytes
from .errors import MnistCnnError
from .evaluation import metrics_from_logits, predict_logits
from .explain import (
    find_mistakes,
    output_size_check,
    plot_confusion,
    plot_curves,
    plot_edge_filter,
    plot_feature_maps,
    plot_filters,
    plot_mistakes,
    plot_per_class,
    plot_saliency,
)
from .models import count_params, layer_table
from .runs import Run, is_run_file, run_data
from .sources import open_run

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# (id, heading): the page's sections, in order; tests check that each one is there
SECTIONS = (
    ("summary", "Model summary"), ("config", "Training configuration"), ("metrics", "Test metrics"),
    ("curves", "Training curves"), ("confusion", "Confusion matrix"), ("per-class", "Per-class metrics"),
    ("mistakes", "Misclassified test digits"), ("filters", "First-layer filters"), ("feature-maps", "Feature maps"),
    ("saliency", "Saliency"), ("edge-filter", "A vertical-edge filter and max pooling"),
    ("output-size", "The output-size formula"),
)

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222; margin: 0;
       background: #f6f7f9; }
header, main { max-width: 1060px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 24px; }
h1 { margin: 0 0 4px; font-size: 26px; }
h2 { margin: 0 0 8px; font-size: 20px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.headline { font-size: 17px; margin: 4px 0 12px; }
nav a { display: inline-block; margin: 0 12px 6px 0; color: #2a5db0; text-decoration: none; font-size: 14px; }
section { background: #fff; border: 1px solid #e2e4e8; border-radius: 6px; padding: 16px 20px; margin: 18px 0; }
p.note { color: #555; margin: 0 0 10px; }
img { max-width: 100%; height: auto; display: block; margin: 6px 0; }
table { border-collapse: collapse; font-size: 14px; margin: 6px 0 10px; }
th, td { padding: 3px 12px; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
th { background: #f0f2f5; }
td, th { font-variant-numeric: tabular-nums; }
#output-size td { white-space: nowrap; }
pre, code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13px; }
.ok { color: #1a7f37; font-weight: 600; } .bad { color: #c62828; font-weight: 600; }
.columns { display: flex; gap: 24px; flex-wrap: wrap; align-items: flex-start; }
"""


def _img(fig: Figure, alt: str) -> str:
    """The figure as an embedded PNG: the page needs no file beside it."""
    png = base64.b64encode(png_bytes(fig)).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{png}">'


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def _size(pair: Sequence[Any]) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"


def _summary(run: Run) -> str:
    total, trainable, fixed = count_params(run.spec)
    rows = [(f"{r['name']} ({r['type']})", r["output_shape"], f"{r['params']:,}") for r in layer_table(run.spec)]
    return (_table(("Layer (type)", "Output shape", "Param #"), rows, numeric=(2,))
            + _note(f"Total params: {total:,} (trainable {trainable:,}, non-trainable {fixed:,})"))


def _config(run: Run) -> str:
    if not run.config:
        return _note("No config.json in this run directory.")
    rows = [(k, "default" if v is None else json.dumps(v) if isinstance(v, (dict, list)) else v)
            for k, v in run.config.items()]
    per_column = -(-len(rows) // 3)  # three side-by-side tables: a long list would fill the screen
    tables = (_table(("option", "value"), rows[i:i + per_column]) for i in range(0, len(rows), per_column))
    return '<div class="columns">' + "".join(f"<div>{t}</div>" for t in tables) + "</div>"


def _metrics(run: Run, metrics: dict[str, Any], source: str) -> str:
    rows = [("test accuracy", f"{metrics['accuracy']:.2%}"), ("test loss", f"{metrics['loss']:.4f}"),
            ("correct", f"{metrics['count'] - metrics['errors']:,} of {metrics['count']:,}"),
            ("test images from", source), ("parameters", f"{run.num_params:,}")]
    if run.history:
        rows += [("epochs trained", str(len(run.history))),
                 ("training time", f"{sum(r.get('seconds', 0) for r in run.history):.1f} s")]
    return _table(("metric", "value"), rows)


def _per_class(metrics: dict[str, Any]) -> str:
    rows = [(r.get("name", r["class"]), f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}", r["support"])
            for r in metrics["per_class"]]
    table = _table(("class", "precision", "recall", "F1", "support"), rows, numeric=(1, 2, 3, 4))
    bars = _img(plot_per_class(metrics["per_class"]), "per-class accuracy")
    return f'<div class="columns"><div>{table}</div><div>{bars}</div></div>'


def _output_size(run: Run) -> str:
    checks = output_size_check(run.spec)
    if not checks:
        return _note("This model has no convolution or pooling layer.")
    rows = [(c["name"], _size(c["n"]), _size(c["f"]), _size([f"{p:g}" for p in c["p"]]), _size(c["s"]),
             c["formula"], _size(c["summary"]), _size(c["pytorch"]), "✓" if c["ok"] else "✗") for c in checks]
    table = _table(("layer", "n (input)", "f (kernel)", "p (padding)", "s (stride)", "⌊(n + 2p − f)/s⌋ + 1",
                    "summary", "PyTorch", "agree"), rows, numeric=(1, 2, 3, 4, 6, 7))
    verdict = ("The formula gives every layer's size." if all(c["ok"] for c in checks)
               else "The formula and the model disagree on a layer marked ✗.")
    return (_note("Each convolution or pooling layer turns an n x n input into (n + 2p − f)/s + 1 per side, rounded "
                  "down; 'same' padding picks p to keep n/s. Worked out on this model:") + table + _note(verdict))


def report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *, index: int = 0,
           data: MnistData | None = None) -> Path:
    """Write one self-contained HTML page about a run (default RUN_DIR/report.html) and return its path.
    The test set is the run's own (its `data` and `limit_test`); test digit `index` is the one explained."""
    run = open_run(run_dir)
    if out is not None and is_run_file(run.path, Path(out)):
        raise MnistCnnError(f"{out} is one of the run's own files; write the report to another path")
    data = data if data is not None else run_data(run)
    if not 0 <= index < len(data.x_test):
        raise MnistCnnError(f"test index {index} is out of range: the test set has {len(data.x_test)} images")
    limit = run.config.get("limit_test")
    x, y = data.x_test[:limit], data.y_test[:limit]
    logits = predict_logits(run.model, x)
    metrics = metrics_from_logits(logits, y, run.classes)
    mistakes = find_mistakes(torch.softmax(logits, 1), y)
    digit = data.x_test[index]
    probs = run.predict_proba(digit)[0]
    caption = (f"test #{index}, label {class_name(run.classes, int(data.y_test[index]))}: predicted "
               f"{class_name(run.classes, int(probs.argmax()))} "
               f"({float(probs.max()):.2f})")
    has_conv = any(layer.type == "Conv2D" for layer in run.spec.layers)
    no_conv = _note("This model has no Conv2D layer.")

    body = {
        "summary": _summary(run),
        "config": _config(run),
        "metrics": _metrics(run, metrics, data.source),
        "curves": (_note("Training numbers are averaged over each epoch while the weights change; validation "
                         "numbers are measured at its end.") + _img(plot_curves(run.history), "training curves"))
        if run.history else _note("No training history in this run directory."),
        "confusion": _note("Rows are the true digits, columns what the model said; the diagonal is correct.")
        + _img(plot_confusion(metrics["confusion"], classes=run.classes), "confusion matrix"),
        "per-class": _note("Recall is the accuracy on the test digits of that class; precision, how often the "
                           "model is right when it says that class.") + _per_class(metrics),
        "mistakes": _note(f"{len(mistakes):,} of {len(y):,} test digits are misclassified; the ones the model was "
                          "surest about come first.")
        + _img(plot_mistakes(x, mistakes, classes=run.classes), "misclassified digits"),
        "filters": (_note("The 3x3 (or larger) kernels the first layer learned: each slides over the digit.")
                    + _img(plot_filters(run.model), "first-layer filters")) if has_conv else no_conv,
        "feature-maps": (_note("What each convolution layer outputs for one digit: every tile is one channel, "
                               "bright where its filter found its pattern.")
                         + _img(plot_feature_maps(run.model, digit, title=caption), "feature maps"))
        if has_conv else no_conv,
        "saliency": _note("The gradient of the predicted class's score with respect to each pixel: bright pixels "
                          "would change the decision most.") + _img(plot_saliency(run.model, digit, title=caption),
                                                                    "saliency map"),
        "edge-filter": _note("The tutorials' pictures computed on the same digit: a vertical-edge filter slides "
                             "over it (F.conv2d), and 2x2 max pooling halves the feature map it gives.")
        + _img(plot_edge_filter(digit), "vertical-edge filter demo"),
        "output-size": _output_size(run),
    }
    nav = "".join(f'<a href="#{sid}">{escape(title)}</a>' for sid, title in SECTIONS)
    sections = "".join(f'<section id="{sid}"><h2>{escape(title)}</h2>{body[sid]}</section>' for sid, title in SECTIONS)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(run.name)}: mnist-cnn report</title><style>{CSS}</style></head><body>"
            f"<header><h1>{escape(run.name)}</h1>"
            f'<p class="headline">Test accuracy <b>{metrics["accuracy"]:.2%}</b> on {len(y):,} images · '
            f"{run.num_params:,} parameters · run <code>{escape(str(run.path))}</code></p>"
            f"<nav>{nav}</nav></header><main>{sections}</main></body></html>\n")
    return atomic_write_text(Path(out) if out is not None else run.path / "report.html", page)
