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
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import MnistCnnError
from .config import DEFAULT_LR, SCHEDULES


class Optimizer:
    """What training uses of torch.optim.Optimizer, in its state_dict format (so checkpoints are unchanged):
    param_groups, per-parameter state, zero_grad, state_dict, load_state_dict. Not torch's class itself: its
    first instance imports torch._dynamo for its compiler wrappers, 1.1-1.5 s of every train command
    (benchmarks/startup.py), and its step wrappers cost ~250 us a step (torch profile of the fast recipe)."""

    def __init__(self, params: Iterable[nn.Parameter], defaults: dict[str, Any]):
        self.defaults = defaults
        self.param_groups: list[dict[str, Any]] = [{**defaults, "params": list(params)}]
        self.state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)

    def _with_grads(self, group: dict[str, Any]) -> list[torch.Tensor]:
        return [p for p in group["params"] if p.grad is not None]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:  # a CUDA graph's gradients live in its own memory: zeroed in place
                    p.grad.zero_()

    def state_dict(self) -> dict[str, Any]:
        index = {p: i for i, p in enumerate(p for group in self.param_groups for p in group["params"])}
        groups = [{**{k: v for k, v in group.items() if k != "params"}, "params": [index[p] for p in group["params"]]}
                  for group in self.param_groups]
        return {"state": {index[p]: dict(state) for p, state in self.state.items()}, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        params = [p for group in self.param_groups for p in group["params"]]
        saved = state_dict["param_groups"]
        if [len(g["params"]) for g in saved] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("the saved optimiser state is for a different set of parameters")
        by_index = dict(zip((i for g in saved for i in g["params"]), params))
        self.param_groups = [{**g, "params": [by_index[i] for i in g["params"]]} for g in saved]
        self.state = defaultdict(dict)
        for i, state in state_dict["state"].items():
            p = by_index[int(i)]
            self.state[p] = {key: _like(value, p, key) for key, value in state.items()}

    def step(self) -> None:
        raise NotImplementedError


def _grads(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.grad for p in params if p.grad is not None]


def _like(value: Any, param: torch.Tensor, key: str) -> Any:
    """A copy of saved state on its parameter's device, moments in its dtype (a step count keeps its own), as torch."""
    if not torch.is_tensor(value):
        return value
    dtype = param.dtype if value.is_floating_point() and key != "step" else value.dtype
    return value.to(device=param.device, dtype=dtype, copy=True)  # never shared with the caller's dict


class KerasRMSprop(Optimizer):
    """RMSprop exactly as Keras computes it: v = rho v + (1 - rho) g^2; w -= lr g / sqrt(v + eps)."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float = 1e-3, rho: float = 0.9, eps: float = 1e-7):
        super().__init__(params, {"lr": lr, "rho": rho, "eps": eps})

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params = self._with_grads(group)
            if not params:
                continue
            grads = _grads(params)
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


class KerasAdam(Optimizer):
    """Adam with Keras's epsilon, on PyTorch's fused Adam kernel. Keras steps lr sqrt(1 - b2^t) / (1 - b1^t)
    m / (sqrt(v) + eps); the kernel adds eps after the bias correction, so it gets eps / sqrt(1 - b2^t) at step t."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float = 1e-3, eps: float = 1e-7):
        super().__init__(params, {"lr": lr, "betas": (0.9, 0.999), "eps": eps, "t": 0})  # t: in checkpoints

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params = self._with_grads(group)
            if not params:
                continue
            if "t" not in group:  # a checkpoint from before this key: its step count, read once
                group["t"] = max((int(self.state[p]["step"]) for p in params if "step" in self.state[p]), default=0)
            group["t"] += 1  # the step count Adam's bias correction uses, kept on the host: no device sync
            beta1, beta2 = group["betas"]
            for p in params:
                if not self.state[p]:
                    self.state[p] = {"step": torch.zeros((), device=p.device),
                                     "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                     "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
            # fused: one kernel per tensor, 66 against 160 us per step for foreach on fast-cnn
            # (benchmarks/speed_ladder.py --optimizer-steps); it wants one device and dtype per call
            for same in _by_device_and_dtype(params).values():
                states = [self.state[p] for p in same]
                steps = [s["step"] for s in states]
                torch._foreach_add_(steps, 1)
                torch._fused_adam_(same, _grads(same), [s["exp_avg"] for s in states],
                                   [s["exp_avg_sq"] for s in states], [], steps, amsgrad=False, lr=group["lr"],
                                   beta1=beta1, beta2=beta2, weight_decay=0.0,
                                   eps=self.defaults["eps"] / math.sqrt(1 - beta2 ** group["t"]), maximize=False)


class SGD(Optimizer):
    """Plain SGD, Keras's default (momentum 0): w -= lr g."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float = 1e-2):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            if params := self._with_grads(group):
                torch._foreach_add_(params, _grads(params), alpha=-group["lr"])


def _by_device_and_dtype(params: list[torch.Tensor]) -> dict[tuple[torch.device, torch.dtype], list[torch.Tensor]]:
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for p in params:
        groups.setdefault((p.device, p.dtype), []).append(p)
    return groups


def make_optimizer(name: str, params: Iterable[nn.Parameter], lr: float | None) -> Optimizer:
    lr = DEFAULT_LR[name] if lr is None else lr
    if name == "rmsprop":
        return KerasRMSprop(params, lr=lr)
    if name == "adam":
        return KerasAdam(params, lr=lr)
    if name == "sgd":
        return SGD(params, lr=lr)
    raise MnistCnnError(f"unknown optimizer {name!r}: expected one of {', '.join(DEFAULT_LR)}")


@torch.no_grad()
def decay_weights(optimizer: Optimizer, weight_decay: float) -> None:
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
