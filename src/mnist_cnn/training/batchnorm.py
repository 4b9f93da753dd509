"""BatchNorm after short training: moving statistics that cannot have caught up with the weights, re-estimated.

Keras's BatchNormalization keeps moving averages with momentum 0.99: each step moves them 1% of the way to the
batch's statistics. After n steps the initial values (mean 0, variance 1) still weigh 0.99**n in them, and the
rest is an average over the last ~100 steps of weights that were changing fast: keras-bn trained 282 steps
(2 epochs on 9,000 images) trains at 96% but tests at 30-50% with them. Practitioners re-estimate the statistics
with the final weights ("precise BN": torch.optim.swa_utils.update_bn, fvcore's update_bn_stats): one pass over
a few thousand training images in train mode, averaging every batch's statistics alike. Same weights: 98%.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..inputs import as_model_input
from ..models import device_of

# after n steps at momentum m, the first half of training (the initial values, the fastest-changing weights)
# still weighs m ** (n / 2) in the moving averages; "auto" acts above 1%: Keras's 0.99 under 917 steps, about an
# epoch of MNIST in 64s. The initial values alone (m ** n) fall under 1% at 459 steps, yet keras-bn's moving
# statistics still cost it 2.9 points of test accuracy at 423 steps and 1.0 at 564 (benchmarks/bn_recalibration.py)
EARLY = 0.01
IMAGES = 4096  # a few thousand images: 64 batches of 64 estimate each channel's mean and variance closely


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def early_weight(layer: nn.modules.batchnorm._BatchNorm, steps: int | None = None) -> float:
    """The weight the first half of `steps` updates (the layer's own count by default) has in its moving
    statistics, its initial values included."""
    if steps is None:
        assert layer.num_batches_tracked is not None  # track_running_stats layers count their updates
        steps = int(layer.num_batches_tracked)
    if layer.momentum is None:  # PyTorch's cumulative average: every batch weighs alike, the initial values none
        return 1.0 if steps == 0 else 0.5
    return (1.0 - layer.momentum) ** (steps / 2)


def needs_recalibration(model: nn.Module, steps: int | None = None) -> bool:
    """True for a model with BatchNorm whose moving statistics, after `steps` training steps (the layers' own
    count of updates by default), still weigh the first half of training more than EARLY."""
    return any(early_weight(layer, steps) > EARLY for layer in batchnorm_layers(model))


def should_recalibrate(setting: str, model: nn.Module) -> bool:
    """The `bn_recalibrate` option for this model: "on" for any BatchNorm model, "off" never (Keras's behaviour),
    "auto" where needs_recalibration."""
    if setting == "off" or not batchnorm_layers(model):
        return False
    return setting == "on" or needs_recalibration(model)


def stalest(model: nn.Module) -> tuple[int, float]:
    """(steps, Keras momentum) of the BatchNorm layer whose moving statistics are the least caught up."""
    layer = max(batchnorm_layers(model), key=early_weight)
    keras_momentum = math.nan if layer.momentum is None else 1.0 - layer.momentum
    return int(layer.num_batches_tracked or 0), keras_momentum


@torch.no_grad()
def recalibrate(model: nn.Module, images: torch.Tensor, batch_size: int = 64, limit: int = IMAGES) -> int:
    """Re-estimate every BatchNorm layer's running mean and variance with the model's current weights: the
    average of the statistics of whole batches of `batch_size` images (the size they were trained on), taken
    evenly across `images` (no randomness), up to `limit` of them. Dropout stays off, as in evaluation. The
    layers' momentum, their count of training steps and the model's mode are kept. Returns the images used."""
    layers = batchnorm_layers(model)
    if not layers or not len(images):
        return 0
    # whole batches only: a batch of one has no variance; every batch of the average weighs alike
    count = min(len(images), limit)
    count = max(count - count % batch_size, min(count, batch_size))
    rows = torch.linspace(0, len(images) - 1, count).round().long().to(images.device)  # spread across the set
    device, memory_format = device_of(model), getattr(model, "memory_format", torch.contiguous_format)
    saved = [(layer.momentum, layer.num_batches_tracked.clone() if layer.num_batches_tracked is not None else None)
             for layer in layers]
    modes = {m: m.training for m in model.modules()}
    model.eval()  # dropout off; only the BatchNorm layers collect statistics
    try:
        for layer in layers:
            layer.reset_running_stats()
            layer.train()
        for k, start in enumerate(range(0, count, batch_size)):
            for layer in layers:  # batch k weighs 1 / (k + 1): the cumulative average of every batch so far
                layer.momentum = 1.0 / (k + 1)
            x = as_model_input(images[rows[start:start + batch_size]], size=getattr(model, "input_size", None))
            model(x.to(device).contiguous(memory_format=memory_format))
    finally:
        for layer, (momentum, tracked) in zip(layers, saved):
            layer.momentum = momentum
            if tracked is not None:
                layer.num_batches_tracked.copy_(tracked)  # type: ignore[union-attr]
        for m, training in modes.items():
            m.training = training
    return count
