"""One optimiser step: dropout seeded from (seed, step), bf16 autocast, forward and backward, and on one CUDA
device the whole forward and backward replayed as one CUDA graph."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import apply_affine
from .distributed import Processes
from .optim import Optimizer, decay_weights

if TYPE_CHECKING:
    from .checkpoint import TrainState
    from .config import TrainConfig


def use_bf16(precision: str, device: torch.device) -> bool:
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":  # native from Ampere on; is_bf16_supported() also says yes where it is emulated
        return torch.cuda.get_device_capability(device)[0] >= 8
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step) * 64 + rank


def seed_dropout(device: torch.device, seed: int) -> None:
    # seed only the generator dropout draws from: torch.manual_seed visits every backend, ~100 us a step against 1
    # (speed_ladder.py --data-ops); a CUDA graph reads the seed this sets each time it is replayed
    if device.type == "cpu":
        torch.default_generator.manual_seed(seed)
    else:
        torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()] \
            .manual_seed(seed)


class StepGraph:
    """Runs `forward_backward(idx, theta)` for full batches as a CUDA graph: its ~80 kernels in one launch, since
    an eager step of these small models spends its time launching them (benchmarks/cuda_step.py profile: 975 ms
    of host time against 70 ms of GPU time for 200 keras-basic steps).

    The first steps run eagerly on a side stream (cuDNN and cuBLAS set up there), the next is captured and replayed.
    The graph's gradients live in its own memory, so they are zeroed (never set to None) around eager steps."""

    def __init__(self, forward_backward: Callable[..., None], optimizer: Optimizer, idx: torch.Tensor,
                 theta: torch.Tensor | None, warmup: int = 3):
        self.forward_backward, self.optimizer, self.warmup = forward_backward, optimizer, warmup
        self.idx, self.theta = idx.clone(), None if theta is None else theta.clone()  # the graph's inputs
        self.graph: torch.cuda.CUDAGraph | None = None

    def fits(self, idx: torch.Tensor) -> bool:
        return idx.shape == self.idx.shape

    def run(self, idx: torch.Tensor, theta: torch.Tensor | None) -> None:
        self.idx.copy_(idx)
        if self.theta is not None and theta is not None:
            self.theta.copy_(theta)
        if self.graph is None and self.warmup > 0:
            self.warmup -= 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.optimizer.zero_grad(set_to_none=True)
                self.forward_backward(self.idx, self.theta)
            torch.cuda.current_stream().wait_stream(side)
            return
        if self.graph is None:
            self.optimizer.zero_grad(set_to_none=True)  # the backward inside the capture allocates them
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.forward_backward(self.idx, self.theta)
        self.graph.replay()


class Step:
    """Steps `state` on batches of the training set `x`, `y` (on the device, whole): a batch is its rows in `x`
    and, when augmenting, one affine transform per row."""

    def __init__(self, state: TrainState, config: TrainConfig, x: torch.Tensor, y: torch.Tensor,
                 device: torch.device, procs: Processes):
        self.state, self.config, self.x, self.y, self.device, self.procs = state, config, x, y, device, procs
        self.train_model: nn.Module = procs.wrap(state.model)
        self.bf16 = use_bf16(config.precision, device)
        self.graphed = config.cuda_graph and device.type == "cuda" and procs.world == 1
        # a graph captures the casts of the weights: autocast's cache would keep them from one capture
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16,
                                       cache_enabled=not self.graphed)
        self.graph: StepGraph | None = None

    def forward_backward(self, idx: torch.Tensor, theta: torch.Tensor | None, share: float = 1.0) -> None:
        """One batch's gradients, and its loss and hits added to the epoch's sums, with no host sync."""
        xb, yb = self.x[idx], self.y[idx]
        if theta is not None:
            xb = apply_affine(xb, theta).contiguous(memory_format=self.state.model.memory_format)
        with self.autocast:
            logits = self.train_model(xb)
        loss = F.cross_entropy(logits.float(), yb, label_smoothing=self.config.label_smoothing)
        # DDP averages the processes' gradients: weigh each one's mean by its share of the batch, so that an
        # uneven split (a last batch of 14 images on 3 processes) is still the whole batch's mean
        (loss * share if share != 1.0 else loss).backward()
        with torch.no_grad():  # accumulate on the device: no host sync and no host-to-device copy per step
            sums = self.state.sums
            sums[:2] += torch.stack([loss.detach().double() * len(yb), (logits.argmax(1) == yb).sum().double()])
            sums[2] += len(yb)

    def __call__(self, rows: torch.Tensor, thetas: torch.Tensor | None, lr: float) -> None:
        """One step on the global batch `rows` (this process takes its shard) at learning rate `lr`."""
        state, optimizer = self.state, self.state.optimizer
        idx = self.procs.shard(rows)
        theta = self.procs.shard(thetas) if thetas is not None else None
        seed_dropout(self.device, step_seed(self.config.seed, state.step, self.procs.rank))
        for group in optimizer.param_groups:
            group["lr"] = lr
        if self.graphed and self.graph is None and len(rows) == self.config.batch_size:
            self.graph = StepGraph(self.forward_backward, optimizer, idx, theta)
        if self.graph is not None and self.graph.fits(idx):
            self.graph.run(idx, theta)
        else:  # every step when not graphed; when graphed, the last, smaller batch of an epoch
            optimizer.zero_grad(set_to_none=self.graph is None)
            self.forward_backward(idx, theta, len(idx) * self.procs.world / len(rows))
        if self.config.weight_decay:
            decay_weights(optimizer, self.config.weight_decay)
        optimizer.step()
        if state.ema:
            state.ema.update(state.model)
        state.step += 1
