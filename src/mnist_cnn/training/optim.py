"""How parameters move: Keras-default optimisers, learning-rate schedules (pure functions of the step, or of the
finished epochs' validation scores for "plateau"), EMA.

Keras's defaults (keras.optimizers, Keras 3):
    rmsprop  lr 1e-3, rho 0.9, momentum 0, epsilon 1e-7, update lr * g / sqrt(v + eps)
    adam     lr 1e-3, beta_1 0.9, beta_2 0.999, epsilon 1e-7
    sgd      lr 1e-2, momentum 0
    weight_decay is decoupled (w -= lr * wd * w) for every optimiser, as in Keras 3.
Both are Keras's formulas exactly: PyTorch's own RMSprop puts eps outside the square root, and PyTorch's Adam
adds eps after the bias correction, where Keras adds it before (3x smaller steps for gradients near 1e-6 early on).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import MnistCnnError
from .config import DEFAULT_LR, SCHEDULES


class KerasRMSprop(torch.optim.Optimizer):
    """RMSprop exactly as Keras computes it: v = rho v + (1 - rho) g^2; w -= lr g / sqrt(v + eps)."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float = 1e-3, rho: float = 0.9, eps: float = 1e-7):
        super().__init__(params, {"lr": lr, "rho": rho, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch's signature
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            for p in params:
                if "velocity" not in self.state[p]:
                    self.state[p]["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            velocities = [self.state[p]["velocity"] for p in params]
            # one multi-tensor kernel per line instead of a Python loop over parameters
            torch._foreach_mul_(velocities, group["rho"])
            torch._foreach_addcmul_(velocities, grads, grads, value=1 - group["rho"])
            denom = torch._foreach_add(velocities, group["eps"])
            torch._foreach_sqrt_(denom)
            torch._foreach_addcdiv_(params, grads, denom, value=-group["lr"])


class KerasAdam(torch.optim.Adam):
    """PyTorch's fused Adam with Keras's epsilon. Keras steps lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps);
    PyTorch's eps sits after the bias correction, so it is set to eps / sqrt(1 - b2^t) before each step t."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float = 1e-3, eps: float = 1e-7):
        # fused: one kernel per tensor, 66 against 160 us per step for foreach on fast-cnn
        # (benchmarks/speed_ladder.py --optimizer-steps)
        super().__init__(params, lr=lr, betas=(0.9, 0.999), eps=eps, fused=True)  # defaults["eps"]: Keras's eps
        for group in self.param_groups:
            group["t"] = 0  # in param_groups, so checkpoints carry it

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch's signature
        for group in self.param_groups:
            if "t" not in group:  # a checkpoint from before this key: its step count, read once
                group["t"] = max((int(self.state[p]["step"]) for p in group["params"] if "step" in self.state[p]),
                                 default=0)
            group["t"] += 1  # the step count Adam's bias correction uses, kept on the host: no device sync
            group["eps"] = self.defaults["eps"] / math.sqrt(1 - group["betas"][1] ** group["t"])
        return super().step(closure)


def make_optimizer(name: str, params: Iterable[nn.Parameter], lr: float | None) -> torch.optim.Optimizer:
    lr = DEFAULT_LR[name] if lr is None else lr
    if name == "rmsprop":
        return KerasRMSprop(params, lr=lr)
    if name == "adam":
        return KerasAdam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.0, foreach=True)
    raise MnistCnnError(f"unknown optimizer {name!r}: expected one of {', '.join(DEFAULT_LR)}")


@torch.no_grad()
def decay_weights(optimizer: torch.optim.Optimizer, weight_decay: float) -> None:
    """Keras 3's decoupled weight decay, w -= lr * wd * w, applied before every optimiser's step."""
    for group in optimizer.param_groups:
        torch._foreach_mul_(list(group["params"]), 1 - group["lr"] * weight_decay)


def learning_rate(schedule: str, base_lr: float, step: int, steps_per_epoch: int, total_steps: int,
                  decay: float = 0.95) -> float:
    """The learning rate at optimiser step `step` (0-based); a pure function, like nanoGPT's get_lr.

    constant     base_lr
    exponential  base_lr * decay ** epoch (Keras LearningRateScheduler(lambda e: lr * 0.95 ** e))
    cosine       half a cosine from base_lr to 0 over the run
    onecycle     linear warm-up from base_lr / 10 over the first 25% of steps, then linear down to 0
    (plateau depends on validation scores, not on the step: see plateau_lr)
    """
    if schedule == "constant":
        return base_lr
    if schedule == "exponential":
        return base_lr * decay ** (step // steps_per_epoch)
    progress = min(step / max(total_steps, 1), 1.0)
    if schedule == "cosine":
        return base_lr * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "onecycle":
        warm = 0.25
        if progress < warm:
            return base_lr * (0.1 + 0.9 * progress / warm)
        return base_lr * (1 - progress) / (1 - warm)
    raise MnistCnnError(f"unknown schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")


def improved(value: float, best: float | None, monitor: str, min_delta: float = 0.0) -> bool:
    """Keras's test in EarlyStopping and ReduceLROnPlateau: better than the best so far by more than min_delta (any
    first value is), compared in float32 as Keras compares."""
    if best is None:
        return True
    if monitor == "val_loss":
        return _f32(value + min_delta) < _f32(best)
    return _f32(value - min_delta) > _f32(best)


def plateau_lr(base_lr: float, scores: Sequence[float], monitor: str = "val_loss", factor: float = 0.1,
               patience: int = 10, min_delta: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0) -> float:
    """The next epoch's rate under Keras's ReduceLROnPlateau (same defaults), replayed over the finished epochs'
    scores: a pure function of the history, so a resumed run needs no saved callback state."""
    lr, best, wait, cool = base_lr, None, 0, 0
    for score in scores:
        if cool > 0:
            cool, wait = cool - 1, 0
        if improved(score, best, monitor, min_delta):
            best, wait = score, 0
        elif cool == 0:
            wait += 1
            if wait >= patience and _f32(lr) > _f32(min_lr):  # Keras keeps the rate in a float32 variable
                lr, cool, wait = _f32(max(_f32(lr) * factor, min_lr)), cooldown, 0
    return lr


def _f32(x: float) -> float:
    """x rounded to float32, where Keras holds rates and compares scores."""
    return float(np.float32(x))


class EMA:
    """An exponential moving average of the weights (BatchNorm statistics copied), used for evaluation."""

    def __init__(self, model: nn.Module, decay: float):
        import copy

        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), 1 - self.decay)
        for mine, theirs in zip(self.model.buffers(), model.buffers()):
            mine.copy_(theirs)
