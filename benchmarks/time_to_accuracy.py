"""Time to accuracy: the training seconds each recipe needs to reach 99.0, 99.3, 99.5, 99.6 and 99.7% on the
MNIST test set, over seeds, beside Keras on TensorFlow running the tutorials' recipes in the same run.

    python benchmarks/time_to_accuracy.py                                  # fast and keras-basic, 5 seeds, + Keras/TF
    python benchmarks/time_to_accuracy.py --recipes fast minute keras-basic --ensemble minute --command-recipes fast
    python benchmarks/time_to_accuracy.py --recipes fast keras-bn --seeds 3 --no-keras

Ours: each epoch's test accuracy is measured from the checkpoint written at its end, outside the timed
training (history.json's `seconds` are the epochs' training time; the test images never steer training or any
choice: this is a stopwatch, not a selection). Keras: `benchmarks/peers/keras_mnist.py --test-each-epoch`
(its epoch times exclude the test pass too). "Command" is the whole `mnist-cnn train` process, imports and data
load included, measured separately with the same settings. A threshold a recipe never reaches shows "-".
With --ensemble RECIPE, the seeds' final models of RECIPE also make ensembles of the first k (softmax averaged,
as `mnist-cnn ensemble` does), with and without shift TTA; an ensemble's seconds are its members' summed.
The plot (accuracy against training seconds, log scale) goes to docs/images/time_to_accuracy.png.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import table, write_results  # noqa: E402

THRESHOLDS = (0.990, 0.993, 0.995, 0.996, 0.997)
PLOT = Path(__file__).parents[1] / "docs" / "images" / "time_to_accuracy.png"
KERAS_PYTHON = Path(__file__).parent / "peers" / ".venvs" / "keras-tf" / "bin" / "python"


def epoch_curve(recipe: str, seed: int, folder: Path) -> list[tuple[float, float]]:
    """[(training seconds so far, test accuracy)] at each epoch's end of one run of `recipe`."""
    import torch

    from mnist_cnn.data import load_mnist
    from mnist_cnn.evaluation import evaluate
    from mnist_cnn.models import build_model
    from mnist_cnn.runs import latest_checkpoint
    from mnist_cnn.spec import parse_spec
    from mnist_cnn.training import train

    test = load_mnist(test_only=True)
    out, curve, elapsed = folder / f"{recipe}-{seed}", [], 0.0

    def on_epoch(row: dict) -> None:
        nonlocal elapsed
        elapsed += row["seconds"]
        tensors, meta = latest_checkpoint(out)
        prefix = "ema." if any(k.startswith("ema.") for k in tensors) else "model."
        model = build_model(parse_spec(meta["spec"], "checkpoint"))
        model.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        with torch.random.fork_rng(devices=[]):
            curve.append((elapsed, evaluate(model.eval(), test.x_test, test.y_test)["accuracy"]))

    train(recipe=recipe, seed=seed, out=str(out), verbose=0, on_epoch=on_epoch)
    return curve


def command_seconds(recipe: str, seed: int, folder: Path) -> float:
    """Wall time of the whole `mnist-cnn train` command (start-up, data load, training, test) for the recipe."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mnist_cnn", "train", "--recipe", recipe, "--seed", str(seed),
                    "--out", str(folder / f"cmd-{recipe}-{seed}")], check=True, capture_output=True)
    return time.perf_counter() - t0


def keras_curve(model: str, epochs: int, seed: int, folder: Path) -> list[tuple[float, float]]:
    out = folder / f"keras-{model}-{seed}.json"
    subprocess.run([str(KERAS_PYTHON), str(Path(__file__).parent / "peers" / "keras_mnist.py"), "--model", model,
                    "--epochs", str(epochs), "--seed", str(seed), "--test-each-epoch", "--json-out", str(out)],
                   check=True, capture_output=True, env={**os.environ, "KERAS_BACKEND": "tensorflow"})
    result = json.loads(out.read_text())
    per_epoch = result["seconds_per_epoch"]
    seconds = [sum(per_epoch[: i + 1]) for i in range(len(per_epoch))]
    return list(zip(seconds, result["test_accuracy_per_epoch"], strict=True))


def ensemble_curves(recipe: str, curves: list[list[tuple[float, float]]], folder: Path) -> dict[str, list]:
    """The first k seeds' final models of `recipe` as one model, k = 1..seeds, without and with shift TTA:
    [(the members' summed training seconds, test accuracy)] for each; and each seed alone with TTA."""
    from mnist_cnn.data import load_mnist
    from mnist_cnn.ensemble import evaluate_ensemble
    from mnist_cnn.runs import load_run

    data, quiet = load_mnist(), lambda _: None
    runs = [load_run(folder / f"{recipe}-{seed}") for seed in range(len(curves))]
    seconds = [c[-1][0] for c in curves]
    result: dict[str, list] = {}
    for tta in (False, True):
        accuracy = [evaluate_ensemble(runs[:k], tta=tta, data=data, log=quiet)[1]["accuracy"]
                    for k in range(1, len(runs) + 1)]
        result[f"ensemble{' + TTA' if tta else ''}"] = [list(zip(itertools.accumulate(seconds), accuracy))]
    result["single + TTA"] = [[(t, evaluate_ensemble([run], tta=True, data=data, log=quiet)[1]["accuracy"])]
                              for t, run in zip(seconds, runs)]
    return result


def plot(raw: dict[str, dict], path: Path = PLOT) -> Path:
    """Test accuracy against training seconds (log scale), every seed's curve, the thresholds as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (name, entry) in enumerate(raw.items()):
        for j, curve in enumerate(entry["curves"]):
            seconds, accuracy = zip(*curve)
            ax.plot(seconds, [a * 100 for a in accuracy], marker="o", markersize=3, lw=1, alpha=0.7,
                    color=f"C{i}", label=name if j == 0 else None)
    for threshold in THRESHOLDS:
        ax.axhline(threshold * 100, color="grey", lw=0.5, ls=":")
    ax.set(xscale="log", xlabel="training seconds (log scale)", ylabel="test accuracy (%)", ylim=(98.5, 99.85),
           title="Time to accuracy on MNIST, 2-core CPU")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def first_reach(curve: list[tuple[float, float]], threshold: float) -> float | None:
    return next((seconds for seconds, accuracy in curve if accuracy >= threshold), None)


def summarise(name: str, curves: list[list[tuple[float, float]]], commands: list[float]) -> dict:
    """Per threshold: median seconds over the seeds that reach it, their range, and how many reached it."""
    row: dict = {"recipe": name, "seeds": len(curves),
                 "final acc (mean)": statistics.mean(c[-1][1] for c in curves) * 100}
    for threshold in THRESHOLDS:
        reached = [s for s in (first_reach(c, threshold) for c in curves) if s is not None]
        key = f"{threshold * 100:.1f}%"
        row[key] = (f"{statistics.median(reached):.1f} s ({min(reached):.1f}-{max(reached):.1f}) "
                    f"{len(reached)}/{len(curves)}" if reached else f"- 0/{len(curves)}")
    row["command s (median)"] = statistics.median(commands) if commands else None
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", default=["fast", "keras-basic"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--keras", nargs="*", default=["keras-basic"], help="tutorial models for Keras/TF")
    parser.add_argument("--keras-epochs", type=int, default=5)
    parser.add_argument("--no-keras", action="store_true")
    parser.add_argument("--command-recipes", nargs="*", default=None, metavar="RECIPE",
                        help="recipes whose whole command is timed too (default: all)")
    parser.add_argument("--ensemble", nargs="*", default=[], metavar="RECIPE",
                        help="recipes whose seeds also make ensembles of the first k, with and without TTA")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="tta-"))
    rows, raw = [], {}
    for recipe in args.recipes:
        curves = [epoch_curve(recipe, seed, folder) for seed in range(args.seeds)]
        timed = args.command_recipes is None or recipe in args.command_recipes
        commands = [command_seconds(recipe, seed, folder) for seed in range(args.seeds)] if timed else []
        raw[recipe] = {"curves": curves, "command_seconds": commands}
        rows.append(summarise(f"mnist-cnn --recipe {recipe}", curves, commands))
        print(table([rows[-1]], list(rows[-1])), flush=True)
        if recipe in args.ensemble:
            for kind, extra in ensemble_curves(recipe, curves, folder).items():
                raw[f"{recipe} {kind}"] = {"curves": extra}
                rows.append(summarise(f"mnist-cnn --recipe {recipe}, {kind}", extra, []))
                print(table([rows[-1]], list(rows[-1])), flush=True)
    if not args.no_keras and KERAS_PYTHON.exists():
        for model in args.keras:
            curves = [keras_curve(model, args.keras_epochs, seed, folder) for seed in range(args.seeds)]
            raw[f"keras-tf {model}"] = {"curves": curves}
            rows.append(summarise(f"Keras/TF {model} ({args.keras_epochs} epochs)", curves, []))
            print(table([rows[-1]], list(rows[-1])), flush=True)
    print(table(rows, list(rows[0])))
    print("wrote", write_results("time_to_accuracy", {"argv": sys.argv[1:], "thresholds": THRESHOLDS, "rows": rows,
                                                      "raw": raw}), plot(raw))


if __name__ == "__main__":
    main()
