"""Training: the config, then the loop in plain sight (nanoGPT style), with Keras's vocabulary.

Speed comes from keeping the whole data set as one tensor on the device and slicing batches from a
permutation (no DataLoader, no per-sample Python), augmenting whole batches at once, and syncing with
the host once per epoch. Every random draw of step k is a function of (seed, k), so a run resumed from
a checkpoint at step k continues bit for bit where the uninterrupted run would have been.
Under `torchrun`, each process takes its shard of every global batch and DistributedDataParallel
averages the gradients (gloo on CPU, NCCL on GPU); only rank 0 writes files and prints.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import reprlib
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .atomic import atomic_write_json, make_dir
from .augment import Augment, affine_matrices, apply_affine
from .data import MnistData, load_mnist, recorded_path, split_validation, to_float
from .documents import read_document
from .errors import MnistCnnError, TrainingInterrupted
from .evaluate import evaluate, loss_and_accuracy, predict_logits
from .models import build_model, default_memory_format
from .optim import DEFAULT_LR, EMA, SCHEDULES, decay_weights, improved, learning_rate, make_optimizer, plateau_lr
from .runs import (Run, has_trained, latest_checkpoint, load_weights, read_json, remove_run_files,
                   save_checkpoint, save_weights, write_history)
from .spec import parse_spec
from .zoo import RECIPES, get_spec, recipe_for


@dataclass
class TrainConfig:
    """Every training option; named models and recipes fill these, explicit values win."""

    model: str = "keras-basic"
    model_options: dict[str, Any] = field(default_factory=dict)
    recipe: str | None = None
    data: str | None = None
    epochs: int = 5
    batch_size: int = 64
    optimizer: str = "rmsprop"
    lr: float | None = None                # None: Keras's default for the optimiser
    seed: int = 0
    validation_split: float | None = None  # Keras: the last fraction of the training data
    val_size: int | None = None            # or an explicit count, e.g. 5000 for the 55,000/5,000 split
    limit_train: int | None = None
    limit_test: int | None = None
    out: str | None = None
    augment: dict[str, float] | None = None
    schedule: str = "constant"
    lr_decay: float = 0.95                 # per-epoch factor of the "exponential" schedule
    lr_factor: float = 0.1                 # the "plateau" schedule (Keras's ReduceLROnPlateau on `monitor`, with its
    lr_patience: int = 10                  # defaults): lr *= lr_factor after lr_patience epochs without an
    lr_min_delta: float = 1e-4             # improvement larger than lr_min_delta, never below min_lr; as in Keras,
    lr_cooldown: int = 0                   # the lr_cooldown - 1 epochs after a drop are not counted
    min_lr: float = 0.0
    label_smoothing: float = 0.0
    weight_decay: float = 0.0
    ema: float | None = None               # decay of the weight average used for evaluation, e.g. 0.999
    early_stopping: int | None = None      # patience in epochs, on `monitor`
    monitor: str = "val_loss"
    min_delta: float = 0.0                 # Keras's EarlyStopping min_delta: smaller changes are no improvement
    restore_best: bool = False             # end with the best weights on `monitor` (Keras's restore_best_weights)
    precision: str = "auto"                # "bf16": autocast convs/matmuls to bfloat16; auto = bf16 where the
                                           # hardware has it (AVX-512 BF16, CUDA), measured no loss of accuracy
    channels_last: bool = True
    cuda_graph: bool = True                # on one CUDA device, replay each full batch's forward and backward as
                                           # one CUDA graph (keras-basic on an H100: 0.34 against 2.94 ms a step)
    threads: int | None = None             # None: every core (divided among local torchrun processes)
    device: str = "auto"
    checkpoint_every: int | None = None    # also checkpoint every N steps, not only at epoch ends
    verbose: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig))
# where a run trains, not what it trains: a resume may move it (a GPU run finished on a laptop, say)
_PLACEMENT = ("device", "threads", "cuda_graph")


def make_config(model: str | None = None, recipe: str | os.PathLike | None = None, **overrides: Any) -> TrainConfig:
    """Defaults <- the model's tutorial recipe <- the named recipe or recipe file <- explicit values (None = not
    given)."""
    named = _recipe_values(recipe)
    recipe = None if recipe is None else str(recipe)
    if model is not None and named.get("model") not in (None, model):  # a recipe is tuned for its own model
        raise MnistCnnError(f"--recipe {recipe} trains {named['model']}; give --recipe or --model {model}, not both")
    model = model or named.pop("model", None) or TrainConfig.model
    named.pop("model", None)
    if not isinstance(model, (str, os.PathLike)):
        raise MnistCnnError(f"model must be a name or a spec file's path, got {reprlib.repr(model)} (to train a spec "
                            "built in Python, write spec.to_dict() to a .json file and give its path)")
    given = {k: _plain(v) for k, v in overrides.items() if v is not None}
    if isinstance(given.get("data"), (str, os.PathLike)):  # the run records where its data is from anywhere
        given["data"] = recorded_path(given["data"])
    values = {**recipe_for(model), **named, **given}
    for one, other in (("validation_split", "val_size"), ("val_size", "validation_split")):
        if one in given and other not in given:  # the user's way of splitting replaces the recipe's
            values.pop(other, None)
    unknown = sorted(set(values) - _FIELDS)
    if unknown:
        raise MnistCnnError(f"unknown training option {unknown[0]!r}")
    config = TrainConfig(model=str(model), recipe=recipe, **values)
    validate(config)
    return config


RECIPE_FILE_BUDGET = 1 << 20  # bytes: a recipe is a few dozen settings


def _recipe_values(recipe: str | os.PathLike | None) -> dict[str, Any]:
    """A named recipe's settings, or those of a recipe file (.toml/.json/.yaml: any training option but out, e.g.
    the best_recipe.json that `mnist-cnn tune` writes)."""
    if recipe is None or str(recipe) in RECIPES:
        return dict(RECIPES.get(str(recipe), {}))
    path = Path(recipe)
    if path.suffix.lower() not in (".toml", ".json", ".yaml", ".yml"):
        raise MnistCnnError(f"unknown recipe {str(recipe)!r}: expected one of {', '.join(RECIPES)}, or a "
                            ".toml/.json/.yaml recipe file")
    if path.is_file() and path.stat().st_size > RECIPE_FILE_BUDGET:
        raise MnistCnnError(f"{path}: a recipe file of {path.stat().st_size:,} bytes; expected at most "
                            f"{RECIPE_FILE_BUDGET:,}")
    values = read_document(path, "recipe")
    if not isinstance(values, dict):
        raise MnistCnnError(f"{path}: a recipe must be a table of training options, got {type(values).__name__}")
    unknown = sorted(set(values) - (_FIELDS - {"recipe", "out"}))
    if unknown:
        raise MnistCnnError(f"{path}: {unknown[0]!r} is not a training option a recipe may set")
    return values


def _plain(value: Any) -> Any:
    """numpy's scalars (from a sweep over np.arange, say) as the Python numbers config.json holds."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return float(value) if isinstance(value, numbers.Real) and not isinstance(value, (int, float)) else value


def validate(c: TrainConfig) -> None:
    """Options are checked here, at the boundary, with the bad value in the message."""
    def need(ok: bool, what: str, value: Any) -> None:
        if not ok:
            raise MnistCnnError(f"{what}, got {value!r}")

    def number(value: Any) -> bool:  # config.json and grid files can hold any JSON: compare numbers only
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    def whole(value: Any) -> bool:  # True is an int to Python, not a count to a user
        return isinstance(value, int) and not isinstance(value, bool)

    need(whole(c.epochs) and c.epochs >= 1, "--epochs must be a positive integer", c.epochs)
    need(whole(c.batch_size) and c.batch_size >= 1, "--batch-size must be a positive integer", c.batch_size)
    need(c.optimizer in DEFAULT_LR, f"--optimizer must be one of {', '.join(DEFAULT_LR)}", c.optimizer)
    need(c.lr is None or (isinstance(c.lr, (int, float)) and 0 < c.lr < 10), "--lr must be in (0, 10)", c.lr)
    need(whole(c.seed) and 0 <= c.seed < 2**32, "--seed must be an integer from 0 to 2**32 - 1", c.seed)
    need(c.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}", c.schedule)
    need(number(c.lr_decay) and 0 < c.lr_decay <= 1, "--lr-decay must be in (0, 1]", c.lr_decay)
    need(number(c.lr_factor) and 0 < c.lr_factor < 1, "--lr-factor must be in (0, 1)", c.lr_factor)
    for name in ("lr_patience", "lr_cooldown"):
        need(whole(getattr(c, name)) and getattr(c, name) >= 0, f"--{name.replace('_', '-')} must be a whole number "
             ">= 0", getattr(c, name))
    for name in ("min_delta", "lr_min_delta", "min_lr"):
        need(number(getattr(c, name)) and 0 <= getattr(c, name) < math.inf, f"--{name.replace('_', '-')} must be a "
             "finite number >= 0", getattr(c, name))
    need(number(c.label_smoothing) and 0 <= c.label_smoothing < 1, "--label-smoothing must be in [0, 1)",
         c.label_smoothing)
    need(number(c.weight_decay) and 0 <= c.weight_decay < 1, "--weight-decay must be in [0, 1)", c.weight_decay)
    need(c.ema is None or (number(c.ema) and 0 < c.ema < 1), "--ema must be in (0, 1)", c.ema)
    need(c.early_stopping is None or (whole(c.early_stopping) and c.early_stopping >= 1),
         "--early-stopping must be a positive patience", c.early_stopping)
    need(isinstance(c.model, str) and isinstance(c.model_options, dict), "--model must be a name or a spec file "
         "(with a dict of model options)", (c.model, c.model_options))
    need(c.monitor in ("val_loss", "val_accuracy"), "--monitor must be val_loss or val_accuracy", c.monitor)
    need(c.precision in ("auto", "fp32", "bf16"), "--precision must be auto, fp32 or bf16", c.precision)
    need(isinstance(c.device, str) and (c.device in ("auto", "cpu", "cuda") or c.device.startswith("cuda:")),
         "--device must be auto, cpu or cuda", c.device)
    for name in ("limit_train", "limit_test", "checkpoint_every", "threads"):
        value = getattr(c, name)
        need(value is None or (whole(value) and value >= 1),
             f"--{name.replace('_', '-')} must be a positive integer", value)
    need(c.threads is None or c.threads <= 1024, "--threads must be at most 1024", c.threads)
    # their range depends on the data: split_validation checks it
    need(c.validation_split is None or number(c.validation_split), "--validation-split must be a fraction in [0, 1)",
         c.validation_split)
    need(c.val_size is None or whole(c.val_size), "--val-size must be a whole number", c.val_size)
    need(c.out is None or isinstance(c.out, (str, os.PathLike)), "--out must be a folder's path", c.out)
    watchers = [flag for flag, on in (("--early-stopping", c.early_stopping), ("--restore-best", c.restore_best),
                                      ("--schedule plateau", c.schedule == "plateau")) if on]
    if watchers and not (c.validation_split or c.val_size):
        raise MnistCnnError(f"{watchers[0]} needs a validation set: add --validation-split or --val-size")
    if c.augment:
        Augment.from_dict(c.augment)


def _device(name: str, local_world: int = 1) -> torch.device:
    """The device to train on; under torchrun, each of the node's `local_world` processes needs a GPU of its own."""
    if name == "auto":  # too few GPUs for one each (NCCL refuses to share one): the processes share the CPU
        return torch.device("cuda" if torch.cuda.is_available() and torch.cuda.device_count() >= local_world
                            else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MnistCnnError(f"--device {name}: no CUDA device is available here")
        if local_world > torch.cuda.device_count():
            raise MnistCnnError(f"--device {name}: {local_world} processes on this machine but "
                                f"{torch.cuda.device_count()} CUDA device(s); NCCL needs one per process (start fewer, "
                                "or use --device cpu)")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MnistCnnError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise MnistCnnError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def _use_bf16(precision: str, device: torch.device) -> bool:
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":  # native from Ampere on; is_bf16_supported() also says yes where it is emulated
        return torch.cuda.get_device_capability(device)[0] >= 8
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step) * 64 + rank


def _seed_dropout(device: torch.device, seed: int) -> None:
    # seed only the generator dropout draws from: torch.manual_seed visits every backend, ~100 us a step against 1
    # (speed_ladder.py --data-ops); a CUDA graph reads the seed this sets each time it is replayed
    if device.type == "cpu":
        torch.default_generator.manual_seed(seed)
    else:
        torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()] \
            .manual_seed(seed)


class _StepGraph:
    """Runs `forward_backward(idx, theta)` for full batches as a CUDA graph: its ~80 kernels in one launch, since
    an eager step of these small models spends its time launching them (benchmarks/cuda_step.py profile: 975 ms
    of host time against 70 ms of GPU time for 200 keras-basic steps).

    The first steps run eagerly on a side stream (cuDNN and cuBLAS set up there), the next is captured and replayed.
    The graph's gradients live in its own memory, so they are zeroed (never set to None) around eager steps."""

    def __init__(self, forward_backward: Callable[..., None], optimizer: torch.optim.Optimizer, idx: torch.Tensor,
                 theta: torch.Tensor | None, warmup: int = 3):
        self.forward_backward, self.optimizer, self.warmup = forward_backward, optimizer, warmup
        self.idx, self.theta = idx.clone(), None if theta is None else theta.clone()  # the graph's inputs
        self.graph: torch.cuda.CUDAGraph | None = None

    def fits(self, idx: torch.Tensor) -> bool:
        return idx.shape == self.idx.shape

    def run(self, idx: torch.Tensor, theta: torch.Tensor | None) -> None:
        self.idx.copy_(idx)
        if self.theta is not None:
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


def _default_out(model: str) -> Path:
    """runs/MODEL-YYYYmmdd-HHMMSS, then -2, -3, ... for runs started in the same second."""
    base = Path("runs") / f"{Path(model).stem}-{datetime.now():%Y%m%d-%H%M%S}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    parts = [f"Epoch {row['epoch']}/{epochs}", f"{row['seconds']:.1f}s"]
    parts += [f"{k}: {row[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in row]
    return " - ".join(parts) + f" - lr: {row['lr']:.2e}"


def _progress(step: int, steps: int, start: float, loss: torch.Tensor, acc: torch.Tensor) -> None:
    done = int(30 * step / steps)
    bar = "=" * done + (">" if done < 30 else "") + "." * (29 - done)
    sys.stdout.write(f"\r{step}/{steps} [{bar}] - {time.perf_counter() - start:.0f}s - loss: {loss.item():.4f}"
                     f" - accuracy: {acc.item():.4f}")
    sys.stdout.flush()


class _StopRequested(Exception):
    """A stop signal arrived; raised between two steps."""


def _stop_between_steps(enabled: bool) -> tuple[list[int], Callable[[], None]]:
    """While training, SIGINT and SIGTERM only note themselves (in the returned list); a second one interrupts at
    once. Off under torchrun: ranks would see the signal at different steps, so they keep the default behaviour
    and resume from the newest regular checkpoint. Returns the list and a function that restores the handlers."""
    received: list[int] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        return received, lambda: None

    def note(signum: int, frame: object) -> None:
        received.append(signum)
        if len(received) > 1:
            raise KeyboardInterrupt

    previous = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
    return received, lambda: [signal.signal(s, handler) for s, handler in previous.items()]


def _epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def train(config: TrainConfig | None = None, data: MnistData | None = None, *, resume: str | Path | None = None,
          overwrite: bool = False, log: Callable[[str], None] = print,
          on_epoch: Callable[[dict[str, Any]], None] | None = None) -> Run:
    """Train a model (like Keras's fit), write its run directory, evaluate once on the test set.

    A run directory that already holds a run is refused unless `overwrite`, which first removes that run's files.
    `resume` continues the run saved there with its own settings; from `config` it takes only the number of
    epochs, and the device, threads and cuda_graph where they are not the defaults.
    Ctrl-C or a scheduler's SIGTERM ends the step first, so the checkpoint it leaves is consistent; one that comes
    during the final evaluation lets it finish.
    `on_epoch(row)` sees each epoch's history row once it is checkpointed; an exception it raises stops training
    there and leaves the run resumable (a tuner prunes a poor trial so).
    """
    stop_requested, restore_signals = _stop_between_steps(enabled=int(os.environ.get("WORLD_SIZE", "1")) == 1)
    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=[]):  # training seeds torch's generator; the caller's is left as it was
            return _train(config, data, resume, overwrite, log, stop_requested, on_epoch)
    finally:
        restore_signals()
        torch.set_num_threads(threads)  # and so is the caller's thread count


def _train(config: TrainConfig | None, data: MnistData | None, resume: str | Path | None, overwrite: bool,
           log: Callable[[str], None], stop_requested: list[int],
           on_epoch: Callable[[dict[str, Any]], None] | None = None) -> Run:
    checkpoint: tuple[dict, dict] | None = None
    if resume is not None:
        out = Path(resume)
        if not (out / "config.json").exists():
            raise MnistCnnError(f"cannot resume {out}: no config.json there (is it a run directory?)")
        saved = read_json(out / "config.json", {})
        unknown = sorted(set(saved) - _FIELDS)
        if unknown:
            raise MnistCnnError(f"cannot resume {out}: {out / 'config.json'} has unknown option {unknown[0]!r}")
        if not isinstance(saved.get("model"), str):  # train writes every field; {} would train all the defaults
            raise MnistCnnError(f"cannot resume {out}: {out / 'config.json'} names no model (is it a run's?)")
        moved = {k: getattr(config, k) for k in _PLACEMENT if config and getattr(config, k) != getattr(TrainConfig, k)}
        saved = TrainConfig(**{**saved, "out": str(out), **({"epochs": config.epochs} if config else {}), **moved})
        # stopped before its first checkpoint (killed while loading, say): nothing was trained, it starts at step 0
        config, checkpoint = saved, latest_checkpoint(out, warn=log) if has_trained(out) else None
    config = config or make_config()
    validate(config)
    paths = {k: str(v) for k in ("out", "data") if isinstance(v := getattr(config, k), os.PathLike)}
    config = dataclasses.replace(config, **paths)  # as config.json holds them
    out = Path(config.out) if config.out else _default_out(config.model)
    if resume is None and not overwrite and ((out / "config.json").exists() or (out / "checkpoints").exists()):
        raise MnistCnnError(f"{out} already holds a run; continue it with --resume {out}, or choose another --out")

    # ---- processes, threads, device ----
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    device = _device(config.device, local_world)
    if world > 1:
        import torch.distributed as dist

        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if not config.out:  # each rank named the run from its own clock: rank 0's name is the run's
            names = [str(out)]
            dist.broadcast_object_list(names, src=0)
            out = Path(names[0])
    torch.set_num_threads(config.threads or max(1, (os.cpu_count() or 1) // local_world))
    is_main = rank == 0
    say = log if is_main and config.verbose else (lambda _msg: None)

    # ---- data: the whole set as tensors on the device ----
    if data is not None and config.data is None and data.source != "bundled":  # evaluate/report find it again,
        known = data.source and Path(data.source).exists()  # or refuse instead of testing on the bundled MNIST
        config = dataclasses.replace(config, data=recorded_path(data.source) if known else
                                     f"(data given in memory, source {data.source!r})")
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
    x_test, y_test = data.x_test[:config.limit_test], data.y_test[:config.limit_test]
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    x_tr = to_float(x_tr).to(device).contiguous(memory_format=memory_format)
    y_tr = y_tr.to(device)
    n = len(x_tr)
    if n == 0:
        raise MnistCnnError("no training images left after --limit-train and the validation split")

    # ---- model, optimiser, state ----
    # a resumed run keeps the architecture its checkpoint holds, whatever its spec file now says (or wherever it is)
    spec = (parse_spec(checkpoint[1]["spec"], str(out / "checkpoints")) if checkpoint is not None
            else get_spec(config.model, **config.model_options))
    if spec.num_classes != data.num_classes:
        raise MnistCnnError(f"model {config.model}: its last layer gives {spec.num_classes} class scores, but the "
                            f"data has {data.num_classes} classes")
    torch.manual_seed(config.seed)  # the initial weights
    model = build_model(spec).to(device, memory_format=memory_format)
    model.memory_format = memory_format
    optimizer = make_optimizer(config.optimizer, model.parameters(), config.lr)
    base_lr = optimizer.param_groups[0]["lr"]
    ema = EMA(model, config.ema) if config.ema else None
    augment = Augment.from_dict(config.augment) if config.augment else None
    if n < world:
        raise MnistCnnError(f"{n} training image(s) for {world} processes: each process needs at least one")
    steps_per_epoch = -(-n // config.batch_size)
    if world > 1 and 0 < n % config.batch_size < world:  # some process would get no image of the last batch
        steps_per_epoch -= 1  # (a NaN loss, or batch norm fails on it): leave it out, as a DataLoader's drop_last
        say(f"The last {n % config.batch_size} image(s) of each epoch's order are left out: a batch smaller than the "
            f"{world} processes would leave one of them without images")
    total_steps = steps_per_epoch * config.epochs
    history: list[dict[str, Any]] = []
    step, best, waited, stop = 0, None, 0, False
    sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss sum, correct, seen in this epoch
    if checkpoint is not None:
        tensors, meta = checkpoint
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if ema:
            ema.model.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
        _match_parameter_layouts(optimizer)
        # rank 0 carries the epoch's running sums for every rank (checkpoint_now all-reduces them)
        sums = tensors["sums"].to(device) if is_main else torch.zeros_like(sums)
        step, history, best, waited = meta["step"], meta["history"], meta["best"], meta["waited"]
        stop = bool(config.early_stopping and waited >= config.early_stopping)  # it had stopped early
        if stop:  # no --epochs undoes early stopping, and config.json keeps the length it was given
            config = dataclasses.replace(config, epochs=meta["config"]["epochs"])
            total_steps = steps_per_epoch * config.epochs
        if step > total_steps:
            raise MnistCnnError(f"cannot resume {out} with --epochs {config.epochs}: it has already trained "
                                f"{_epochs(step // steps_per_epoch)}")
        if stop:
            say(f"{out} stopped early after {_epochs(len(history))} ({config.monitor} did not improve for "
                f"{_epochs(waited)}); evaluating it again")
        elif step == total_steps:
            say(f"{out} had finished training ({_epochs(len(history))}); evaluating it again "
                f"(a larger --epochs trains it further)")
        else:
            say(f"Resuming {out} at step {step} (epoch {step // steps_per_epoch + 1}, "
                f"batch {step % steps_per_epoch}/{steps_per_epoch})")
    elif resume is not None:
        say(f"{out} stopped before its first checkpoint: training it from the beginning")
    train_model = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model)
    if is_main:
        if overwrite and resume is None:  # none of the old run may mix with the new one: checkpoints, best, model
            remove_run_files(out)
        make_dir(out, "run directory")
        atomic_write_json(out / "config.json", config.to_dict())
        atomic_write_json(out / "spec.json", spec.to_dict())

    def state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        if ema:
            tensors.update({f"ema.{k}": v for k, v in ema.model.state_dict().items()})
        opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
        tensors.update(opt_tensors, sums=sums)
        return tensors, {"step": step, "history": history, "best": best, "waited": waited,
                         "optimizer": opt_meta, "config": config.to_dict(), "spec": spec.to_dict()}

    def checkpoint_now() -> None:
        tensors, meta = state()
        if world > 1:  # every rank reaches each checkpoint at the same step, so a collective is safe here
            tensors["sums"] = sums.clone()
            torch.distributed.all_reduce(tensors["sums"])
        if is_main:
            save_checkpoint(out, step, tensors, meta)

    def plateau(rows: list[dict[str, Any]]) -> float:  # replayed over the finished epochs: a resume agrees
        return plateau_lr(base_lr, [r[config.monitor] for r in rows], config.monitor, config.lr_factor,
                          config.lr_patience, config.lr_min_delta, config.lr_cooldown, config.min_lr)

    bf16 = _use_bf16(config.precision, device)
    graphed = config.cuda_graph and device.type == "cuda" and world == 1
    say(f"Training {spec.name} on {n} images ({len(x_val)} validation) for {_epochs(config.epochs)}, "
        f"batch {config.batch_size}, {config.optimizer} lr {base_lr:g}, {world} process(es) on {device}"
        f"{', bf16 autocast' if bf16 else ''}{', CUDA graph' if graphed else ''}")
    show_bar = is_main and config.verbose and sys.stdout.isatty()
    # a graph captures the casts of the weights: autocast's cache would keep them from one capture
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=not graphed)
    step_graph: _StepGraph | None = None

    def forward_backward(idx: torch.Tensor, theta: torch.Tensor | None, share: float = 1.0) -> None:
        """One batch's gradients, and its loss and hits added to the epoch's sums, with no host sync."""
        xb, yb = x_tr[idx], y_tr[idx]
        if theta is not None:
            xb = apply_affine(xb, theta).contiguous(memory_format=memory_format)
        with autocast:
            logits = train_model(xb)
        loss = F.cross_entropy(logits.float(), yb, label_smoothing=config.label_smoothing)
        # DDP averages the processes' gradients: weigh each one's mean by its share of the batch, so that an
        # uneven split (a last batch of 14 images on 3 processes) is still the whole batch's mean
        (loss * share if share != 1.0 else loss).backward()
        with torch.no_grad():  # accumulate on the device: no host sync and no host-to-device copy per step
            sums[:2] += torch.stack([loss.detach().double() * len(yb), (logits.argmax(1) == yb).sum().double()])
            sums[2] += len(yb)

    bar_open = False  # the progress bar's line is not ended yet

    def interrupted(message: str) -> TrainingInterrupted:  # exits with the status of the signal (a second one's)
        return TrainingInterrupted(message, stop_requested[-1] if stop_requested else signal.SIGINT, str(out))

    try:
        while step < total_steps and not stop:
            epoch = step // steps_per_epoch
            # the epoch's order and augmentations are a pure function of (seed, epoch): a resumed run re-derives them
            epoch_gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
            perm = torch.randperm(n, generator=epoch_gen).to(device)
            # one transform per place in the epoch, drawn at once: 1.5 us a batch against 84 (speed_ladder --data-ops)
            thetas = affine_matrices(n, augment, epoch_gen).to(device) if augment and not augment.is_identity else None
            epoch_lr = plateau(history) if config.schedule == "plateau" else None
            model.train()
            t0 = time.perf_counter()
            for i in range(step % steps_per_epoch, steps_per_epoch):
                batch = slice(i * config.batch_size, (i + 1) * config.batch_size)
                rows = perm[batch]
                idx = rows[rank::world]
                theta = thetas[batch][rank::world] if thetas is not None else None
                _seed_dropout(device, _step_seed(config.seed, step, rank))
                lr = epoch_lr if epoch_lr is not None else learning_rate(config.schedule, base_lr, step,
                                                                          steps_per_epoch, total_steps, config.lr_decay)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if graphed and step_graph is None and len(rows) == config.batch_size:
                    step_graph = _StepGraph(forward_backward, optimizer, idx, theta)
                if step_graph is not None and step_graph.fits(idx):
                    step_graph.run(idx, theta)
                else:  # every step when not graphed; when graphed, the last, smaller batch of an epoch
                    optimizer.zero_grad(set_to_none=step_graph is None)
                    forward_backward(idx, theta, len(idx) * world / len(rows))
                if config.weight_decay:
                    decay_weights(optimizer, config.weight_decay)
                optimizer.step()
                if ema:
                    ema.update(model)
                step += 1
                if show_bar and (i % 20 == 0 or i == steps_per_epoch - 1):
                    _progress(i + 1, steps_per_epoch, t0, sums[0] / sums[2], sums[1] / sums[2])
                    bar_open = True
                if config.checkpoint_every and step % config.checkpoint_every == 0 and step % steps_per_epoch:
                    checkpoint_now()
                if stop_requested and step % steps_per_epoch:  # at an epoch's end, stop after its row is written
                    checkpoint_now()
                    raise _StopRequested
            if bar_open:
                sys.stdout.write("\n")
                bar_open = False
            if world > 1:
                torch.distributed.all_reduce(sums)
            row = {"epoch": epoch + 1, "loss": (sums[0] / sums[2]).item(), "accuracy": (sums[1] / sums[2]).item()}
            sums.zero_()
            eval_model = ema.model if ema else model
            if len(x_val):
                row["val_loss"], row["val_accuracy"] = loss_and_accuracy(predict_logits(eval_model, x_val), y_val)
            row["lr"] = lr
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            say(_epoch_line(row, config.epochs))
            if epoch_lr is not None and (next_lr := plateau(history)) < epoch_lr:
                say(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {next_lr:g}")
            if len(x_val):
                value = row[config.monitor]
                if improved(value, best, config.monitor, config.min_delta):
                    best, waited = value, 0
                    if is_main:
                        save_weights(out / "best.safetensors", eval_model, {"epoch": epoch + 1})
                else:
                    waited += 1
                    if config.early_stopping and waited >= config.early_stopping:
                        by = f" by more than {config.min_delta:g}" if config.min_delta else ""
                        say(f"Early stopping: {config.monitor} did not improve{by} for {_epochs(waited)}")
                        stop = True
            if is_main:
                write_history(out, history)
            checkpoint_now()
            if on_epoch is not None:
                on_epoch(dict(row))
            if stop_requested and step < total_steps and not stop:
                raise _StopRequested
    except (_StopRequested, KeyboardInterrupt) as e:
        if bar_open:  # the message goes on a line of its own, not after the bar
            sys.stdout.write("\n")
        if isinstance(e, KeyboardInterrupt):  # mid-step, so no checkpoint now: the newest one on disk is consistent
            raise interrupted(f"interrupted during step {step}; continue from the newest checkpoint in "
                              f"{out / 'checkpoints'} with: mnist-cnn train --resume {out}") from None
        raise interrupted(f"interrupted at step {step}; checkpoint saved in {out / 'checkpoints'}; "
                          f"continue with: mnist-cnn train --resume {out}") from None

    # ---- final weights, then the test set, once ----
    final = ema.model if ema else model
    if world > 1:  # rank 0 may still be writing best.safetensors (NCCL's all_reduce does not block the host)
        torch.distributed.barrier()
    metrics = {}
    try:
        if config.restore_best and (out / "best.safetensors").exists():
            final = load_weights(out / "best.safetensors").to(device)
            say("Restored the best weights on " + config.monitor)
        if is_main:
            save_weights(out / "model.safetensors", final)
            metrics = evaluate(final, x_test, y_test)
            metrics["epochs_trained"] = len(history)
            metrics["train_seconds"] = sum(r["seconds"] for r in history)
            atomic_write_json(out / "metrics.json", metrics)
            say(f"Test accuracy: {metrics['accuracy'] * 100:.2f}% (loss {metrics['loss']:.4f}) on {len(y_test)} "
                f"images; run saved in {out}")
    except KeyboardInterrupt:  # a second Ctrl-C: the training itself is done, and in the last checkpoint
        raise interrupted(f"interrupted during the final evaluation; training had finished: mnist-cnn train "
                          f"--resume {out} evaluates it") from None
    if world > 1:
        torch.distributed.barrier()
    # hand back the model as `load_run` would build it (CPU, its default layout): same predictions, bit for bit
    final.memory_format = default_memory_format(spec)
    final = final.cpu().to(memory_format=final.memory_format).eval()
    return Run(out, final, config.to_dict(), history, metrics)


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


def _match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give loaded optimiser state its parameter's memory layout (checkpoints store it contiguous): a fused Adam
    step on channels-last kernels with contiguous moments mixes up elements on the CPU and refuses on CUDA."""
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
