"""Metrics: loss, accuracy, per-class precision / recall / F1 and the confusion matrix; with named classes (anything
but the ten digits) also top-k accuracy and the most frequent confusions, which stay readable with 62 or 345 classes.

Pure functions of a model and tensors; training uses them for validation, the CLI for the test set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .data import class_name
from .display import html_table
from .errors import MnistCnnError
from .inputs import as_labels, as_model_input
from .models import device_of, evaluating


def _model(model: Any) -> nn.Module:
    """A torch model, or the model of an opened source (a Run, an EnsembleRun: their `.model`)."""
    model = model if isinstance(model, nn.Module) else getattr(model, "model", None)
    if not isinstance(model, nn.Module):
        raise MnistCnnError("expected a model (a torch nn.Module, e.g. run.model) or a Run; a run directory's path "
                            "is read with mnist_cnn.sources.open_model(path)")
    return model


def predict_logits(model: nn.Module, x: Any, batch_size: int | None = None) -> torch.Tensor:
    """Logits for images x (any form `inputs.as_model_input` accepts), batch by batch, in eval mode."""
    model = _model(model)
    return _logits(model, as_model_input(x, size=getattr(model, "input_size", None)), batch_size)


@torch.inference_mode()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int | None) -> torch.Tensor:
    device = device_of(model)
    # on CPU, batches of 128 stay in cache: keras-basic 40,000 images/s against 11,000 in batches of 1,000
    batch_size = batch_size or (128 if device.type == "cpu" else 1000)
    memory_format = getattr(model, "memory_format", torch.contiguous_format)
    chunks = []
    with evaluating(model):
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device)
            chunks.append(model(xb.contiguous(memory_format=memory_format)).float())
    return torch.cat(chunks) if chunks else torch.empty(0, 10)


def loss_and_accuracy(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Categorical cross-entropy (of the softmax output, as Keras reports it) and accuracy."""
    y = y.to(logits.device)
    loss = F.cross_entropy(logits, y).item()
    # a count over N, so 70/200 is 0.35 on any device (float32 gave 0.34999999, a CUDA double mean 0.35000000000000003)
    accuracy = (logits.argmax(1) == y).sum().item() / len(y)
    return loss, accuracy


def confusion_matrix(pred: torch.Tensor, y: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """[true, predicted] counts."""
    idx = y.long().cpu() * num_classes + pred.long().cpu()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class(confusion: torch.Tensor) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support per class; 0 where a ratio has nothing to count (as scikit-learn)."""
    tp = confusion.diag().double()
    support = confusion.sum(1).double()
    predicted = confusion.sum(0).double()
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                     torch.zeros_like(tp))
    return [{"class": c, "precision": precision[c].item(), "recall": recall[c].item(), "f1": f1[c].item(),
             "support": int(support[c].item())} for c in range(len(tp))]


def averages(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """scikit-learn's macro (each class alike) and weighted (by support) means of precision, recall and F1."""
    total = sum(r["support"] for r in rows) or 1
    return {"macro": {k: sum(r[k] for r in rows) / len(rows) for k in ("precision", "recall", "f1")},
            "weighted": {k: sum(r[k] * r["support"] for r in rows) / total for k in ("precision", "recall", "f1")}}


def top_k_accuracy(logits: torch.Tensor, y: torch.Tensor, k: int) -> float:
    """The share of images whose true class is among the k highest scores."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == y.to(top.device)[:, None]).any(1).sum().item() / len(y)


def top_confusions(confusion: torch.Tensor, classes: Sequence[str] | None = None,
                   most: int = 10) -> list[dict[str, Any]]:
    """The `most` most frequent mistakes, [{true, predicted, count}] (class names), most frequent first."""
    off = confusion.clone()
    off.fill_diagonal_(0)
    counts, order = off.flatten().sort(descending=True, stable=True)
    n = confusion.shape[0]
    return [{"true": class_name(classes, i // n), "predicted": class_name(classes, i % n), "count": c}
            for c, i in zip(counts[:most].tolist(), order[:most].tolist()) if c > 0]


class Metrics(dict):
    """What `evaluate` returns: a plain dict (JSON-serialisable, equal to the dict it holds) that prints as
    `format_metrics`' report and that a notebook shows as tables."""

    def __repr__(self) -> str:
        return format_metrics(self)

    def _repr_html_(self) -> str:
        headline = (f"<p>test loss <b>{self['loss']:.4f}</b>, test accuracy <b>{self['accuracy']:.2%}</b> "
                    f"({self['count'] - self['errors']:,} of {self['count']:,})</p>")
        rows = [(r["class"], f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}", r["support"])
                for r in self["per_class"]]
        confusion = [(t, *row) for t, row in enumerate(self["confusion"])]
        return (headline + html_table(("class", "precision", "recall", "F1", "support"), rows, numeric=(1, 2, 3, 4))
                + "<p>confusion matrix (rows: true, columns: predicted)</p>"
                + html_table(("", *range(len(confusion))), confusion, numeric=range(1, len(confusion) + 1)))


def metrics_from_logits(logits: torch.Tensor, y: torch.Tensor, classes: Sequence[str] | None = None) -> Metrics:
    """The metrics of `evaluate`; `classes` (names, None for the ten digits) adds names, top-k and confusions."""
    loss, accuracy = loss_and_accuracy(logits, y)
    confusion = confusion_matrix(logits.argmax(1), y, logits.shape[1])
    rows = per_class(confusion)
    metrics = Metrics(loss=loss, accuracy=accuracy, count=len(y), errors=int(len(y) - confusion.diag().sum()),
                      per_class=rows, **averages(rows), confusion=confusion.tolist())
    if classes is not None:  # the ten digits' metrics stay as they were
        if len(classes) != logits.shape[1]:
            raise MnistCnnError(f"{len(classes)} class names for a model of {logits.shape[1]} classes")
        for row in rows:
            row["name"] = classes[int(row["class"])]
        metrics.update(classes=list(classes), confusions=top_confusions(confusion, classes),
                       top_k={f"top{k}": top_k_accuracy(logits, y, k) for k in (3, 5) if k < len(classes)})
    return metrics


def evaluate(model: nn.Module, x: Any, y: Any, batch_size: int | None = None,
             classes: Sequence[str] | None = None) -> Metrics:
    """Like Keras's `evaluate`, plus per-class precision/recall/F1 and the confusion matrix.

    `model`: a torch model or a Run; `x`: images in any form `inputs.as_model_input` accepts (uint8 [N, 28, 28]
    as MnistData holds them, floats [N, 1, 28, 28] in [0, 1], NHWC, numpy, PIL, lists); `y`: N integer labels or
    one-hot rows; `classes`: their names (a run's `classes`; None for the digits). Anything else is refused with
    one line, not scored."""
    model = _model(model)
    x = as_model_input(x, size=getattr(model, "input_size", None))
    y = as_labels(y)
    if len(y) != len(x) or not len(x):
        raise MnistCnnError(f"{len(y)} labels for {len(x)} images: expected as many, and at least one")
    logits = _logits(model, x, batch_size)
    return metrics_from_logits(logits, as_labels(y, logits.shape[1]), classes)


MATRIX_CLASSES = 20  # a text confusion matrix wider than this wraps: the most frequent confusions are shown instead


def format_metrics(metrics: dict) -> str:
    """A text report: headline numbers, per-class table, confusion matrix (or, past MATRIX_CLASSES classes, the
    most frequent confusions)."""
    top_k = "".join(f"  {k} {v * 100:.2f}%" for k, v in metrics.get("top_k", {}).items())
    lines = [f"test loss {metrics['loss']:.4f}  test accuracy {metrics['accuracy'] * 100:.2f}% "
             f"({metrics['count'] - metrics['errors']}/{metrics['count']}){top_k}", "",
             "   class  precision  recall      f1  support"]
    lines += [f"{r.get('name', r['class']):>8}  {r['precision']:9.4f}  {r['recall']:6.4f}  {r['f1']:6.4f}  "
              f"{r['support']:7d}" for r in metrics["per_class"]]
    lines += [f"{name:>8}  {metrics[name]['precision']:9.4f}  {metrics[name]['recall']:6.4f}  "
              f"{metrics[name]['f1']:6.4f}  {metrics['count']:7d}" for name in ("macro", "weighted") if name in metrics]
    n = len(metrics["confusion"])
    if n > MATRIX_CLASSES and "confusions" in metrics:
        lines += ["", "most frequent confusions (true -> predicted: count)"]
        lines += [f"{c['true']:>8} -> {c['predicted']:<8} {c['count']:6d}" for c in metrics["confusions"]]
        return "\n".join(lines)
    names = metrics.get("classes") or [str(c) for c in range(n)]
    lines += ["", "confusion matrix (rows: true, columns: predicted)", "      " + "".join(f"{c:>6}" for c in names)]
    lines += [f"{t:>6}" + "".join(f"{v:>6}" for v in row) for t, row in zip(names, metrics["confusion"])]
    return "\n".join(lines)
