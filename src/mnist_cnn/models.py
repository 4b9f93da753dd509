"""Spec -> PyTorch module, with Keras's initialisers and a Keras-style summary table."""

from __future__ import annotations

import math
import os
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from html import escape
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .display import Text, html_table
from .errors import MnistCnnError
from .inputs import as_model_input
from .spec import Layer, ModelSpec, infer_shapes
from .zoo import get_spec

_ACT: dict[str, Callable[[], nn.Module]] = {
        "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "elu": nn.ELU, "selu": nn.SELU,
        "gelu": nn.GELU, "silu": nn.SiLU, "swish": nn.SiLU, "leaky_relu": lambda: nn.LeakyReLU(0.2),
        "softmax": lambda: nn.Softmax(dim=1), "linear": nn.Identity}


class KerasReshape(nn.Module):
    """Keras's Reshape: the target is (H, W, C) in NHWC order; we keep tensors NCHW."""

    def __init__(self, target: list[int]):
        super().__init__()
        self.target = tuple(target)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # back to Keras's element order before reshaping
            x = x.permute(0, 2, 3, 1)
        x = x.reshape(x.shape[0], *self.target)
        return x.permute(0, 3, 1, 2) if len(self.target) == 3 else x


def _same_padding(kernel: list[int], strides: list[int], size: tuple[int, ...]) -> tuple[int, int, int, int]:
    # Keras 'same' pads the extra pixel on the bottom/right when the total padding is odd
    pads = []
    for k, s, n in zip(kernel, strides, size):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return left, right, top, bottom


class Pad(nn.Module):
    def __init__(self, padding: tuple[int, int, int, int], value: float = 0.0):
        super().__init__()
        self.padding, self.value = padding, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.padding, value=self.value)


def _layer_module(layer: Layer, in_shape: tuple[int, ...]) -> nn.Module:
    a = layer.args
    if layer.type == "Conv2D":
        pad = _same_padding(a["kernel_size"], a["strides"], in_shape[:2]) if a["padding"] == "same" else (0, 0, 0, 0)
        symmetric = pad[0] == pad[1] and pad[2] == pad[3]
        conv = nn.Conv2d(in_shape[2], a["filters"], tuple(a["kernel_size"]), tuple(a["strides"]),
                         padding=(pad[2], pad[0]) if symmetric else 0, bias=a["use_bias"])
        parts = [conv] if symmetric else [Pad(pad), conv]
        return nn.Sequential(*parts, _ACT[a["activation"]]())
    if layer.type in ("MaxPooling2D", "AveragePooling2D"):
        strides = a["strides"] or a["pool_size"]
        pool = (nn.MaxPool2d if layer.type == "MaxPooling2D" else nn.AvgPool2d)(tuple(a["pool_size"]), tuple(strides))
        if a["padding"] == "valid":
            return pool
        padding = _same_padding(a["pool_size"], strides, in_shape[:2])
        if layer.type == "MaxPooling2D":
            return nn.Sequential(Pad(padding, float("-inf")), pool)
        return AveragePoolSame(typing.cast(nn.AvgPool2d, pool), padding, (in_shape[0], in_shape[1]))
    if layer.type == "GlobalAveragePooling2D":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    if layer.type == "Dense":
        return nn.Sequential(nn.Linear(in_shape[0], a["units"], bias=a["use_bias"]), _ACT[a["activation"]]())
    if layer.type == "Dropout":
        return Dropout(a["rate"])
    if layer.type == "Flatten":
        return KerasReshape([math.prod(in_shape)])
    if layer.type == "BatchNormalization":
        # Keras's momentum m keeps m of the old statistic; PyTorch's momentum is the new share, 1 - m
        return BatchNorm(in_shape[-1], eps=a["epsilon"], momentum=1.0 - a["momentum"])
    if layer.type == "Activation":
        return _ACT[a["activation"]]()
    if layer.type == "Reshape":
        return KerasReshape(a["target_shape"])
    raise AssertionError(f"spec validation let through layer type {layer.type}")


class AveragePoolSame(nn.Module):
    """Keras's 'same' average pooling: each window averages only its cells inside the image, not the padding."""

    def __init__(self, pool: nn.AvgPool2d, padding: tuple[int, int, int, int], size: tuple[int, int]):
        super().__init__()
        self.pool, self.padding = pool, padding
        inside = pool(F.pad(torch.ones(1, 1, *size), padding))  # the share of each window inside the image
        self.register_buffer("scale", 1.0 / inside, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.pad(x, self.padding)) * self.scale


class BatchNorm(nn.modules.batchnorm._BatchNorm):
    """Keras's BatchNormalization over the channels of [N, C] or [N, C, H, W]. Unlike nn.BatchNorm, the moving
    variance averages the batch's own (biased) variance, as Keras does, and a batch of one trains (its output is
    beta) where nn.BatchNorm refuses it: a data set one image past a multiple of the batch size ends with one."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 4):
            raise ValueError(f"BatchNorm expects [N, C] or [N, C, H, W], got {list(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        self._check_input_dim(x)
        # the batch statistics come back with the output: invstd = 1 / sqrt(biased variance + eps)
        y, mean, invstd = torch.ops.aten._native_batch_norm_legit.no_stats(x, self.weight, self.bias, True,
                                                                          self.momentum, self.eps)
        assert self.running_mean is not None and self.running_var is not None and self.momentum is not None
        assert self.num_batches_tracked is not None  # track_running_stats: training mode has them
        with torch.no_grad():
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(invstd.pow(-2) - self.eps, self.momentum)
            self.num_batches_tracked.add_(1)
        return y


class Dropout(nn.Dropout):
    """Keras's (inverted) dropout. On the CPU the mask comes from 16-bit slices of 64-bit draws, 2-4x faster than
    nn.Dropout's bernoulli_ (benchmarks/speed_ladder.py --data-ops); the rate is kept to within 1/65536."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu":
            return super().forward(x)
        words = torch.empty(-(-x.numel() // 4), dtype=torch.int64).random_(-2**63, None)  # every bit random
        keep = words.view(torch.int16)[:x.numel()].view(x.shape) >= round(self.p * 65536) - 32768
        return x * (keep.to(x.dtype) * (1.0 / (1.0 - self.p)))


class PoolFirst(nn.Module):
    """conv -> ReLU -> max-pool computed as conv -> max-pool -> ReLU: the same numbers, 4x fewer ReLUs."""

    def __init__(self, conv: nn.Sequential, pool: nn.Module):
        super().__init__()
        self.conv, self.pool = conv, pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.pool(self.conv[:-1](x)))


def _pool_before_activation(head: list[nn.Module]) -> list[nn.Module]:
    """Swap ReLU and a following max-pool (max commutes with a monotonic function); measured in benchmarks."""
    out: list[nn.Module] = []
    for module in head:
        prev = out[-1] if out else None
        if (isinstance(module, nn.MaxPool2d) and isinstance(prev, nn.Sequential)
                and isinstance(prev[0], nn.Conv2d) and isinstance(prev[-1], nn.ReLU)):
            out[-1] = PoolFirst(prev, module)
        elif isinstance(module, nn.MaxPool2d) and isinstance(prev, nn.ReLU):  # an Activation layer, as in keras-bn
            out[-1:] = [module, prev]
        else:
            out.append(module)
    return out


def _relu_in_place(head: list[nn.Module]) -> list[nn.Module]:
    """A ReLU after batch norm or max-pooling overwrites their output (their backward needs only their input):
    one allocation less; keras-bn 12.90 against 13.41 ms a step. A new module: forward_features keeps its own."""
    return [nn.ReLU(inplace=True) if isinstance(m, nn.ReLU) and isinstance(prev, (BatchNorm, nn.MaxPool2d)) else m
            for prev, m in zip([None, *head], head)]


class SpecModel(nn.Module):
    """A stack of layers built from a spec. Input: float [N, 1, 28, 28] in [0, 1]; output: logits.

    A final softmax in the spec is left out of `forward` (the loss and `predict_proba` apply it),
    because softmax followed by log is less accurate than log-softmax on logits.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        shapes = [tuple(spec.input_shape), *infer_shapes(spec)]
        self.layers = nn.ModuleList(_layer_module(layer, shapes[i]) for i, layer in enumerate(spec.layers))
        last = spec.layers[-1]
        self.softmax_output = last.args.get("activation") == "softmax"
        head = list(self.layers)
        if self.softmax_output:  # drop the softmax module, keep what stands before it
            if last.type == "Activation":
                head = head[:-1]
            else:  # a Dense with a softmax activation: keep its Linear
                head = [*head[:-1], typing.cast(nn.Sequential, self.layers[-1])[0]]
        self._head = _relu_in_place(_pool_before_activation(head))
        reset_parameters(self)
        self.memory_format = default_memory_format(spec)
        self.to(memory_format=self.memory_format)  # type: ignore[call-overload]  # converts only 4-D conv kernels

    @property
    def name(self) -> str:
        return self.spec.name

    def describe(self) -> dict:
        """The architecture, as EnsembleModel.describe gives an ensemble's (what export writes as "spec")."""
        return self.spec.to_dict()

    @property
    def input_size(self) -> tuple[int, int] | None:
        """The (H, W) of the images it takes; None for a flat input, which takes any H x W of its size."""
        return (self.spec.input_shape[0], self.spec.input_shape[1]) if len(self.spec.input_shape) == 3 else None

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1) if len(self.spec.input_shape) == 1 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._input(x)
        for module in self._head:
            x = module(x)
        return x

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every spec layer (the last one with its softmax), as Keras would show it."""
        x = self._input(x)
        outputs = []
        for module in self.layers:
            x = module(x)
            outputs.append(x)
        return outputs

    @torch.no_grad()
    def predict_proba(self, x: Any) -> torch.Tensor:
        """Class probabilities in eval mode whatever mode the model is in, like Keras's predict; on x's device
        for a tensor. `x`: images in any form `inputs.as_model_input` accepts (uint8 [N, 28, 28], floats in [0, 1])."""
        x = as_model_input(x, size=self.input_size)
        with evaluating(self):
            return torch.softmax(self(x.to(device_of(self))).float(), dim=1).to(x.device)


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters(), torch.empty(0)).device


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (BatchNorm's running statistics, no dropout) inside the block; the caller's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def default_memory_format(spec: ModelSpec) -> torch.memory_format:
    """Channels-last for models with convolutions: oneDNN's fast layout on CPU (keras-basic inference 40,000
    against 13,000 images/s in NCHW, benchmarks/fast.py); it changes strides only, not what the tensors hold."""
    return torch.channels_last if any(layer.type == "Conv2D" for layer in spec.layers) else torch.contiguous_format


def reset_parameters(model: nn.Module) -> None:
    """Keras's defaults: Glorot-uniform kernels, zero biases, BatchNorm gamma 1 / beta 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)  # same fan-in/fan-out as Keras for HWIO conv kernels
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_parameters()


def build_model(spec: ModelSpec | str) -> SpecModel:
    return SpecModel(spec_of(spec))


def _count(module: nn.Module) -> tuple[int, int]:
    """(trainable, non-trainable) as Keras counts them: BatchNorm's moving mean/variance are non-trainable."""
    trainable = sum(p.numel() for p in module.parameters())
    fixed = sum(b.numel() for name, b in module.named_buffers() if name.endswith(("running_mean", "running_var")))
    return trainable, fixed


def _keras_name(kind: str, seen: dict[str, int]) -> str:
    base = {"Conv2D": "conv2d", "MaxPooling2D": "max_pooling2d", "AveragePooling2D": "average_pooling2d",
            "GlobalAveragePooling2D": "global_average_pooling2d", "BatchNormalization": "batch_normalization"
            }.get(kind, kind.lower())
    n = seen.get(base, 0)
    seen[base] = n + 1
    return base if n == 0 else f"{base}_{n}"


def layer_table(spec: ModelSpec) -> list[dict]:
    """One row per layer: Keras-style name, type, output shape "(None, H, W, C)" and parameter count."""
    model = SpecModel(spec)
    seen: dict[str, int] = {}
    rows = []
    for layer, module, shape in zip(spec.layers, model.layers, infer_shapes(spec)):
        trainable, fixed = _count(module)
        rows.append({"name": _keras_name(layer.type, seen), "type": layer.type,
                     "output_shape": "(None, " + ", ".join(map(str, shape)) + ")", "shape": list(shape),
                     "params": trainable + fixed, "trainable": trainable, "non_trainable": fixed})
    return rows


def _totals(rows: list[dict]) -> tuple[int, int, int]:
    trainable = sum(r["trainable"] for r in rows)
    fixed = sum(r["non_trainable"] for r in rows)
    return trainable + fixed, trainable, fixed


def spec_of(model: ModelSpec | nn.Module | str | os.PathLike | object) -> ModelSpec:
    """The spec itself, that of a built model or a Run (their `.spec`), or a named model's or spec file's."""
    if isinstance(model, ModelSpec):
        return model
    spec = getattr(model, "spec", None)
    if isinstance(spec, ModelSpec):
        return spec
    if isinstance(model, (str, os.PathLike)):
        return get_spec(os.fspath(model))
    raise MnistCnnError(f"expected a ModelSpec, a model built from one, a Run, or a model's name or spec file, "
                        f"got {type(model).__name__}")


def count_params(spec: ModelSpec | SpecModel | str) -> tuple[int, int, int]:
    """(total, trainable, non-trainable), the three totals under Keras's summary."""
    return _totals(layer_table(spec_of(spec)))


def summary(spec: ModelSpec | SpecModel | str) -> Text:
    """The table Keras's `model.summary()` prints, with the same numbers (of a spec, a model, a Run or a name):
    a str, which a notebook shows as an HTML table."""
    spec = spec_of(spec)
    rows = layer_table(spec)
    cells = [(f"{r['name']} ({r['type']})", r["output_shape"], f"{r['params']:,}") for r in rows]
    headers = ("Layer (type)", "Output Shape", "Param #")
    w = [max(len(h), *(len(c[i]) for c in cells)) + 2 for i, h in enumerate(headers)]
    rule = "-" * sum(w)
    total, trainable, fixed = _totals(rows)
    lines = [f'Model: "{spec.name}"', "=" * sum(w),
             "Layer (type)".ljust(w[0]) + "Output Shape".ljust(w[1]) + "Param #".rjust(w[2]), "=" * sum(w)]
    for c in cells:
        lines += [c[0].ljust(w[0]) + c[1].ljust(w[1]) + c[2].rjust(w[2]), rule]
    lines[-1] = "=" * sum(w)
    totals = [f"{label} params: {n:,} ({_memory(4 * n)})"  # float32 weights, as Keras counts their bytes
              for label, n in (("Total", total), ("Trainable", trainable), ("Non-trainable", fixed))]
    html = (f"<p><b>Model: {escape(spec.name)}</b></p>" + html_table(("Layer (type)", "Output Shape", "Param #"),
                                                                      cells, numeric=(2,))
            + "".join(f"<div>{escape(t)}</div>" for t in totals))
    return Text("\n".join(lines + totals), html)


def _memory(size: float) -> str:
    """Bytes the way Keras's summary writes them: 1024-based, two decimals ("364.54 KB")."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024:
            return f"{size:.2f} {unit}"
        size /= 1024
    return f"{size:.2f} PB"
