"""The training state (model, EMA, optimiser, the epoch's running sums, step, history, best, patience) as one
object that saves itself to a checkpoint and restores itself from one; and how a resumed run is reconciled with
its saved config.json. A checkpoint is named tensors + JSON, never a pickle."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..budgets import exists
from ..errors import MnistCnnError
from ..models import SpecModel, build_model
from ..runs import has_trained, latest_checkpoint, read_json, save_checkpoint
from ..spec import ModelSpec
from .config import FIELDS, PLACEMENT, SAVED_WITHOUT, TrainConfig, validate
from .distributed import Processes
from .optim import EMA, Optimizer, make_optimizer
from .options import OptionError, escape

Checkpoint = tuple[dict[str, torch.Tensor], dict[str, Any]]


@dataclass
class TrainState:
    """Everything a resumed run needs to continue bit for bit."""

    model: SpecModel
    optimizer: Optimizer
    ema: EMA | None
    sums: torch.Tensor  # this epoch's loss sum, correct predictions and images seen, on the device
    base_lr: float      # the optimiser's lr before any schedule (a restored optimiser holds the last step's)
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: float | None = None  # the best value of config.monitor so far
    waited: int = 0            # epochs since it improved

    @classmethod
    def create(cls, spec: ModelSpec, config: TrainConfig, device: torch.device,
               start: SpecModel | None = None) -> TrainState:
        """A fresh state: the seed's initial weights, or those of `start` (a model of `spec`, for fine-tuning)."""
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        torch.manual_seed(config.seed)  # the initial weights (and then the seed's draws stay the same either way)
        model = build_model(spec)
        if start is not None:
            model.load_state_dict(start.state_dict())
        model = model.to(device, memory_format=memory_format)  # type: ignore[call-overload]
        model.memory_format = memory_format
        optimizer = make_optimizer(config.optimizer, model.parameters(), config.lr)
        return cls(model, optimizer, EMA(model, config.ema) if config.ema else None,
                   torch.zeros(3, device=device, dtype=torch.float64), optimizer.param_groups[0]["lr"])

    @property
    def eval_model(self) -> SpecModel:
        """The weights that are evaluated: the EMA's where there is one."""
        return typing.cast(SpecModel, self.ema.model) if self.ema else self.model

    def stopped_early(self, config: TrainConfig) -> bool:
        return bool(config.early_stopping and self.waited >= config.early_stopping)

    def checkpoint(self, out: Path, config: TrainConfig, spec: ModelSpec, procs: Processes) -> None:
        """A checkpoint at this step. Every process calls it at the same step (the sums are summed over them)."""
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if self.ema:
            tensors.update({f"ema.{k}": v for k, v in self.ema.model.state_dict().items()})
        opt_tensors, opt_meta = _flatten_optimizer(self.optimizer.state_dict())
        tensors.update(opt_tensors, sums=procs.sum(self.sums.clone()) if procs.world > 1 else self.sums)
        meta = {"step": self.step, "history": self.history, "best": self.best, "waited": self.waited,
                "optimizer": opt_meta, "config": config.to_dict(), "spec": spec.to_dict()}
        if procs.is_main:
            save_checkpoint(out, self.step, tensors, meta)

    def restore(self, checkpoint: Checkpoint, is_main: bool) -> None:
        tensors, meta = checkpoint
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if self.ema:
            self.ema.model.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        self.optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
        _match_parameter_layouts(self.optimizer)
        # rank 0 carries the epoch's running sums for every rank (checkpoint sums them)
        if is_main:
            self.sums = tensors["sums"].to(self.sums.device)
        self.step, self.history, self.best, self.waited = meta["step"], meta["history"], meta["best"], meta["waited"]


def resumed_config(out: Path, config: TrainConfig | None, overrides: dict[str, Any],
                   log: Callable[[str], None]) -> tuple[TrainConfig, Checkpoint | None]:
    """The config a resumed run continues with: its saved config.json, with only its length (`epochs`) and its
    placement (device, threads, cuda_graph) changed: from `overrides`, else from `config` where it has them (the
    placement where it is not the default); and its newest checkpoint (None if it stopped before the first)."""
    overrides = {k: v for k, v in overrides.items() if v is not None}  # None: not given, as in make_config
    refused = sorted(set(overrides) - {"epochs", *PLACEMENT})
    if refused:
        allowed = ", ".join("{" + name + "}" for name in ("epochs", *PLACEMENT[:-1]))
        raise OptionError(f"{{resume}} continues {escape(str(out))} with its saved settings; only {allowed} and "
                          f"{{{PLACEMENT[-1]}}} may be given with it, got {{{refused[0]}}}")
    if not exists(out / "config.json"):
        raise MnistCnnError(f"cannot resume {out}: no config.json there (is it a run directory?)")
    saved = {**SAVED_WITHOUT, **read_json(out / "config.json", {})}  # an older run ends as it would have then
    unknown = sorted(set(saved) - set(FIELDS))
    if unknown:
        raise MnistCnnError(f"cannot resume {out}: {out / 'config.json'} has unknown option {unknown[0]!r}")
    if not isinstance(saved.get("model"), str):  # train writes every field; {} would train all the defaults
        raise MnistCnnError(f"cannot resume {out}: {out / 'config.json'} names no model (is it a run's?)")
    changes = {k: getattr(config, k) for k in PLACEMENT if config and getattr(config, k) != FIELDS[k].default}
    changes.update({"epochs": config.epochs} if config else {}, out=str(out), **overrides)
    resumed = TrainConfig(**{**saved, **changes})
    validate(resumed)
    # stopped before its first checkpoint (killed while loading, say): nothing was trained, it starts at step 0
    return resumed, latest_checkpoint(out, warn=log) if has_trained(out) else None


def reconcile(state: TrainState, config: TrainConfig, saved_epochs: int, steps_per_epoch: int, out: Path,
              say: Callable[[str], None]) -> TrainConfig:
    """After restoring `state`: a run that had stopped early keeps its saved length (`saved_epochs`); one asked to
    train for fewer steps than it has is refused; the log says where it continues."""
    stop = state.stopped_early(config)
    if stop:  # no --epochs undoes early stopping, and config.json keeps the length it was given
        config = dataclasses.replace(config, epochs=saved_epochs)
    done, history = state.step // steps_per_epoch, state.history
    if state.step > steps_per_epoch * config.epochs:
        raise OptionError(f"cannot resume {escape(str(out))} with {{epochs}} {config.epochs}: it has already trained "
                          f"{epochs_text(done)}")
    if stop:
        say(f"{out} stopped early after {epochs_text(len(history))} ({config.monitor} did not improve for "
            f"{epochs_text(state.waited)}); evaluating it again")
    elif state.step == steps_per_epoch * config.epochs:
        say(f"{out} had finished training ({epochs_text(len(history))}); evaluating it again "
            f"(a larger --epochs trains it further)")
    else:
        say(f"Resuming {out} at step {state.step} (epoch {done + 1}, "
            f"batch {state.step % steps_per_epoch}/{steps_per_epoch})")
    return config


def epochs_text(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimiser state as named tensors + JSON, so checkpoints need no pickle."""
    tensors, scalars = {}, {}
    for pid, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _match_parameter_layouts(optimizer: Optimizer) -> None:
    """Give loaded optimiser state its parameter's memory layout (checkpoints store it contiguous): a fused Adam
    step on channels-last kernels with contiguous moments mixes up elements on the CPU and refuses on CUDA."""
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
