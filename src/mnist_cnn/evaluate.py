"""Metrics: loss, accuracy, per-class precision / recall / F1 and the confusion matrix; with named classes (anything
but the ten digits) also top-k accuracy and the most frequent confusions, which stay readable with 62 or 345 classes.

Pure functions of a model and tensors; training uses them for validation, the CLI for the test set.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import check_unit_range, class_name, model_input
from .errors import MnistCnnError
from .models import device_of, evaluating


def _model(model: Any) -> nn.Module:
    """A torch model, or the model of a Run (anything with a `.model` that is one)."""
    model = model if isinstance(model, nn.Module) else getattr(model, "model", None)
    if not isinstance(model, nn.Module):
        raise MnistCnnError("expected a model (a torch nn.Module, e.g. run.model) or a Run; a run directory's path "
                            "is read with load_run(path)")
    return model


def _images(x: Any) -> torch.Tensor:
    """Shape and type checks only (no pass over the values: validation runs this every epoch, on any device)."""
    x = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
    if isinstance(x, torch.Tensor) and ((x.dtype == torch.uint8 and x.ndim == 3)
                                        or (x.is_floating_point() and x.ndim == 4 and x.shape[1] == 1)):
        return x
    what = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
    raise MnistCnnError(f"images must be uint8 [N, 28, 28] (as MnistData holds them) or float [N, 1, 28, 28] in "
                        f"[0, 1] (the model's input), got {what}")


@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Logits for images x (uint8 [N,28,28] or float [N,1,28,28]), batch by batch, in eval mode."""
    model, x = _model(model), _images(x)
    device = device_of(model)
    # on CPU, batches of 128 stay in cache: keras-basic 40,000 images/s against 11,000 in batches of 1,000
    batch_size = batch_size or (128 if device.type == "cpu" else 1000)
    memory_format = getattr(model, "memory_format", torch.contiguous_format)
    chunks = []
    with evaluating(model):
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device)
            xb = model_input(xb)
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


def per_class(confusion: torch.Tensor) -> list[dict[str, float]]:
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


def metrics_from_logits(logits: torch.Tensor, y: torch.Tensor, classes: Sequence[str] | None = None) -> dict:
    """The metrics of `evaluate`; `classes` (names, None for the ten digits) adds names, top-k and confusions."""
    loss, accuracy = loss_and_accuracy(logits, y)
    confusion = confusion_matrix(logits.argmax(1), y, logits.shape[1])
    rows = per_class(confusion)
    metrics = {"loss": loss, "accuracy": accuracy, "count": len(y), "errors": int(len(y) - confusion.diag().sum()),
               "per_class": rows, **averages(rows), "confusion": confusion.tolist()}
    if classes is not None:  # the ten digits' metrics stay as they were
        if len(classes) != logits.shape[1]:
            raise MnistCnnError(f"{len(classes)} class names for a model of {logits.shape[1]} classes")
        for row in rows:
            row["name"] = classes[row["class"]]
        metrics.update(classes=list(classes), confusions=top_confusions(confusion, classes),
                       top_k={f"top{k}": top_k_accuracy(logits, y, k) for k in (3, 5) if k < len(classes)})
    return metrics


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None,
             classes: Sequence[str] | None = None) -> dict:
    """Like Keras's `evaluate`, plus per-class precision/recall/F1 and the confusion matrix.

    `model`: a torch model or a Run; `x`: uint8 images [N, 28, 28] or floats [N, 1, 28, 28] in [0, 1] (tensors or
    numpy arrays); `y`: N integer labels; `classes`: their names (a run's `classes`; None for the digits).
    Anything else is refused with one line, not scored."""
    x = _images(x)
    y = torch.from_numpy(y) if isinstance(y, np.ndarray) else y
    if not (isinstance(y, torch.Tensor) and y.ndim == 1 and not y.is_floating_point() and y.dtype != torch.bool):
        what = f"{y.dtype} of shape {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise MnistCnnError(f"labels must be one integer per image [N], got {what}")
    if len(y) != len(x) or not len(x):
        raise MnistCnnError(f"{len(y)} labels for {len(x)} images: expected as many, and at least one")
    if x.is_floating_point():
        check_unit_range(x)
    logits = predict_logits(model, x, batch_size)
    if y.min() < 0 or y.max() >= logits.shape[1]:
        raise MnistCnnError(f"labels must be 0..{logits.shape[1] - 1}, got values in [{y.min().item()}, "
                            f"{y.max().item()}]")
    return metrics_from_logits(logits, y.long(), classes)


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
