"""The command line: a thin layer over the Python API. Every command is also a function you can import.

A user's mistake prints one line, `error: ...`, and exits with status 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

from . import __version__
from .errors import MnistCnnError, TrainingInterrupted
from .flags import PLACEMENT_DESTS, TRAIN_DESTS, add_model_options, add_training_flags, config_options, flag_name
from .flags import model_options as _model_options
from .training.options import OptionError

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

    rows: list[dict[str, Any]] = [
        {"name": name, "params": count_params(get_spec(name))[0], "tutorial_accuracy": e.tutorial_accuracy,
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

    spec = _summary_spec(args.model, _model_options(args))
    if args.json:
        total, trainable, fixed = count_params(spec)
        return _print_json({"name": spec.name, "layers": layer_table(spec), "total": total,
                            "trainable": trainable, "non_trainable": fixed})
    print(summary(spec))


def _summary_spec(model: str, options: dict[str, Any]) -> Any:
    """A named model or spec file (with its options), or the architecture of a run or a Keras file."""
    from pathlib import Path

    from .zoo import get_spec

    opened_as_run = Path(model).is_dir() or Path(model).suffix.lower() in (".safetensors", ".h5", ".hdf5", ".keras")
    if not opened_as_run:  # a name or a spec file; anything else gets get_spec's "unknown model"
        return get_spec(model, **options)
    from .sources import open_model

    opened = open_model(model).model
    if options or not hasattr(opened, "spec"):
        raise MnistCnnError(f"{model}: summary shows one model's architecture as it was trained (no model options; "
                            "an ensemble's members each have theirs)")
    return opened.spec


_PLATEAU = ("lr_factor", "lr_patience", "lr_min_delta", "lr_cooldown", "min_lr")
_TRAIN_SETTINGS = tuple(dest for dest in TRAIN_DESTS if dest != "epochs")


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
    from .training import make_config, train

    log = _log_to(sys.stderr if args.json else sys.stdout)
    options = config_options(args)
    if args.resume:
        # the run's saved settings define it; only its length, and where it runs, may change
        given = _given(args, tuple(s for s in _TRAIN_SETTINGS if s not in PLACEMENT_DESTS))
        if given:
            raise MnistCnnError(f"--resume continues {args.resume} with its saved settings; only --epochs, --device, "
                                f"--threads and --no-cuda-graph may be given with it, got {given[0]}")
        run = train(resume=args.resume, log=log, **{k: v for k, v in options.items() if v is not None})
    else:
        config = make_config(**options)
        _refuse_unused(args, config)
        run = train(config, log=log)
    if args.json:
        _print_json({"run_dir": str(run.path), "model": run.name, "params": run.num_params,
                     "test_accuracy": run.metrics.get("accuracy"), "test_loss": run.metrics.get("loss"),
                     "history": run.history})


@command
def cmd_evaluate(args: argparse.Namespace) -> None:
    from .evaluation import evaluate, format_metrics
    from .runs import run_data
    from .sources import open_model

    run = open_model(args.run_dir)
    data = run_data(run, args.data)
    # by default the run's own test set, as train and report measured it; --data or --limit-test choose another
    limit = args.limit_test or (None if args.data else run.config.get("limit_test"))
    x, y = data.x_test[:limit], data.y_test[:limit]
    metrics = evaluate(run.model, x, y, classes=run.classes)
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
    from .ensemble import (
        check_ensemble_out,
        evaluate_ensemble,
        member_config,
        members_data,
        train_members,
        write_ensemble,
    )
    from .runs import load_run

    log = _log_to(sys.stderr if args.json else sys.stdout)
    check_ensemble_out(args.out)  # before any training or evaluation, which may take hours
    # these shape the members --train trains: without it they would be ignored silently
    given = [] if args.train else _given(args, ("recipe", "model", "epochs", "seed", "limit_train", "val_size"))
    if given:
        raise MnistCnnError(f"{given[0]} is for the members that --train N trains; finished runs keep their own")
    runs = [load_run(d) for d in args.run_dirs]
    data_path, data = members_data(runs, args.data)
    if args.train:
        config = member_config(**{**config_options(args, "ensemble"), "data": data_path})
        runs += train_members(config, args.train, data=data, out=args.out, log=log)
    if not runs:
        raise MnistCnnError("give RUN_DIR arguments, --train N, or both")
    model, metrics = evaluate_ensemble(runs, tta=args.tta, data=data, limit_test=args.limit_test, log=log)
    out = write_ensemble(args.out, model, metrics, data=data_path, limit_test=args.limit_test, classes=data.classes)
    log(f"ensemble saved in {out}")
    if args.json:
        _print_json({"out": str(out), **{k: v for k, v in metrics.items() if k not in ("per_class", "confusion")}})


@command
def cmd_experiment(args: argparse.Namespace) -> None:
    from .experiments import load_grid, run_grid, summary_json

    log = _log_to(sys.stderr if args.json else sys.stdout)
    grid = load_grid(args.grid_file)
    results = run_grid(grid, seeds=args.seeds, out=args.out, overrides=config_options(args, "experiment"), log=log,
                       storage=args.storage)
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
    from .export import export_checked, format_for

    path, diff, count = export_checked(args.run_dir, args.out, args.format, data=args.data)  # the run's own test set
    if args.json:
        return _print_json({"path": str(path), "format": format_for(path, args.format),
                            "max_abs_diff_1000_test_images": diff})
    print(f"wrote {path}; max abs difference from PyTorch on {count:,} test images: {diff:.2e}")


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


def _add_data_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="the test set (IDX folder or .npz; default: the data the run was trained on)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mnist-cnn", description="Train, evaluate, explain, export and serve "
                                     "CNNs on MNIST and other 28x28 grayscale image sets.")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    parser.add_argument("--version", action="version", version=f"mnist-cnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list the named architectures and their tutorial recipes")
    p.add_argument("--json", action="store_true", help=_JSON)

    p = sub.add_parser("summary", help="print a Keras-style summary of a named model, a spec file, a run or a Keras "
                                       "file")
    p.add_argument("model", metavar="MODEL", help=_MODEL + ", a run directory or a Keras .h5/.keras file")
    add_model_options(p)
    p.add_argument("--json", action="store_true", help=_JSON)

    p = sub.add_parser("train", help="train a model (defaults: keras-basic tutorial recipe on bundled MNIST)")
    add_training_flags(p)
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
    add_training_flags(p, "ensemble")
    p.add_argument("--json", action="store_true", help=_JSON_LAST)

    p = sub.add_parser("experiment", help="train a grid of variants over several seeds; mean and std per cell")
    p.add_argument("grid_file", metavar="GRID_FILE", help="a .toml/.json grid: [base] options + [axes] lists")
    p.add_argument("--seeds", type=int, help="seeds per cell (default: the grid's, else 3)")
    p.add_argument("--out", help="directory for runs/, results.json and results.png (default experiments/NAME)")
    add_training_flags(p, "experiment")
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

    p = sub.add_parser("export", help="export a run's model: onnx, torchscript, safetensors or keras")
    p.add_argument("run_dir", metavar="RUN_DIR", help=_RUN_OR_ENSEMBLE)
    p.add_argument("--format", choices=["onnx", "torchscript", "safetensors", "keras"],
                   help="default: from --out's suffix")
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write: .onnx, .pt (TorchScript), "
                   ".safetensors or .keras (Keras 3)")
    _add_data_option(p)
    p.add_argument("--json", action="store_true", help=_JSON)

    p = sub.add_parser("serve", help="HTTP inference service with a drawing page at /")
    p.add_argument("run_dir", metavar="RUN_DIR", help=_RUN_OR_ENSEMBLE)
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this machine "
                   "only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="the port to listen on (default 8000)")
    return parser


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
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 prints as \x escapes, not a traceback
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    try:
        _check_counts(args)
        COMMANDS[args.command](args)
    except MnistCnnError as e:
        if args.debug:
            raise
        message = e.as_flags(flag_name) if isinstance(e, OptionError) else str(e)  # options named as flags
        print("error: " + " ".join(message.splitlines()), file=sys.stderr)  # one line, even for a path with a newline
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
