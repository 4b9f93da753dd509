"""The training loop in plain sight (nanoGPT style), with Keras's vocabulary.

Speed comes from keeping the whole data set as one tensor on the device and slicing batches from a
permutation (no DataLoader, no per-sample Python), augmenting whole batches at once, and syncing with
the host once per epoch. Every random draw of step k is a function of (seed, k), so a run resumed from
a checkpoint at step k continues bit for bit where the uninterrupted run would have been.
Under `torchrun`, each process takes its shard of every global batch and DistributedDataParallel
averages the gradients (gloo on CPU, NCCL on GPU); only rank 0 writes files and prints.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_json, make_dir
from ..augment import Augment, affine_matrices
from ..budgets import exists
from ..data import MnistData, load_mnist, recorded_source, split_validation
from ..errors import MnistCnnError
from ..evaluation import evaluate, loss_and_accuracy, predict_logits
from ..inputs import to_float
from ..models import SpecModel, default_memory_format
from ..rundir import claim
from ..runs import Run, load_weights, remove_run_files, save_weights, write_classes, write_history
from ..spec import ModelSpec, parse_spec
from .batchnorm import recalibrate, should_recalibrate, stalest
from .checkpoint import Checkpoint, TrainState, epochs_text, reconcile, resumed_config
from .config import TrainConfig, make_config, validate
from .distributed import Processes
from .optim import improved, learning_rate, plateau_lr
from .options import OptionError, escape
from .progress import ProgressBar, epoch_line
from .signals import StopRequested, StopSignals
from .step import Step

Log = Callable[[str], None]
OnEpoch = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Split:
    """The images a run trains on (as float tensors on the device), validates and tests on."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...] | None  # the names of the data's classes; None: the digits 0..9

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else 10


def train(config: TrainConfig | None = None, data: MnistData | str | os.PathLike | None = None, *,
          resume: str | Path | None = None, overwrite: bool = False, log: Log = print, on_epoch: OnEpoch | None = None,
          **options: Any) -> Run:
    """Train a model (like Keras's fit), write its run directory, evaluate once on the test set.

    Give a TrainConfig, or make_config's options as keywords (`train(model=..., epochs=3)`); `data` is the data
    itself (MnistData) or, as make_config's `data`, its path.
    A run directory that already holds a run is refused unless `overwrite`, which first removes that run's files.
    `resume` continues the run saved there with its own settings; only `epochs`, `device`, `threads` and
    `cuda_graph` may change (as keywords, or from `config`: its epochs, and its placement where not the default).
    Ctrl-C or a scheduler's SIGTERM ends the step first, so the checkpoint it leaves is consistent; one that comes
    during the final evaluation lets it finish.
    `on_epoch(row)` sees each epoch's history row once it is checkpointed; an exception it raises stops training
    there and leaves the run resumable (a tuner prunes a poor trial so).
    """
    if isinstance(data, (str, os.PathLike)):  # a path: the option, recorded in config.json
        data, options = None, {**options, "data": data}
    procs = Processes.from_env()
    threads = torch.get_num_threads()
    try:
        # training seeds torch's generator; the caller's is left as it was, and so is its thread count
        # `held` keeps the run folder's lock until the run is written
        with StopSignals(enabled=procs.world == 1) as signals, torch.random.fork_rng(devices=[]), ExitStack() as held:
            return _train(config, data, resume, overwrite, log, options, procs, signals, held, on_epoch)
    finally:
        torch.set_num_threads(threads)


def _train(config: TrainConfig | None, data: MnistData | None, resume: str | Path | None, overwrite: bool, log: Log,
           options: dict[str, Any], procs: Processes, signals: StopSignals, held: ExitStack,
           on_epoch: OnEpoch | None) -> Run:
    config, checkpoint = _config(config, resume, options, log)
    out = _out_dir(config, resume is not None or overwrite)
    device = procs.start(config.device)
    out = Path(config.out) if config.out else procs.agree_on(out)
    if procs.is_main:  # rank 0 writes the run folder; torchrun's other ranks follow it
        held.enter_context(claim(out, "run"))
    torch.set_num_threads(procs.threads(config.threads))
    say = log if procs.is_main and config.verbose else _quiet
    config, split = _load_data(config, data, device)
    config, start = _start(config, checkpoint)
    spec = _spec(config, checkpoint, out, split.num_classes)
    if spec.num_classes != split.num_classes:
        raise MnistCnnError(f"model {config.model}: its last layer gives {spec.num_classes} class scores, but the "
                            f"data has {split.num_classes} classes")
    state = TrainState.create(spec, config, device, start)
    steps_per_epoch = procs.steps_per_epoch(len(split.x_train), config.batch_size, say)
    if checkpoint is not None:
        state.restore(checkpoint, procs.is_main)
        config = reconcile(state, config, checkpoint[1]["config"]["epochs"], steps_per_epoch, out, say)
    elif resume is not None:
        say(f"{out} stopped before its first checkpoint: training it from the beginning")
    step = Step(state, config, split.x_train, split.y_train, device, procs)
    if procs.is_main:
        if overwrite and resume is None:  # none of the old run may mix with the new one: checkpoints, best, model
            remove_run_files(out)
        make_dir(out, "run directory")
        atomic_write_json(out / "config.json", config.to_dict())
        atomic_write_json(out / "spec.json", spec.to_dict())
        write_classes(out, split.classes)
    say(f"Training {spec.name} on {len(split.x_train)} images ({len(split.x_val)} validation) for "
        f"{epochs_text(config.epochs)}, batch {config.batch_size}, {config.optimizer} lr {state.base_lr:g}, "
        f"{procs.world} process(es) on {device}{', bf16 autocast' if step.bf16 else ''}"
        f"{', CUDA graph' if step.graphed else ''}")
    fit(state, step, split, config, spec, out, steps_per_epoch, signals, say, on_epoch)
    return _finish(state, config, spec, split, out, procs, signals, say)


def fit(state: TrainState, step: Step, split: Split, config: TrainConfig, spec: ModelSpec, out: Path,
        steps_per_epoch: int, signals: StopSignals, say: Log, on_epoch: OnEpoch | None = None) -> None:
    """The loop: epochs -> batches -> step -> the epoch's row -> callbacks -> checkpoint -> on_epoch(row)."""
    procs, n, batch = step.procs, len(split.x_train), config.batch_size
    total_steps = steps_per_epoch * config.epochs
    augment = Augment.from_dict(config.augment) if config.augment else None
    bar = ProgressBar(procs.is_main and bool(config.verbose), sys.stdout)
    stop = state.stopped_early(config)
    try:
        while state.step < total_steps and not stop:
            epoch = state.step // steps_per_epoch
            order, thetas = _epoch_draws(config.seed, epoch, n, augment, step.device)
            epoch_lr = _plateau_lr(config, state) if config.schedule == "plateau" else None
            state.model.train()
            t0 = time.perf_counter()
            for i in range(state.step % steps_per_epoch, steps_per_epoch):
                rows = slice(i * batch, (i + 1) * batch)
                lr = epoch_lr if epoch_lr is not None else learning_rate(
                    config.schedule, state.base_lr, state.step, steps_per_epoch, total_steps, config.lr_decay)
                step(order[rows], thetas[rows] if thetas is not None else None, lr)
                bar.update(i + 1, steps_per_epoch, t0, state.sums)
                mid_epoch = state.step % steps_per_epoch != 0  # at an epoch's end, its row comes first
                if mid_epoch and config.checkpoint_every and state.step % config.checkpoint_every == 0:
                    state.checkpoint(out, config, spec, procs)
                if mid_epoch and signals.requested:
                    state.checkpoint(out, config, spec, procs)
                    raise StopRequested
            bar.end()
            row = _epoch_row(state, epoch, lr, t0, split, procs)
            say(epoch_line(row, config.epochs))
            if epoch_lr is not None and (next_lr := _plateau_lr(config, state)) < epoch_lr:
                say(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {next_lr:g}")
            stop = _watch(state, row, config, out, procs, say)
            if procs.is_main:
                write_history(out, state.history)
            state.checkpoint(out, config, spec, procs)
            if on_epoch is not None:  # after the checkpoint: an exception it raises leaves the run resumable
                on_epoch(dict(row))
            if signals.requested and state.step < total_steps and not stop:
                raise StopRequested
    except (StopRequested, KeyboardInterrupt) as e:
        bar.end()  # the message goes on a line of its own, not after the bar
        if isinstance(e, KeyboardInterrupt):  # mid-step, so no checkpoint now: the newest one on disk is consistent
            raise signals.interrupted(f"interrupted during step {state.step}; continue from the newest checkpoint in "
                                      f"{out / 'checkpoints'} with: mnist-cnn train --resume {out}", out) from None
        raise signals.interrupted(f"interrupted at step {state.step}; checkpoint saved in {out / 'checkpoints'}; "
                                  f"continue with: mnist-cnn train --resume {out}", out) from None


def _epoch_draws(seed: int, epoch: int, n: int, augment: Augment | None,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The epoch's order and augmentations: a pure function of (seed, epoch), so a resumed run re-derives them."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator).to(device)
    # one transform per place in the epoch, drawn at once: 1.5 us a batch against 84 (speed_ladder --data-ops)
    thetas = affine_matrices(n, augment, generator).to(device) if augment and not augment.is_identity else None
    return order, thetas


def _plateau_lr(config: TrainConfig, state: TrainState) -> float:
    """Replayed over the finished epochs, so that a resumed run agrees."""
    return plateau_lr(state.base_lr, [r[config.monitor] for r in state.history], config.monitor, config.lr_factor,
                      config.lr_patience, config.lr_min_delta, config.lr_cooldown, config.min_lr)


def _epoch_row(state: TrainState, epoch: int, lr: float, t0: float, split: Split, procs: Processes) -> dict[str, Any]:
    """The epoch's history row (one host sync), appended to the history."""
    sums = procs.sum(state.sums)
    row = {"epoch": epoch + 1, "loss": (sums[0] / sums[2]).item(), "accuracy": (sums[1] / sums[2]).item()}
    sums.zero_()
    if len(split.x_val):
        row["val_loss"], row["val_accuracy"] = loss_and_accuracy(predict_logits(state.eval_model, split.x_val),
                                                                 split.y_val)
    row["lr"] = lr
    row["seconds"] = time.perf_counter() - t0
    state.history.append(row)
    return row


def _watch(state: TrainState, row: dict[str, Any], config: TrainConfig, out: Path, procs: Processes,
           say: Log) -> bool:
    """Keras's ModelCheckpoint(save_best_only) and EarlyStopping on `monitor`; True: stop."""
    if config.monitor not in row:  # no validation set
        return False
    value = row[config.monitor]
    if improved(value, state.best, config.monitor, config.min_delta):
        state.best, state.waited = value, 0
        if procs.is_main:
            save_weights(out / "best.safetensors", state.eval_model, {"epoch": row["epoch"]})
        return False
    state.waited += 1
    if not state.stopped_early(config):
        return False
    by = f" by more than {config.min_delta:g}" if config.min_delta else ""
    say(f"Early stopping: {config.monitor} did not improve{by} for {epochs_text(state.waited)}")
    return True


def _finish(state: TrainState, config: TrainConfig, spec: ModelSpec, split: Split, out: Path, procs: Processes,
            signals: StopSignals, say: Log) -> Run:
    """The final weights, then the test set, once."""
    final = state.eval_model
    procs.barrier()  # rank 0 may still be writing best.safetensors (NCCL's all_reduce does not block the host)
    metrics: dict[str, Any] = {}
    try:
        if config.restore_best and exists(out / "best.safetensors"):
            final = load_weights(out / "best.safetensors").to(split.x_train.device)
            say("Restored the best weights on " + config.monitor)
        recalibration: dict[str, Any] = {}  # metrics.json's record of the BatchNorm statistics' re-estimation
        if should_recalibrate(config.bn_recalibrate, final):  # every rank alike, no collectives: all hold what is saved
            steps, momentum = stalest(final)
            val = procs.is_main and len(split.x_val) > 0  # the validation accuracy before and after, for metrics.json
            before = loss_and_accuracy(predict_logits(final, split.x_val), split.y_val)[1] if val else None
            images = recalibrate(final, split.x_train, config.batch_size)
            recalibration = {"images": images, "steps": steps, "momentum": momentum}
            if val:
                recalibration.update(val_accuracy_before=before,
                                     val_accuracy_after=loss_and_accuracy(predict_logits(final, split.x_val),
                                                                          split.y_val)[1])
            say(f"BatchNorm statistics re-estimated on {images:,} training images (the moving averages had seen "
                f"{steps:,} steps at momentum {momentum:g})")
        if procs.is_main:
            save_weights(out / "model.safetensors", final)
            metrics = evaluate(final, split.x_test, split.y_test, classes=split.classes)
            metrics["epochs_trained"] = len(state.history)
            metrics["train_seconds"] = sum(r["seconds"] for r in state.history)
            metrics["bn_recalibrated"] = bool(recalibration)
            if recalibration:
                metrics["bn_recalibration"] = recalibration
            atomic_write_json(out / "metrics.json", metrics)
            say(f"Test accuracy: {metrics['accuracy'] * 100:.2f}% (loss {metrics['loss']:.4f}) on "
                f"{len(split.y_test)} images; run saved in {out}")
    except KeyboardInterrupt:  # a second Ctrl-C: the training itself is done, and in the last checkpoint
        raise signals.interrupted(f"interrupted during the final evaluation; training had finished: mnist-cnn train "
                                  f"--resume {out} evaluates it", out) from None
    procs.barrier()
    # hand back the model as `load_run` would build it (CPU, its default layout): same predictions, bit for bit
    final.memory_format = default_memory_format(spec)
    final = final.cpu().to(memory_format=final.memory_format).eval()  # type: ignore[call-overload]
    return Run(out, final, config.to_dict(), state.history, metrics, classes=split.classes)


def _config(config: TrainConfig | None, resume: str | Path | None, options: dict[str, Any],
            log: Log) -> tuple[TrainConfig, Checkpoint | None]:
    """The config to train with (and the checkpoint to continue from), as config.json will hold it."""
    checkpoint = None
    if resume is not None:
        config, checkpoint = resumed_config(Path(resume), config, options, log)
    elif config is not None and options:
        raise MnistCnnError(f"give train() a TrainConfig or options ({', '.join(options)}), not both")
    config = config if config is not None else make_config(**options)
    validate(config)
    paths: dict[str, Any] = {k: str(v) for k in ("out", "data") if isinstance(v := getattr(config, k), os.PathLike)}
    return dataclasses.replace(config, **paths), checkpoint


def _out_dir(config: TrainConfig, may_hold_a_run: bool) -> Path:
    out = Path(config.out) if config.out else _default_out(config.model)
    if not may_hold_a_run and (exists(out / "config.json") or exists(out / "checkpoints")):
        where = escape(str(out))
        raise OptionError(f"{where} already holds a run; continue it with {{resume}} {where}, or choose another "
                          "{out}")
    return out


def _default_out(model: str) -> Path:
    """runs/MODEL-YYYYmmdd-HHMMSS, then -2, -3, ... for runs started in the same second."""
    base = Path("runs") / f"{Path(model).stem}-{datetime.now():%Y%m%d-%H%M%S}"
    out, n = base, 1
    while exists(out):
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def _load_data(config: TrainConfig, data: MnistData | None, device: torch.device) -> tuple[TrainConfig, Split]:
    """The whole set as tensors on the device; the config records where the data came from."""
    if data is not None and config.data is None:  # evaluate/report find it again, or refuse rather than test on MNIST
        config = dataclasses.replace(config, data=recorded_source(data))
    data = data if data is not None else load_mnist(config.data)
    if len(data.x_train) == 0:
        raise MnistCnnError(f"{data.source}: holds no training images (a test set alone can evaluate a run, not "
                            "train one)")
    x_all, y_all = data.x_train[:config.limit_train], data.y_train[:config.limit_train]
    try:
        x_tr, y_tr, x_val, y_val = split_validation(x_all, y_all, validation_split=config.validation_split,
                                                    val_size=config.val_size)
    except MnistCnnError as e:  # the split may come from a recipe the user never read: say how to change it
        raise MnistCnnError(f"{e} ({len(x_all):,} training images; a model's recipe may set the split: change it "
                            "with train's --val-size or --validation-split, or val_size / validation_split in a grid "
                            "file or in Python)") from None
    if len(x_tr) == 0:
        raise OptionError("no training images left after {limit_train} and the validation split")
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    x_tr = to_float(x_tr).to(device).contiguous(memory_format=memory_format)
    return config, Split(x_tr, y_tr.to(device), x_val, y_val, data.x_test[:config.limit_test],
                         data.y_test[:config.limit_test], data.classes)


def _start(config: TrainConfig, checkpoint: Checkpoint | None) -> tuple[TrainConfig, SpecModel | None]:
    """The model `init_from` names, whose architecture the config then trains (None without one, or once a
    checkpoint holds the weights)."""
    if config.init_from is None or checkpoint is not None:
        return config, None
    from ..sources import open_model  # a run, its weights file or a Keras file: the one way to open a model

    model = open_model(config.init_from).model
    if not isinstance(model, SpecModel):
        raise OptionError(f"{{init_from}} {escape(config.init_from)} holds {type(model).__name__}: expected one "
                          "model (a run, its weights file or a Keras file)")
    if config.model_options:
        raise OptionError("{init_from} trains the architecture it holds: give it or model options, not both")
    return dataclasses.replace(config, model=model.spec.name, spec=model.spec.to_dict()), model


def _spec(config: TrainConfig, checkpoint: Checkpoint | None, out: Path, num_classes: int) -> ModelSpec:
    # a resumed run keeps the architecture its checkpoint holds, whatever its spec file now says (or wherever it is)
    if checkpoint:
        return parse_spec(checkpoint[1]["spec"], str(out / "checkpoints"))
    return config.model_spec(num_classes)


def _quiet(message: str) -> None:
    """The log of a process that does not print (not rank 0, or verbose=0)."""
