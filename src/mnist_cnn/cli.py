"""The command line: a thin layer over the Python API. Every command is also a function you can import.

A user's mistake prints one line, `error: ...`, and exits with status 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, TextIO

from .errors import MnistCnnError, TrainingInterrupted

COMMANDS: dict[str, Callable[[argparse.Namespace], Any]] = {}


def command(fn: Callable[[argparse.Namespace], Any]) -> Callable[[argparse.Namespace], Any]:
    COMMANDS[fn.__name__.removeprefix("cmd_")] = fn
    return fn


def _print_json(obj: Any) -> None:
    print(json.dumps(_finite(obj), default=str, allow_nan=False))


def _finite(obj: Any) -> Any:
    """NaN and infinity as null: strict JSON parsers (JavaScript's, for one) refuse the bare words."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


@command
def cmd_models(args: argparse.Namespace) -> None:
    from .models import count_params
    from .zoo import MODELS, RECIPES, get_spec

    rows = [{"name": name, "params": count_params(get_spec(name))[0], "tutorial_accuracy": e.tutorial_accuracy,
             "recipe": e.recipe, "description": e.description, "options": list(e.options)}
            for name, e in MODELS.items()]
    if args.json:
        return _print_json(rows)

    def settings(recipe: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v}" if k != "augment" else "augment " + " ".join(f"{a} {b:g}" for a, b in v.items())
                         for k, v in recipe.items())

    width = max(len(r["tutorial_accuracy"]) for r in rows)
    for r in rows:
        tutorial = r["tutorial_accuracy"]
        print(f"{r['name']:<14} {r['params']:>9,} params  tutorial {tutorial:<{width}}  {settings(r['recipe'])}")
        options = ", ".join(_OPTION_FLAGS[o] for o in r["options"])
        print(f"{'':<14} {r['description']}" + (f" (options: {options})" if options else ""))
    print("\nrecipes (train --recipe NAME; each model's name is also the recipe above):")
    for name, recipe in RECIPES.items():
        if name not in MODELS:
            print(f"  {name:<12} {settings(recipe)}")


@command
def cmd_summary(args: argparse.Namespace) -> None:
    from .models import count_params, layer_table, summary
    from .zoo import get_spec

    spec = get_spec(args.model, **_model_options(args))
    if args.json:
        total, trainable, fixed = count_params(spec)
        return _print_json({"name": spec.name, "layers": layer_table(spec), "total": total,
                            "trainable": trainable, "non_trainable": fixed})
    print(summary(spec))


def _model_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {}
    for name in ("kernel_size", "filters"):
        if getattr(args, name, None) is not None:
            options[name] = getattr(args, name)
    if getattr(args, "no_dropout", False):
        options["dropout"] = False
    return options


_PLACEMENT = ("device", "threads", "no_cuda_graph")  # train._PLACEMENT as flags
_PLATEAU = ("lr_factor", "lr_patience", "lr_min_delta", "lr_cooldown", "min_lr")
_TRAIN_SETTINGS = ("model", "recipe", "kernel_size", "filters", "no_dropout", "data", "batch_size", "optimizer", "lr",
                   "seed", "validation_split", "val_size", "limit_train", "limit_test", "out", "rotation", "shift",
                   "shear", "zoom", "schedule", "lr_decay", *_PLATEAU, "label_smoothing", "weight_decay", "ema",
                   "early_stopping", "min_delta", "monitor", "restore_best", "precision", "threads", "device",
                   "no_channels_last", "no_cuda_graph", "checkpoint_every")


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    """The flags among `names` that the user gave, as typed (a store_true flag counts when set)."""
    # `is`, not `in (None, False)`: 0 == False, and --seed 0 is a given setting
    return [f"--{name.replace('_', '-')}" for name in names if (value := getattr(args, name)) is not None
            and value is not False]


def _refuse_unused(args: argparse.Namespace, config: Any) -> None:
    """Flags that the rest of the settings make do nothing are refused, not ignored (a grid or Python may set such
    values: they are harmless there)."""
    for schedule, flags, what in (("exponential", ("lr_decay",), "is the exponential schedule's factor per epoch"),
                                  ("plateau", _PLATEAU, "sets the plateau schedule (Keras's ReduceLROnPlateau)")):
        given = _given(args, flags)
        if given and config.schedule != schedule:
            raise MnistCnnError(f"{given[0]} {what}; this run's schedule is {config.schedule}: "
                                f"add --schedule {schedule}")
    watching = config.early_stopping or config.restore_best
    if args.min_delta and not watching:
        plateau_own = " (the plateau schedule's is --lr-min-delta)" if config.schedule == "plateau" else ""
        raise MnistCnnError(f"--min-delta is for --early-stopping and --restore-best{plateau_own}; give one of them")
    if args.monitor and not (watching or config.schedule == "plateau"):
        raise MnistCnnError("--monitor is for --early-stopping, --restore-best and --schedule plateau; "
                            "give one of them")


def _log_to(stream: TextIO) -> Callable[[str], None]:
    """print to `stream`; once its reader has gone (`mnist-cnn train | head`), keep training and print nothing."""
    def log(message: str) -> None:
        try:
            print(message, file=stream, flush=True)
        except BrokenPipeError:
            _silence(stream)

    return log


def _silence(stream: TextIO) -> None:
    """Point `stream` at /dev/null, so that later writes and the flush at exit cannot fail again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


@command
def cmd_train(args: argparse.Namespace) -> None:
    from .runs import read_json
    from .train import make_config, train

    augment = None
    if any(getattr(args, k) is not None for k in ("rotation", "shift", "shear", "zoom")):
        augment = {"rotation": args.rotation or 0, "width_shift": args.shift or 0, "height_shift": args.shift or 0,
                   "shear": args.shear or 0, "zoom": args.zoom or 0}
    log = _log_to(sys.stderr if args.json else sys.stdout)
    cuda_graph = False if args.no_cuda_graph else None
    if args.resume:
        # the run's saved settings define it; only its length, and where it runs, may change
        given = _given(args, tuple(s for s in _TRAIN_SETTINGS if s not in _PLACEMENT))
        if given:
            raise MnistCnnError(f"--resume continues {args.resume} with its saved settings; only --epochs, --device, "
                                f"--threads and --no-cuda-graph may be given with it, got {given[0]}")
        moved = {"device": args.device, "threads": args.threads, "cuda_graph": cuda_graph}
        overrides = None
        if args.epochs is not None or any(v is not None for v in moved.values()):
            saved = read_json(Path(args.resume) / "config.json", {})  # train says so if it is not a run's
            overrides = make_config(epochs=saved.get("epochs") if args.epochs is None else args.epochs, **moved)
        run = train(overrides, resume=args.resume, log=log)
    else:
        config = make_config(
            model=args.model, recipe=args.recipe, data=args.data, epochs=args.epochs, batch_size=args.batch_size,
            optimizer=args.optimizer, lr=args.lr, seed=args.seed, validation_split=args.validation_split,
            val_size=args.val_size, limit_train=args.limit_train, limit_test=args.limit_test, out=args.out,
            augment=augment, schedule=args.schedule, lr_decay=args.lr_decay, label_smoothing=args.label_smoothing,
            **{name: getattr(args, name) for name in _PLATEAU},
            weight_decay=args.weight_decay, ema=args.ema, early_stopping=args.early_stopping, min_delta=args.min_delta,
            monitor=args.monitor, restore_best=args.restore_best or None, precision=args.precision,
            threads=args.threads, device=args.device, checkpoint_every=args.checkpoint_every,
            model_options=_model_options(args) or None,
            channels_last=False if args.no_channels_last else None, cuda_graph=cuda_graph)
        _refuse_unused(args, config)
        run = train(config, log=log)
    if args.json:
        _print_json({"run_dir": str(run.path), "model": run.name, "params": run.num_params,
                     "test_accuracy": run.metrics.get("accuracy"), "test_loss": run.metrics.get("loss"),
                     "history": run.history})


@command
def cmd_evaluate(args: argparse.Namespace) -> None:
    from .ensemble import load_model
    from .evaluate import evaluate, format_metrics
    from .runs import run_data

    run = load_model(args.run_dir)
    data = run_data(run, args.data)
    # by default the run's own test set, as train and report measured it; --data or --limit-test choose another
    limit = args.limit_test or (None if args.data else run.config.get("limit_test"))
    x, y = data.x_test[:limit], data.y_test[:limit]
    metrics = evaluate(run.model, x, y)
    if args.json:
        return _print_json({"run_dir": str(run.path), "model": run.name, **metrics})
    print(f"{run.name} ({run.num_params:,} params) on {len(y)} test images from {data.source}")
    print(format_metrics(metrics))


@command
def cmd_report(args: argparse.Namespace) -> None:
    from .data import load_mnist
    from .report import report

    print(report(args.run_dir, args.out, data=load_mnist(args.data, test_only=True) if args.data else None))


@command
def cmd_explain(args: argparse.Namespace) -> None:
    from .data import load_mnist
    from .explain import explain

    for path in explain(args.run_dir, index=args.index, image=args.image, out_dir=args.out,
                        data=load_mnist(args.data, test_only=True) if args.data else None):
        print(path)


@command
def cmd_ensemble(args: argparse.Namespace) -> None:
    from .data import load_mnist
    from .ensemble import check_ensemble_out, evaluate_ensemble, train_members, write_ensemble
    from .runs import load_run

    log = _log_to(sys.stderr if args.json else sys.stdout)
    check_ensemble_out(args.out)  # before any training or evaluation, which may take hours
    # these shape the members --train trains: without it they would be ignored silently
    given = [] if args.train else _given(args, ("recipe", "model", "epochs", "seed", "limit_train", "val_size"))
    if given:
        raise MnistCnnError(f"{given[0]} is for the members that --train N trains; finished runs keep their own")
    runs = [load_run(d) for d in args.run_dirs]
    sources = {run.config.get("data") for run in runs}
    if len(sources) > 1 and not args.data:  # members of one ensemble answer the same question
        names = sorted(str(source or "the bundled MNIST") for source in sources)
        raise MnistCnnError(f"the runs were trained on different data ({', '.join(names)}); "
                            f"ensemble runs of one data set, or name the test data with --data")
    data_path = args.data or next(iter(sources), None)
    try:
        data = load_mnist(data_path)
    except MnistCnnError as e:
        raise MnistCnnError(f"{e}{'' if args.data else '; the runs were trained on it: give --data where it is now'}"
                            ) from None
    if args.train:
        from .train import make_config

        recipe = args.recipe or (None if args.model else "best")
        config = make_config(model=args.model, recipe=recipe, data=data_path, epochs=args.epochs, seed=args.seed,
                             limit_train=args.limit_train, limit_test=args.limit_test, val_size=args.val_size,
                             precision=args.precision, threads=args.threads, device=args.device)
        runs += train_members(config, args.train, data=data, out=args.out, log=log)
    if not runs:
        raise MnistCnnError("give RUN_DIR arguments, --train N, or both")
    model, metrics = evaluate_ensemble(runs, tta=args.tta, data=data, limit_test=args.limit_test, log=log)
    out = write_ensemble(args.out, model, metrics, data=data_path, limit_test=args.limit_test)
    log(f"ensemble saved in {out}")
    if args.json:
        _print_json({"out": str(out), **{k: v for k, v in metrics.items() if k not in ("per_class", "confusion")}})


@command
def cmd_experiment(args: argparse.Namespace) -> None:
    from .experiments import load_grid, run_grid, summary_json

    log = _log_to(sys.stderr if args.json else sys.stdout)
    grid = load_grid(args.grid_file)
    overrides = {"epochs": args.epochs, "limit_train": args.limit_train, "limit_test": args.limit_test,
                 "data": args.data, "precision": args.precision, "threads": args.threads, "device": args.device}
    results = run_grid(grid, seeds=args.seeds, out=args.out, overrides=overrides, log=log, storage=args.storage)
    if args.json:
        return _print_json(summary_json(results))
    print(results["table"])
    print(f"results: {results['out']}/results.json" + (f", plot: {results['plot']}" if results.get("plot") else ""))


@command
def cmd_tune(args: argparse.Namespace) -> None:
    from .tune import tune

    log = _log_to(sys.stderr if args.json else sys.stdout)
    result = tune(args.search_file, storage=args.storage, trials=args.trials, timeout=args.timeout, seeds=args.seeds,
                  out=args.out, log=log)
    if args.json:
        return _print_json(result.to_dict())
    print(result.table)
    print(f"trials: {result.out}/trials.json" + (f", plot: {result.plot}" if result.plot else ""))


@command
def cmd_predict(args: argparse.Namespace) -> None:
    from .predict import format_predictions, predict_files

    results = predict_files(args.run_dir, args.images, show_preprocessed_dir=args.show_preprocessed, raw=args.raw,
                            skip_unreadable=True)
    if args.json:
        _print_json(results)
    elif any("error" not in r for r in results):
        print(format_predictions([r for r in results if "error" not in r]))
    failed = [r["error"] for r in results if "error" in r]
    if failed:  # the readable files were predicted; a user's bad file is still exit status 2
        for message in failed[:-1]:
            print(f"error: {message}", file=sys.stderr)
        raise MnistCnnError(failed[-1])


@command
def cmd_export(args: argparse.Namespace) -> None:
    from .ensemble import load_model
    from .export import check_parity, export_model, format_for
    from .runs import run_data

    run = load_model(args.run_dir)
    fmt = format_for(args.out, args.format)
    path = export_model(run, fmt, args.out)
    images = run_data(run, args.data).x_test[:1000]  # the run's own test set
    diff = check_parity(run, path, images, fmt)
    if args.json:
        return _print_json({"path": str(path), "format": fmt, "max_abs_diff_1000_test_images": diff})
    print(f"wrote {path}; max abs difference from PyTorch on {len(images):,} test images: {diff:.2e}")


@command
def cmd_serve(args: argparse.Namespace) -> None:
    try:
        from .serve import serve
    except ModuleNotFoundError as e:
        raise MnistCnnError(f"serve needs the 'serve' extra ({e.name} is not installed): "
                            "pip install 'mnist-cnn[serve]'") from None
    serve(args.run_dir, args.host, args.port)


_RUN_OR_ENSEMBLE = "a run directory, or an ensemble's (mnist-cnn ensemble ... --out DIR)"
_JSON = "print JSON instead of text"
_JSON_LAST = "print one JSON object as the last line"
_MODEL = "a named model (see `mnist-cnn models`) or a .toml/.json/.yaml spec file"
_RUN = "a run directory (mnist-cnn train --out DIR)"
_TRAIN_DATA = "a directory of IDX files or a .npz file (default: the bundled MNIST)"


def _add_data_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="the test set (IDX folder or .npz; default: the data the run was trained on)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mnist-cnn")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mnist-cnn", description="Train, evaluate, explain, export and serve "
                                     "CNNs on MNIST and other 28x28 grayscale image sets.")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    parser.add_argument("--version", action="version", version=f"mnist-cnn {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list the named architectures and their tutorial recipes")
    p.add_argument("--json", action="store_true", help=_JSON)

    p = sub.add_parser("summary", help="print a Keras-style summary of a named model or a spec file")
    p.add_argument("model", metavar="MODEL_OR_SPEC_FILE", help=_MODEL)
    _add_model_options(p)
    p.add_argument("--json", action="store_true", help=_JSON)

    p = sub.add_parser("train", help="train a model (defaults: keras-basic tutorial recipe on bundled MNIST)")
    p.add_argument("--model", help=_MODEL)
    p.add_argument("--recipe", help="a named recipe (model + optimiser + schedule + augmentation + epochs), or a "
                   "recipe file such as the best_recipe.json of `mnist-cnn tune`")
    _add_model_options(p)
    p.add_argument("--data", help=_TRAIN_DATA)
    p.add_argument("--epochs", type=int, help="epochs to train (default: the recipe's; keras-basic 5)")
    p.add_argument("--batch-size", type=int, help="images per step (default: the recipe's; keras-basic 64)")
    p.add_argument("--optimizer", choices=["rmsprop", "adam", "sgd"], help="with Keras's defaults (default: the "
                   "recipe's; keras-basic rmsprop)")
    p.add_argument("--lr", type=float, help="learning rate (default: Keras's default for the optimizer)")
    p.add_argument("--seed", type=int, help="seed of the weights, the shuffling, the augmentation and dropout "
                   "(default 0)")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--validation-split", type=float, help="the last fraction of the training data validates")
    val.add_argument("--val-size", type=int, help="the last N training images validate (e.g. 5000)")
    p.add_argument("--limit-train", type=int, help="use only the first N training images")
    p.add_argument("--limit-test", type=int, help="evaluate on the first N test images")
    p.add_argument("--out", "--save-model", dest="out", help="run directory (default: runs/MODEL-TIMESTAMP)")
    p.add_argument("--rotation", type=float, help="augment: random rotation range in degrees")
    p.add_argument("--shift", type=float, help="augment: random width/height shift, a fraction of the size")
    p.add_argument("--shear", type=float, help="augment: random shear angle range in degrees")
    p.add_argument("--zoom", type=float, help="augment: random zoom range z (factor in [1-z, 1+z])")
    p.add_argument("--schedule", choices=["constant", "exponential", "cosine", "onecycle", "plateau"],
                   help="plateau: Keras's ReduceLROnPlateau on --monitor, needs a validation set")
    p.add_argument("--lr-decay", type=float, help="exponential schedule: the factor per epoch (default 0.95)")
    p.add_argument("--lr-factor", type=float, metavar="FACTOR", help="plateau schedule: lr *= FACTOR on a plateau "
                   "(default 0.1)")
    p.add_argument("--lr-patience", type=int, metavar="EPOCHS", help="plateau schedule: epochs without improvement "
                   "before the lr drops (default 10)")
    p.add_argument("--lr-min-delta", type=float, help="plateau schedule: a smaller change of --monitor is no "
                   "improvement (default 1e-4)")
    p.add_argument("--lr-cooldown", type=int, metavar="N", help="plateau schedule: Keras's cooldown, the N - 1 "
                   "epochs after a drop are not counted (default 0)")
    p.add_argument("--min-lr", type=float, help="plateau schedule: the lr's floor (default 0)")
    p.add_argument("--label-smoothing", type=float, help="the cross-entropy's label smoothing, as Keras's "
                   "label_smoothing (default 0)")
    p.add_argument("--weight-decay", type=float, help="decoupled weight decay, w -= lr * wd * w each step, as Keras "
                   "3's optimizers' weight_decay (default 0)")
    p.add_argument("--ema", type=float, help="evaluate an exponential moving average of the weights (e.g. 0.999)")
    p.add_argument("--early-stopping", type=int, metavar="PATIENCE", help="stop after PATIENCE epochs without "
                   "improvement of --monitor (Keras's EarlyStopping); needs a validation set")
    p.add_argument("--monitor", choices=["val_loss", "val_accuracy"], help="what --early-stopping, --restore-best "
                   "and the plateau schedule watch (default val_loss)")
    p.add_argument("--min-delta", type=float, help="a smaller change of --monitor is no improvement (Keras's "
                   "EarlyStopping min_delta; default 0)")
    p.add_argument("--restore-best", action="store_true", help="end with the best weights on --monitor")
    _add_compute_options(p)
    p.add_argument("--no-channels-last", action="store_true", help="keep PyTorch's default NCHW layout")
    p.add_argument("--no-cuda-graph", action="store_true", help="on CUDA, launch each step's kernels one by one "
                   "instead of replaying them as one CUDA graph")
    p.add_argument("--checkpoint-every", type=int, metavar="STEPS", help="also checkpoint every N steps")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last good checkpoint, "
                   "with its saved settings (--epochs, --device, --threads and --no-cuda-graph may change)")
    p.add_argument("--json", action="store_true", help=_JSON_LAST)

    p = sub.add_parser("evaluate", help="evaluate a run or ensemble on the test set: accuracy, per-class metrics, "
                       "confusion")
    p.add_argument("run_dir", metavar="RUN_DIR", help=_RUN_OR_ENSEMBLE)
    _add_data_option(p)
    p.add_argument("--limit-test", type=int, help="the first N test images (default: as many as the run was tested on)")
    p.add_argument("--json", action="store_true", help=_JSON)

    p = sub.add_parser("report", help="write one self-contained HTML page about a run: summary, metrics, pictures")
    p.add_argument("run_dir", metavar="RUN_DIR", help=_RUN)
    p.add_argument("--out", metavar="FILE", help="the HTML file to write (default: RUN_DIR/report.html)")
    _add_data_option(p)

    p = sub.add_parser("explain", help="pictures of one digit inside a run's model: feature maps, saliency")
    p.add_argument("run_dir", metavar="RUN_DIR", help=_RUN)
    digit = p.add_mutually_exclusive_group(required=True)
    digit.add_argument("--index", type=int, metavar="N", help="the N-th image of the test set")
    digit.add_argument("--image", metavar="FILE", help="your own image (PNG, JPEG, ...), made MNIST-like first")
    p.add_argument("--out", metavar="DIR", help="where the PNGs go (default: RUN_DIR/explain)")
    _add_data_option(p)
    p = sub.add_parser("ensemble", help="average the softmax of several runs (or train N members), "
                       "evaluate members and ensemble, save the ensemble as one file")
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="trained runs to combine")
    p.add_argument("--out", required=True, help="ensemble directory: ensemble.safetensors + metrics.json")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: also average 1-pixel shifts")
    p.add_argument("--train", type=int, metavar="N", help="first train N members with seeds SEED..SEED+N-1")
    p.add_argument("--recipe", help="recipe of the trained members (default with --train: best)")
    p.add_argument("--model", help="model of the trained members")
    p.add_argument("--epochs", type=int, help="epochs of the trained members (default: the recipe's)")
    p.add_argument("--seed", type=int, help="seed of the first trained member (default 0)")
    p.add_argument("--data", help=_TRAIN_DATA)
    p.add_argument("--limit-train", type=int, help="train the members on the first N training images")
    p.add_argument("--val-size", type=int, help="the last N training images validate the trained members")
    p.add_argument("--limit-test", type=int, help="evaluate members and ensemble on the first N test images")
    _add_compute_options(p)
    p.add_argument("--json", action="store_true", help=_JSON_LAST)

    p = sub.add_parser("experiment", help="train a grid of variants over several seeds; mean and std per cell")
    p.add_argument("grid_file", metavar="GRID_FILE", help="a .toml/.json grid: [base] options + [axes] lists")
    p.add_argument("--seeds", type=int, help="seeds per cell (default: the grid's, else 3)")
    p.add_argument("--out", help="directory for runs/, results.json and results.png (default experiments/NAME)")
    p.add_argument("--epochs", type=int, help="override every run's epochs")
    p.add_argument("--limit-train", type=int, help="train every run on the first N training images")
    p.add_argument("--limit-test", type=int, help="evaluate every run on the first N test images")
    p.add_argument("--data", help=_TRAIN_DATA)
    _add_compute_options(p)
    p.add_argument("--storage", metavar="URL", help="an Optuna storage (sqlite:///FILE, postgresql://...) shared by "
                   "workers running the same command, each taking cells nobody has taken (default: in memory)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")

    p = sub.add_parser("tune", help="search training and model options with Optuna on the validation split; the "
                       "best trial comes out as a recipe file")
    p.add_argument("search_file", metavar="SEARCH_FILE", help="a .toml/.json/.yaml search: [base] options + [search] "
                   "ranges {low, high, log} and {choices} (docs/tune.md)")
    p.add_argument("--storage", metavar="URL", help="the study's storage (default sqlite:///OUT/study.db); "
                   "postgresql://USER:PASSWORD@HOST/DB lets workers on many machines run one study: start the same "
                   "command on each")
    p.add_argument("--trials", type=int, help="the study's trial budget, all workers together (default: the file's)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="stop starting trials here after this long")
    p.add_argument("--seeds", type=int, help="seeds per trial; its score is their mean (default: the file's, else 1)")
    p.add_argument("--out", metavar="DIR", help="the study folder: trials/, study.db, best_recipe.json, trials.json, "
                   "trials.png (default studies/NAME)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")

    p = sub.add_parser("predict", help="predict the digit in your own image files (PNG, JPEG, GIF, BMP, ...)")
    p.add_argument("run_dir", metavar="RUN_DIR", help=_RUN_OR_ENSEMBLE)
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files, or folders of them")
    p.add_argument("--show-preprocessed", metavar="DIR", help="write the 28x28 images the model was fed here")
    p.add_argument("--raw", action="store_true", help="feed 28x28 images as they are, without the MNIST preparation "
                   "(inverting, cropping, centring): for sets that are not white digits on black")
    p.add_argument("--json", action="store_true", help=_JSON)

    p = sub.add_parser("export", help="export a run's model: onnx, torchscript or safetensors")
    p.add_argument("run_dir", metavar="RUN_DIR", help=_RUN_OR_ENSEMBLE)
    p.add_argument("--format", choices=["onnx", "torchscript", "safetensors"], help="default: from --out's suffix")
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write: .onnx, .pt (TorchScript) or "
                   ".safetensors")
    _add_data_option(p)
    p.add_argument("--json", action="store_true", help=_JSON)

    p = sub.add_parser("serve", help="HTTP inference service with a drawing page at /")
    p.add_argument("run_dir", metavar="RUN_DIR", help=_RUN_OR_ENSEMBLE)
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this machine "
                   "only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="the port to listen on (default 8000)")
    return parser


def _add_compute_options(p: argparse.ArgumentParser) -> None:
    """Where and how training runs: shared by train, ensemble and experiment."""
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="auto (default): bfloat16 autocast where the hardware supports it")
    p.add_argument("--threads", type=int, help="CPU threads (default: every core, shared among torchrun's local "
                   "processes)")
    p.add_argument("--device", help="auto, cpu or cuda")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kernel-size", type=int, help="model option (keras-dropout): convolution kernel size")
    p.add_argument("--filters", type=int, help="model option (deotte): the first block's filters (default 32)")
    p.add_argument("--no-dropout", action="store_true", help="model option (keras-dropout, deotte): leave out "
                   "dropout")


# how `mnist-cnn models` names each model option: the flag that sets it
_OPTION_FLAGS = {"kernel_size": "--kernel-size N", "filters": "--filters N", "dropout": "--no-dropout"}


# Counts that every command taking them needs positive: 0 would otherwise mean "not given" or an empty slice,
# and a negative --limit-test would slice from the end.
_COUNTS = ("epochs", "limit_train", "limit_test", "threads", "train", "seeds", "trials")


def _check_counts(args: argparse.Namespace) -> None:
    for name in _COUNTS:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise MnistCnnError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    cores = os.cpu_count() or 1
    if (getattr(args, "threads", None) or 0) > cores:  # more threads than cores only slows every op down
        raise MnistCnnError(f"--threads must be at most {cores}, the number of cores here, got {args.threads}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        _check_counts(args)
        COMMANDS[args.command](args)
    except MnistCnnError as e:
        if args.debug:
            raise
        print("error: " + " ".join(str(e).splitlines()), file=sys.stderr)  # one line, even for a path with a newline
        return 128 + e.signum if isinstance(e, TrainingInterrupted) else 2  # the shell's 130 (Ctrl-C) or 143 (SIGTERM)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output has gone (`| head`): no traceback, as `cat` would
        _silence(sys.stdout)
        return 141
    return 0


if __name__ == "__main__":
    sys.exit(main())
